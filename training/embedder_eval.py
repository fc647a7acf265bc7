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

    def rankings(self, model) -> list[list[str]]:
        corpus = model.encode([c.embedding_text() for c in self.chunks], batch_size=self.batch_size,
                              normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
        queries = model.encode(self.queries, batch_size=self.batch_size, normalize_embeddings=True,
                               convert_to_numpy=True, show_progress_bar=False)
        scores = queries @ corpus.T
        if self.doc_weight > 0:
            doc_ids = list(self.doc_texts)
            docs = model.encode([self.doc_texts[d] for d in doc_ids], batch_size=self.batch_size,
                                normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
            column = {d: i for i, d in enumerate(doc_ids)}
            of_chunk = np.asarray([column[c.doc_id] for c in self.chunks])
            scores = (1 - self.doc_weight) * scores + self.doc_weight * (queries @ docs.T)[:, of_chunk]
        out = []
        for row in np.argsort(-scores, axis=1, kind="stable")[:, :50]:
            ranked: dict[str, None] = {}
            for i in row:
                ranked.setdefault(self.chunks[i].doc_id, None)
            out.append(list(ranked))
        return out

    def __call__(self, model, output_path: str | None = None, epoch: int = -1, steps: int = -1) -> dict[str, float]:
        metrics = retrieval_metrics(self.rankings(model), self.gold)
        metrics = self.prefix_name_to_metrics(metrics, self.name)
        self.store_metrics_in_model_card_data(model, metrics, epoch, steps)
        return metrics
