from __future__ import annotations

import pytest

from core.errors import InvalidInputError
from core.models import load_embedder
from core.settings import SAMPLE_DIR, Settings
from retrieval import index_store
from retrieval.embedding import encode
from retrieval.indexer import update_index
from retrieval.search import Retriever, doc_ranking


@pytest.fixture
def sample_retriever(settings: Settings) -> Retriever:
    update_index(settings, [SAMPLE_DIR / "kb"])
    version = index_store.open_version(settings.paths.index_dir)
    return Retriever(version, load_embedder(settings), settings.retrieval)


def test_dense_search_is_exact_inner_product(sample_retriever: Retriever) -> None:
    version = sample_retriever.version
    chunks_only = Retriever(version, sample_retriever.embedder,
                            sample_retriever.config.model_copy(update={"doc_vector_weight": 0.0}))
    query = "How do I rotate an API key?"
    results = chunks_only.search(query, k=5, mode="dense")
    q = encode(sample_retriever.embedder, [query])[0]
    vectors, ids = version.vectors()
    scores = vectors @ q
    row = {int(i): n for n, i in enumerate(ids)}
    # The top-5 scores are the true top-5, and each result's score is its own inner product
    # (compared by score, not id, because a random tiny embedder produces near-ties).
    assert [r.score for r in results] == pytest.approx(sorted(scores, reverse=True)[:5], abs=1e-5)
    assert [r.score for r in results] == pytest.approx([float(scores[row[r.chunk_id]]) for r in results], abs=1e-5)


def test_dense_scores_blend_each_chunk_with_its_documents_own_vector(sample_retriever: Retriever) -> None:
    version = sample_retriever.version
    assert version.doc_vectors is not None and len(version.doc_vectors) == len(version.manifest.documents)
    assert sample_retriever.config.doc_vector_weight == "auto"
    assert sample_retriever.doc_vector_weight == 0, "an embedder no recipe tuned ranks by chunks alone"
    weight = 0.7
    sample_retriever = Retriever(version, sample_retriever.embedder,
                                 sample_retriever.config.model_copy(update={"doc_vector_weight": weight}))
    query = "How do I rotate an API key?"
    q = encode(sample_retriever.embedder, [query])[0]
    vectors, ids = version.vectors()
    doc_scores = version.doc_vectors @ q
    blended = {int(cid): (1 - weight) * float(v @ q) + weight * float(doc_scores[version.chunk_doc_row[int(cid)]])
               for v, cid in zip(vectors, ids, strict=True)}
    exhaustive = Retriever(version, sample_retriever.embedder, sample_retriever.config.model_copy(
        update={"doc_vector_candidates": len(ids)}))
    results = exhaustive.search(query, k=5, mode="dense")
    assert [r.score for r in results] == pytest.approx(sorted(blended.values(), reverse=True)[:5], abs=1e-5)
    for r in sample_retriever.search(query, k=5, mode="dense"):  # default fetch depth: same formula
        assert r.score == pytest.approx(blended[r.chunk_id], abs=1e-5)
    ranked = sample_retriever.search(query, k=8, mode="dense")
    assert all(a.score >= b.score for a, b in zip(ranked, ranked[1:], strict=False))


def test_auto_weight_is_the_one_stored_with_the_embedder(settings: Settings, tiny_embedder_dir, tmp_path) -> None:
    import shutil

    from core.models import write_embedder_retrieval_hints

    tuned = tmp_path / "tuned-embedder"
    shutil.copytree(tiny_embedder_dir, tuned)
    write_embedder_retrieval_hints(tuned, 0.7, {"chosen_on": "test"})
    update_index(settings, [SAMPLE_DIR / "kb"], embedder_location=str(tuned))
    version = index_store.open_version(settings.paths.index_dir)
    assert version.manifest.doc_vector_weight == 0.7
    embedder = load_embedder(settings, str(tuned))
    auto = Retriever(version, embedder, settings.retrieval)
    fixed = Retriever(version, embedder, settings.retrieval.model_copy(update={"doc_vector_weight": 0.7}))
    chunks_only = Retriever(version, embedder, settings.retrieval.model_copy(update={"doc_vector_weight": 0.0}))
    assert (auto.doc_vector_weight, chunks_only.doc_vector_weight) == (0.7, 0.0), "a number in the settings wins"
    query = "How do I rotate an API key?"
    assert [r.score for r in auto.search(query, k=5)] == pytest.approx([r.score for r in fixed.search(query, k=5)])
    assert [r.score for r in auto.search(query, k=5)] != pytest.approx(
        [r.score for r in chunks_only.search(query, k=5)])


def test_bm25_finds_the_article_by_its_words(sample_retriever: Retriever) -> None:
    results = sample_retriever.search("Parcelly-Signature HMAC webhook", k=3, mode="bm25")
    assert results[0].doc_id == "api-webhooks"
    assert results[0].heading_path == ("Webhooks", "Signatures")
    assert all(a.score >= b.score for a, b in zip(results, results[1:], strict=False))
    assert sample_retriever.search("zzzqx unknownword", k=3, mode="bm25") == []


