from __future__ import annotations

import math

import numpy as np
import pytest

from core.models import load_embedder
from core.settings import Settings
from retrieval.metrics import query_metrics, retrieval_metrics


def test_hand_computed_values() -> None:
    m = query_metrics(["a", "x", "b", "y"], {"b", "c"})
    assert m["recall@1"] == 0 and m["recall@3"] == 0.5 and m["recall@10"] == 0.5
    assert m["mrr@10"] == pytest.approx(1 / 3)
    assert m["ndcg@10"] == pytest.approx((1 / math.log2(4)) / (1 + 1 / math.log2(3)))
    perfect = query_metrics(["b", "c"], {"b", "c"})
    assert perfect["ndcg@10"] == pytest.approx(1.0) and perfect["mrr@10"] == 1.0


def test_aggregate_skips_queries_without_gold_and_counts_the_rest() -> None:
    agg = retrieval_metrics([["a"], ["b"], ["z"]], [{"a"}, set(), {"q"}])
    assert agg["queries"] == 2 and agg["recall@1"] == 0.5 and agg["mrr@10"] == 0.5
    with pytest.raises(ValueError, match="rankings for"):
        retrieval_metrics([["a"]], [{"a"}, {"b"}])
    with pytest.raises(ValueError, match="no query has a relevant document"):
        retrieval_metrics([["a"]], [set()])


def test_matches_sentence_transformers_information_retrieval_evaluator(settings: Settings) -> None:
    from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator

    model = load_embedder(settings)
    corpus = {f"d{i}": text for i, text in enumerate([
        "Void a label before the carrier scans it.", "Plans: Free, Growth and Scale.",
        "Webhooks are signed with HMAC.", "Reset your password from the login page.",
        "Pickups booked before 11:00 are collected the same day.", "Invoices are in Settings > Billing.",
        "Rate limits: 60 requests per minute.", "Customs forms need HS codes.",
    ])}
    queries = {"q0": "cancel a label", "q1": "price of plans", "q2": "verify webhook", "q3": "forgot password",
               "q4": "carrier collection", "q5": "where are invoices"}
    relevant = {"q0": {"d0"}, "q1": {"d1", "d5"}, "q2": {"d2"}, "q3": {"d3"}, "q4": {"d4", "d0"}, "q5": {"d5"}}
    evaluator = InformationRetrievalEvaluator(queries, corpus, relevant, mrr_at_k=[10], ndcg_at_k=[10],
                                              accuracy_at_k=[1], precision_recall_at_k=[1, 3, 5], map_at_k=[10],
                                              name="t", show_progress_bar=False)
    theirs = evaluator(model)
    doc_ids = list(corpus)
    d = model.encode(list(corpus.values()), normalize_embeddings=True)
    q = model.encode(list(queries.values()), normalize_embeddings=True)
    rankings = [[doc_ids[i] for i in np.argsort(-(d @ row), kind="stable")] for row in q]
    ours = retrieval_metrics(rankings, [relevant[k] for k in queries], ks=(1, 3, 5))
    for name in ("recall@1", "recall@3", "recall@5", "mrr@10", "ndcg@10"):
        assert ours[name] == pytest.approx(theirs[f"t_cosine_{name}"], abs=1e-6), name
