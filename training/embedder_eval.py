"""A sentence-transformers evaluator that scores retrieval the way tunerag retrieves: over chunks, each
blended with its document's own vector as the index does (``retrieval.doc_vector_weight``), documents ranked
by their best chunk, metrics from :mod:`retrieval.metrics`.

The trainer uses it to pick the best checkpoint (primary metric ``ndcg@10``); the recipe uses it for the
before/after numbers in the artifact manifest.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from sentence_transformers.sentence_transformer.evaluation import SentenceEvaluator

from retrieval.documents import Chunk
from retrieval.metrics import PRIMARY_METRIC, retrieval_metrics


class DocRetrievalEvaluator(SentenceEvaluator):
    """Recall@k, MRR@10, nDCG@10 of ``queries`` against ``gold`` doc ids over ``chunks``.

    Returns a flat dict with keys prefixed by ``name`` (e.g. ``heldout_ndcg@10``).
    """

    def __init__(self, queries: Sequence[str], gold: Sequence[Sequence[str]], chunks: Sequence[Chunk],
                 name: str = "heldout", batch_size: int = 64, doc_texts: Mapping[str, str] | None = None,
                 doc_weight: float = 0.0) -> None:
        super().__init__()
        if not queries:
            raise ValueError("the evaluator needs at least one query")
        self.queries, self.gold, self.chunks = list(queries), [list(g) for g in gold], list(chunks)
        self.name, self.batch_size = name, batch_size
        self.doc_texts, self.doc_weight = dict(doc_texts or {}), doc_weight if doc_texts else 0.0
        self.primary_metric = PRIMARY_METRIC

    def _similarities(self, model, with_docs: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
        """(query x chunk scores, query x chunk scores of each chunk's document vector or None)."""
        encode = lambda texts: model.encode(texts, batch_size=self.batch_size, normalize_embeddings=True,  # noqa: E731
                                            convert_to_numpy=True, show_progress_bar=False)
        queries = encode(self.queries)
        chunk_scores = queries @ encode([c.embedding_text() for c in self.chunks]).T
        if not self.doc_texts or not with_docs:
            return chunk_scores, None
        doc_ids = list(self.doc_texts)
        column = {d: i for i, d in enumerate(doc_ids)}
        of_chunk = np.asarray([column[c.doc_id] for c in self.chunks])
        return chunk_scores, (queries @ encode([self.doc_texts[d] for d in doc_ids]).T)[:, of_chunk]

    def _rank(self, scores: np.ndarray) -> list[list[str]]:
        out = []
        for row in np.argsort(-scores, axis=1, kind="stable")[:, :50]:
            ranked: dict[str, None] = {}
            for i in row:
                ranked.setdefault(self.chunks[i].doc_id, None)
            out.append(list(ranked))
        return out

    def rankings(self, model, doc_weight: float | None = None) -> list[list[str]]:
        weight = self.doc_weight if doc_weight is None else doc_weight
        chunk_scores, doc_scores = self._similarities(model, with_docs=weight > 0)
        if weight == 0 or doc_scores is None:
            return self._rank(chunk_scores)
        return self._rank((1 - weight) * chunk_scores + weight * doc_scores)

    def sweep(self, model, weights: Sequence[float]) -> dict[float, float]:
        """The primary metric at each document-vector weight, from one encoding of queries and corpus."""
        chunk_scores, doc_scores = self._similarities(model, with_docs=any(w > 0 for w in weights))
        out = {}
        for w in weights:
            scores = chunk_scores if w == 0 or doc_scores is None else (1 - w) * chunk_scores + w * doc_scores
            out[w] = retrieval_metrics(self._rank(scores), self.gold)[self.primary_metric]
        return out

    def __call__(self, model, output_path: str | None = None, epoch: int = -1, steps: int = -1) -> dict[str, float]:
        metrics = retrieval_metrics(self.rankings(model), self.gold)
        metrics = self.prefix_name_to_metrics(metrics, self.name)
        self.store_metrics_in_model_card_data(model, metrics, epoch, steps)
        return metrics