def test_hybrid_is_reciprocal_rank_fusion_of_both_lists(sample_retriever: Retriever) -> None:
    query, k, rrf = "void window for DHL labels", 5, sample_retriever.config.rrf_k
    dense = sample_retriever.search(query, k=20, mode="dense")
    sparse = sample_retriever.search(query, k=20, mode="bm25")
    expected: dict[int, float] = {}
    for ranked in (dense, sparse):
        for rank, r in enumerate(ranked, 1):
            expected[r.chunk_id] = expected.get(r.chunk_id, 0) + 1 / (rrf + rank)
    hybrid = sample_retriever.search(query, k=k, mode="hybrid")
    assert [r.chunk_id for r in hybrid] == sorted(expected, key=expected.get, reverse=True)[:k]


@pytest.mark.parametrize("mode", ["dense", "bm25", "hybrid"])
def test_metadata_filters_restrict_every_mode(sample_retriever: Retriever, mode: str) -> None:
    results = sample_retriever.search("refund for a label", k=5, mode=mode, filters={"category": "billing"})
    assert results and {r.doc_id.split("-")[0] for r in results} == {"billing"}
    only = sample_retriever.search("refund", k=5, mode=mode, filters={"doc_id": ["ts-void-label"]})
    assert {r.doc_id for r in only} == {"ts-void-label"}
    assert sample_retriever.search("refund", k=5, mode=mode, filters={"category": "nope"}) == []


def test_results_carry_citation_fields_and_doc_ranking_dedupes(sample_retriever: Retriever) -> None:
    results = sample_retriever.search("Which carriers are built in?", k=6)
    assert all(r.title and r.text and r.source.endswith((".md", ".html")) for r in results)
    ranking = doc_ranking(results)
    assert len(ranking) == len(set(ranking)) and ranking[0] == results[0].doc_id
    passage = results[0].to_passage()
    assert passage.doc_id == results[0].doc_id and passage.text == results[0].text


def test_bad_search_arguments_are_clear_errors(sample_retriever: Retriever) -> None:
    with pytest.raises(InvalidInputError, match="k must be >= 1"):
        sample_retriever.search("x", k=0)
    with pytest.raises(InvalidInputError, match="query must not be empty"):
        sample_retriever.search("  ")
    with pytest.raises(InvalidInputError, match="mode must be one of"):
        sample_retriever.search("x", mode="fuzzy")  # type: ignore[arg-type]


def test_hnsw_index_agrees_with_exact_search_on_small_data(settings: Settings) -> None:
    hnsw = settings.model_copy(update={"retrieval": settings.retrieval.model_copy(update={"index_type": "hnsw"})})
    update_index(hnsw, [SAMPLE_DIR / "kb"])
    version = index_store.open_version(settings.paths.index_dir)
    assert version.manifest.index_type == "hnsw"
    chunks_only = hnsw.retrieval
    approx = Retriever(version, load_embedder(settings), chunks_only)
    vectors, ids = version.vectors()
    q = "How do I schedule a pickup?"
    scores = sorted(vectors @ encode(approx.embedder, [q])[0], reverse=True)[:5]
    assert [r.score for r in approx.search(q, k=5, mode="dense")] == pytest.approx(scores, abs=1e-5)
    # Blending reads chunk vectors back from the HNSW index as it does from the exact one.
    flat = settings.model_copy(update={"paths": settings.paths.model_copy(update={"data_dir": settings.paths.data_dir / "flat"})})
    update_index(flat, [SAMPLE_DIR / "kb"])
    blend = {"doc_vector_weight": 0.7}
    exact = Retriever(index_store.open_version(flat.paths.index_dir), load_embedder(settings),
                      settings.retrieval.model_copy(update=blend))
    blended = Retriever(version, load_embedder(settings), hnsw.retrieval.model_copy(update=blend))
    assert [r.score for r in blended.search(q, k=5, mode="dense")] == pytest.approx(
        [r.score for r in exact.search(q, k=5, mode="dense")], abs=1e-5)


def test_auto_index_type_switches_at_the_threshold(settings: Settings) -> None:
    small = settings.model_copy(update={"retrieval": settings.retrieval.model_copy(update={"ann_threshold": 10})})
    assert update_index(small, [SAMPLE_DIR / "kb"]).index_type == "hnsw"


def test_hybrid_weight_zero_is_dense_and_tuning_prefers_dense_on_ties(sample_retriever: Retriever) -> None:
    from retrieval.search import tune_bm25_weight

    questions = ["How do I void a label?", "What does the Growth plan cost?", "printer prints blank labels"]
    dense_only = Retriever(sample_retriever.version, sample_retriever.embedder,
                           sample_retriever.config.model_copy(update={"bm25_weight": 0.0}))
    assert ([doc_ranking(r) for r in dense_only.search_many(questions, k=5, mode="hybrid")]
            == [doc_ranking(r) for r in sample_retriever.search_many(questions, k=5, mode="dense")])
    gold = [doc_ranking(r)[:1] for r in sample_retriever.search_many(questions, k=1, mode="bm25")]
    weight, scores = tune_bm25_weight(sample_retriever, questions, gold)
    assert set(scores) == {0.0, 0.1, 0.25, 0.5, 1.0}
    assert scores[weight] == max(scores.values())
    assert weight == min(w for w, s in scores.items() if s == scores[weight])  # ties go to the smaller weight
    assert weight > 0  # the gold here is BM25's own top hit, which the random tiny embedder cannot find
