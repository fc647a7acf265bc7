"""Embedder fine-tuning: pair building, leak filtering, hard negatives, a tiny run and its artifact."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from core import artifacts
from core.errors import InvalidInputError
from core.models import load_embedder, resolve_embedder
from core.settings import SAMPLE_DIR, Settings, load_settings
from retrieval.documents import Chunk, chunk_id_for
from retrieval.index_store import open_version
from retrieval.indexer import update_index
from training import embedder_data
from training.embedder_data import (
    QueryPair,
    _clean_question,
    add_hard_negatives,
    filter_pairs,
    leaks_passage,
    pairs_from_chats,
    pairs_from_labelled,
    synthetic_pairs,
    to_dataset,
)
from training.embedder_recipe import corpus, corpus_chunks, train_embedder


def chunk(doc_id: str, text: str, position: int = 0) -> Chunk:
    return Chunk(chunk_id_for(doc_id, position, text), doc_id, position, text, doc_id.title(), (), "x.md")


def test_chat_pairs_use_user_turns_of_grounded_chats_only() -> None:
    pairs = pairs_from_chats(SAMPLE_DIR / "chat_train.jsonl")
    chats = [json.loads(line) for line in (SAMPLE_DIR / "chat_train.jsonl").read_text().splitlines()]
    grounded_turns = sum(sum(m["role"] == "user" for m in c["messages"]) for c in chats if len(c["doc_ids"]) == 1)
    assert len(pairs) == grounded_turns
    refusals = {c["messages"][1]["content"] for c in chats if not c["doc_ids"]}
    assert not refusals & {p.query for p in pairs}
    assert {p.source for p in pairs} == {"chat"}


def test_labelled_pairs_accept_pairs_and_faq_lines_and_name_bad_lines(tmp_path: Path) -> None:
    good = tmp_path / "labelled.jsonl"
    good.write_text('{"question": "How much is Growth?", "doc_id": "billing-plans"}\n'
                    '{"id": "faq-7", "question": "Do you ship on Sundays?", "answer": "No."}\n')
    assert pairs_from_labelled(good) == [QueryPair("How much is Growth?", "billing-plans", "labelled"),
                                         QueryPair("Do you ship on Sundays?", "faq-7", "labelled")]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "ok?", "doc_id": "a"}\n{"doc_id": "b"}\n')
    with pytest.raises(InvalidInputError, match=r"bad\.jsonl:2: .*'question' and 'doc_id'"):
        pairs_from_labelled(bad)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("Question: How do I void a label?", "How do I void a label?"),
     ('"Can I pay by card?" I hope this helps', "Can I pay by card?"),
     ("\n\nWhat are the API rate limits? And more", "What are the API rate limits?"),
     ('The answer to this question would be: "How does the API handle rate limits?"', "How does the API handle rate limits?"),
     ('A user might ask: "Can I print on A4?', "Can I print on A4?"),
     ("This is not a question.", None), ("Why?", None)],
)
def test_generated_questions_are_cleaned(raw: str, expected: str | None) -> None:
    assert _clean_question(raw) == expected


def test_leak_filter_drops_verbatim_synthetic_queries_and_duplicates_but_keeps_humans() -> None:
    passage = "Voiding is only possible before the carrier scans the parcel."
    chunks = {"ts-void-label": [chunk("ts-void-label", passage)]}
    assert leaks_passage("Is voiding only possible before the carrier scans the parcel?", passage)
    assert not leaks_passage("Can I still cancel a label after pickup?", passage)
    pairs = [
        QueryPair("Is voiding only possible before the carrier scans the parcel?", "ts-void-label", "chat"),
        QueryPair("is voiding only possible before the carrier scans the parcel", "ts-void-label", "synthetic"),
        QueryPair("Voiding is only possible before the carrier scans the parcel?", "ts-void-label", "synthetic"),
        QueryPair("Can I still cancel a label after the carrier scans it?", "ts-void-label", "synthetic"),
        QueryPair("Where is my invoice?", "no-such-doc", "labelled"),
        QueryPair("I'm ready to assist you. What's your business?", "ts-void-label", "synthetic"),
    ]
    kept, report = filter_pairs(pairs, chunks)
    assert [p.query for p in kept] == [pairs[0].query, pairs[3].query]
    assert (report.duplicates, report.leaks, report.off_topic, report.unknown_doc, report.kept) == (1, 1, 1, 1, 2)


def test_synthetic_queries_are_generated_once_and_cached(settings: Settings, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from core.models import load_generator

    model, tokenizer = load_generator(settings)
    chunks = [chunk("a", "Pickups booked before 11:00 are collected the same day."), chunk("b", "Invoices are PDF.")]
    cache = tmp_path / "synthetic.json"
    config = settings.generation.model_copy(update={"max_new_tokens": 8})
    first = synthetic_pairs(chunks, model, tokenizer, config, cache)
    assert cache.is_file() and len(json.loads(cache.read_text())) == 2
    assert all(p.source == "synthetic" for p in first)

    def no_generation(*args: object, **kwargs: object) -> None:
        raise AssertionError("cached queries must not be generated again")

    monkeypatch.setattr(embedder_data, "generate", no_generation)
    assert synthetic_pairs(chunks, model, tokenizer, config, cache) == first


def test_hard_negatives_never_come_from_the_gold_document() -> None:
    settings = load_settings()
    model = load_embedder(settings)
    chunks = corpus_chunks(settings, [SAMPLE_DIR / "kb"], model.tokenizer)
    by_doc: dict[str, list[Chunk]] = {}
    for c in chunks:
        by_doc.setdefault(c.doc_id, []).append(c)
    pairs, _ = filter_pairs(pairs_from_chats(SAMPLE_DIR / "chat_train.jsonl")[:60], by_doc)
    dataset = to_dataset(pairs, by_doc)
    mined = add_hard_negatives(dataset, model, chunks, num_negatives=2, margin=0.05)
    assert len(mined) >= 0.9 * len(set(zip(dataset["anchor"], dataset["positive"], strict=True)))
    doc_of = {c.embedding_text(): c.doc_id for c in chunks}
    gold = {(r["anchor"], r["positive"]): r["doc_id"] for r in dataset}
    for row in mined:
        assert row["negative_1"] != row["positive"] and row["negative_2"] != row["positive"]
        for neg in (row["negative_1"], row["negative_2"]):
            assert doc_of[neg] != gold[(row["anchor"], row["positive"])]


def test_tiny_training_run_writes_a_loadable_artifact_with_a_complete_manifest(settings: Settings) -> None:
    cfg = settings.train_embedder.model_copy(update={
        "synthetic_queries_per_chunk": 0, "max_steps": 4, "learning_rate": 1e-3, "eval_steps": 2,
        "per_device_train_batch_size": 16, "hard_negatives": 0, "eval_fraction": 0.15, "gain_check_fraction": 0,
    })
    probe = ["How do I void a label?", "What does the Growth plan cost?"]
    before_vectors = load_embedder(settings).encode(probe)
    artifact = train_embedder(settings, cfg)

    manifest = json.loads((artifact.path / "manifest.json").read_text())
    for key in ("id", "kind", "created_at", "base_model", "data_hash", "pairs", "hyperparameters",
                "metrics_before", "metrics_after", "wall_time_s", "global_steps"):
        assert key in manifest, key
    assert manifest["global_steps"] == 4 and manifest["pairs"]["train"] > manifest["pairs"]["heldout"] > 0
    assert manifest["metrics_after"]["heldout_ndcg@10"] >= 0 and len(manifest["data_hash"]) == 64
    assert not list((artifact.path.parent / ".runs").iterdir()), "the run dir is cleaned up"

    tuned = settings.model_copy(update={"models": settings.models.model_copy(update={"embedder": "artifact:latest"})})
    resolved = resolve_embedder(tuned)
    assert resolved.source == "artifact" and resolved.location == str(artifact.path / "model")
    after_vectors = load_embedder(tuned).encode(probe)
    assert not np.allclose(before_vectors, after_vectors), "training changed the model"
    assert np.allclose(load_embedder(settings).encode(probe), before_vectors), "the cached base model is untouched"
    report = update_index(tuned, [SAMPLE_DIR / "kb"], rebuild=True)
    assert report.mode == "rebuild" and artifacts.get_artifact(settings, "embedder", "latest").id == artifact.id


def test_default_run_trains_on_every_pair_with_inverse_cloze_and_cached_loss(settings: Settings) -> None:
    """No held-out split by default: every labelled pair trains, the last step is the model, and the
    manifest says there was nothing to select on."""
    cfg = settings.train_embedder.model_copy(update={
        "max_steps": 2, "per_device_train_batch_size": 16, "hard_negatives": 0, "corpus_queries_per_chunk": 1,
        "loss": "cached_mnrl", "mini_batch_size": 8, "gain_check_fraction": 0,
    })
    assert settings.train_embedder.eval_fraction == 0
    artifact = train_embedder(settings, cfg)
    m = artifact.manifest
    assert m["pairs"]["heldout"] == 0 and m["metrics_before"] is None and m["metrics_after"] is None
    assert m["best_checkpoint"] is None and m["global_steps"] == 2
    kept = m["pairs"]["kept_by_source"]
    assert kept["corpus"] > 50 and kept["chat"] > 50
    assert m["pairs"]["train"] == sum(kept.values())


@pytest.mark.slow
def test_a_domain_where_tuning_cannot_help_keeps_the_base_embedder_and_says_why(tmp_path: Path) -> None:
    """Every labelled query is its chunk's exact embedded text: the packaged embedder already ranks each one
    first (nDCG@10 = 1), no run can gain, so the artifact holds the untouched base model and the manifest says
    so. (A random-weight model maps every text to nearly one vector, so ties would make this a coin toss.)"""
    settings = load_settings(data_dir=tmp_path / "var", cache_dir=tmp_path / "cache")
    chunks = corpus_chunks(settings, [SAMPLE_DIR / "kb"], load_embedder(settings).tokenizer)
    labelled = tmp_path / "verbatim.jsonl"
    unique = [c for c in chunks if sum(o.embedding_text() == c.embedding_text() for o in chunks) == 1]
    labelled.write_text("".join(json.dumps({"question": c.embedding_text(), "doc_id": c.doc_id}) + "\n"
                                for c in unique))
    cfg = settings.train_embedder.model_copy(update={
        "sources": [SAMPLE_DIR / "kb"], "labelled_files": [labelled], "chat_files": [],
        "synthetic_queries_per_chunk": 0, "corpus_queries_per_chunk": 0, "hard_negatives": 0, "max_steps": 4,
        "learning_rate": 1e-4, "per_device_train_batch_size": 16,
    })
    artifact = train_embedder(settings, cfg)
    check = artifact.manifest["gain_check"]
    assert artifact.manifest["kept_base"] is True and check["decision"] == "keep_base"
    assert check["base"] == 1.0 and check["gain"] <= 0 and check["heldout"] >= cfg.gain_check_min_queries
    assert "keeping the base model" in check["reason"] and artifact.manifest["global_steps"] == 0
    weight = artifact.manifest["doc_vector_weight"]
    assert "gain check" in weight["chosen_on"] and set(weight["ndcg@10_by_weight"]) == {"base", "tuned"}
    assert weight["ndcg@10_by_weight"]["base"][str(weight["chosen"])] == 1.0, "keeping the base: its best weight"
    probe = ["How do I void a label?", "What does the Growth plan cost?"]
    tuned = settings.model_copy(update={"models": settings.models.model_copy(update={"embedder": "artifact:latest"})})
    assert np.allclose(load_embedder(tuned).encode(probe), load_embedder(settings).encode(probe), atol=1e-6)
    assert not list((artifact.path.parent / ".runs").iterdir()), "the pre-check leaves nothing behind"


def test_gain_check_is_skipped_with_too_few_queries_to_estimate_and_tunes(settings: Settings) -> None:
    cfg = settings.train_embedder.model_copy(update={
        "max_steps": 2, "per_device_train_batch_size": 16, "hard_negatives": 0, "gain_check_min_queries": 10_000,
    })
    m = train_embedder(settings, cfg).manifest
    assert m["gain_check"]["decision"] == "tune" and "fewer than gain_check_min_queries" in m["gain_check"]["reason"]
    assert m["kept_base"] is False and m["global_steps"] == 2
    # With no held-out share, the weight is chosen by the base embedder on the labelled queries it never saw,
    # stored beside the weights, and carried into the index the tuned model builds.
    weight = m["doc_vector_weight"]
    assert weight["chosen"] in cfg.doc_vector_weights and "base embedder" in weight["chosen_on"]
    assert set(weight["ndcg@10_by_weight"]["base"]) == {str(w) for w in cfg.doc_vector_weights}
    best = max(weight["ndcg@10_by_weight"]["base"].values())
    assert weight["ndcg@10_by_weight"]["base"][str(weight["chosen"])] == best
    tuned = settings.model_copy(update={"models": settings.models.model_copy(update={"embedder": "artifact:latest"})})
    update_index(tuned, [SAMPLE_DIR / "kb"], rebuild=True)
    assert open_version(tuned.paths.index_dir).manifest.doc_vector_weight == weight["chosen"]


def test_a_fixed_doc_vector_weight_is_not_searched(settings: Settings) -> None:
    fixed = settings.model_copy(update={"retrieval": settings.retrieval.model_copy(update={"doc_vector_weight": 0.3})})
    cfg = settings.train_embedder.model_copy(update={"max_steps": 1, "per_device_train_batch_size": 16,
                                                     "gain_check_fraction": 0})
    weight = train_embedder(fixed, cfg).manifest["doc_vector_weight"]
    assert weight == {"chosen": 0.3, "chosen_on": "setting"}


def test_inverse_cloze_pairs_take_a_sentence_out_of_its_chunk(settings: Settings) -> None:
    from training.embedder_data import corpus_pairs

    chunks = corpus_chunks(settings, [SAMPLE_DIR / "kb"], load_embedder(settings).tokenizer)
    pairs = corpus_pairs(chunks, per_chunk=2, seed=0)
    assert len(pairs) > len(corpus_pairs(chunks, per_chunk=1, seed=0)) > len(chunks) / 2
    assert pairs == corpus_pairs(chunks, per_chunk=2, seed=0)  # seeded
    by_doc = {c.doc_id for c in chunks}
    for p in pairs:
        assert p.source == "corpus" and p.doc_id in by_doc and len(re.findall(r"\w+", p.query)) >= 5
        assert p.positive and p.query not in p.positive  # the sentence is removed from its positive
    lone = Chunk(1, "lone", 0, "Only one sentence lives in this chunk.", "Lone", ("Lone",), "x.md")
    assert corpus_pairs([lone], per_chunk=2, seed=0) == []  # the positive would be empty


def test_training_refuses_empty_or_single_pair_data(settings: Settings, tmp_path: Path) -> None:
    one = tmp_path / "one.jsonl"
    one.write_text(json.dumps({"doc_ids": ["billing-plans"], "messages": [
        {"role": "system", "content": "s"}, {"role": "user", "content": "How much is Growth?"},
        {"role": "assistant", "content": "a"}]}) + "\n")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    for files in ([one], [empty]):
        cfg = settings.train_embedder.model_copy(update={"chat_files": files, "synthetic_queries_per_chunk": 0})
        with pytest.raises(InvalidInputError, match="needs at least 2 .* pairs"):
            train_embedder(settings, cfg)
    assert artifacts.list_artifacts(settings, "embedder") == []


def test_pairs_target_the_chunk_the_index_stores_not_always_the_first(settings: Settings, tmp_path: Path) -> None:
    """A long answer is split into several chunks; a question about its end is paired with that chunk, in
    exactly the text the index embeds for it."""
    folder = tmp_path / "kb"
    folder.mkdir()
    parts = [f"Section {n}: " + " ".join(f"{topic} detail {i}." for i in range(40))
             for n, topic in enumerate(["billing invoices", "parcel pickup", "webhook signatures"])]
    (folder / "long-answer.md").write_text("---\nid: long-answer\ntitle: Long answer\n---\n\n" + "\n\n".join(parts))
    (folder / "other.md").write_text("---\nid: other\ntitle: Other\n---\n\nNothing to see here.\n")
    tuned = settings.model_copy(update={"retrieval": settings.retrieval.model_copy(
        update={"sources": [folder], "chunk_size": 64, "chunk_overlap": 8})})
    update_index(tuned, [folder], rebuild=True)
    stored = [c for c in index_store_chunks(tuned) if c.doc_id == "long-answer"]
    assert len(stored) >= 3
    chunks = corpus_chunks(tuned, [folder], load_embedder(tuned).tokenizer)
    by_doc: dict[str, list[Chunk]] = {}
    for c in chunks:
        by_doc.setdefault(c.doc_id, []).append(c)
    rows = to_dataset([QueryPair("how are webhook signatures checked", "long-answer", "labelled")], by_doc)
    positive = rows[0]["positive"]
    assert positive in {c.embedding_text() for c in stored}, "the positive is a chunk the index holds"
    assert "webhook signatures" in positive and positive != stored[0].embedding_text()

    doc_texts = corpus(tuned, [folder], load_embedder(tuned).tokenizer)[0]
    assert "Section 2" in doc_texts["long-answer"]
    document = to_dataset([QueryPair("how are webhook signatures checked", "long-answer", "labelled")], by_doc,
                          doc_texts=doc_texts, positive="document")
    assert [r["positive"] for r in document] == [doc_texts["long-answer"]], "what the document vector embeds"
    both = to_dataset([QueryPair("how are webhook signatures checked", "long-answer", "labelled"),
                       QueryPair("anything to see", "other", "labelled")], by_doc, doc_texts=doc_texts, positive="both")
    assert [r["positive"] for r in both] == [positive, doc_texts["long-answer"], by_doc["other"][0].embedding_text()]
    with pytest.raises(ValueError, match="needs the documents' texts"):
        to_dataset([QueryPair("q", "other", "labelled")], by_doc, positive="document")


def index_store_chunks(settings: Settings) -> list[Chunk]:
    from retrieval import index_store

    return sorted(index_store.open_version(settings.paths.index_dir).chunks.values(), key=lambda c: c.position)
