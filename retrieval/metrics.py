"""Retrieval metrics on a labelled set: Recall@k, MRR@10 and nDCG@10 at the document level.

Definitions match sentence-transformers' ``InformationRetrievalEvaluator`` (binary relevance; recall is
the share of a query's relevant documents found in the top k; nDCG uses log2 discounts), and the test
suite checks the numbers against it. Used by tests, embedder training and evaluation.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence

RECALL_KS = (1, 3, 5, 10)
PRIMARY_METRIC = "ndcg@10"


def query_metrics(ranked: Sequence[str], relevant: Collection[str], ks: Sequence[int] = RECALL_KS) -> dict[str, float]:
    """Metrics for one query: ``ranked`` document ids (best first, no duplicates) against ``relevant``.

    Raises:
        ValueError: ``relevant`` is empty (the metrics are undefined).
    """
    gold = set(relevant)
    if not gold:
        raise ValueError("a query needs at least one relevant document")
    out = {f"recall@{k}": len(gold.intersection(ranked[:k])) / len(gold) for k in ks}
    out["mrr@10"] = next((1.0 / rank for rank, d in enumerate(ranked[:10], 1) if d in gold), 0.0)
    dcg = sum(1.0 / math.log2(rank + 1) for rank, d in enumerate(ranked[:10], 1) if d in gold)
    idcg = sum(1.0 / math.log2(rank + 1) for rank in range(1, min(len(gold), 10) + 1))
    out["ndcg@10"] = dcg / idcg
    return out


def retrieval_metrics(
    rankings: Sequence[Sequence[str]], relevant: Sequence[Collection[str]], ks: Sequence[int] = RECALL_KS
) -> dict[str, float]:
    """Mean metrics over the queries that have relevant documents; ``queries`` counts them.

    Queries without relevant documents (unanswerable ones) are skipped, not scored as zero.
    """
    if len(rankings) != len(relevant):
        raise ValueError(f"{len(rankings)} rankings for {len(relevant)} relevance sets")
    per_query = [query_metrics(r, g, ks) for r, g in zip(rankings, relevant, strict=True) if g]
    if not per_query:
        raise ValueError("no query has a relevant document")
    keys = per_query[0].keys()
    result = {key: sum(m[key] for m in per_query) / len(per_query) for key in keys}
    result["queries"] = float(len(per_query))
    return result
