"""Searching a loaded index version: dense (FAISS), sparse (BM25) and hybrid (reciprocal-rank fusion).

``Retriever`` is cheap to construct around an :class:`~retrieval.index_store.IndexVersion` and an
embedder; the service keeps one per active index version and swaps it atomically after a reindex.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from core.errors import InvalidInputError
from core.models import load_embedder
from core.prompt import ContextPassage
from core.settings import RetrievalSettings, Settings
from retrieval import bm25
from retrieval.documents import Chunk
from retrieval.embedding import encode
from retrieval.index_store import IndexVersion, open_version

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

SearchMode = Literal["dense", "bm25", "hybrid"]
Filters = Mapping[str, Any]


@dataclass(frozen=True)
class SearchResult:
    """One retrieved chunk with what a citation and a prompt need."""

    chunk_id: int
    doc_id: str
    title: str
    heading_path: tuple[str, ...]
    text: str
    score: float
    source: str

    def to_passage(self) -> ContextPassage:
        heading = " > ".join(h for h in self.heading_path if h != self.title)
        return ContextPassage(self.doc_id, self.title + (f" — {heading}" if heading else ""), self.text)

    def to_json(self) -> dict[str, Any]:
        return {"chunk_id": self.chunk_id, "doc_id": self.doc_id, "title": self.title,
                "heading_path": list(self.heading_path), "text": self.text, "score": self.score,
                "source": self.source}


def _matches(chunk: Chunk, filters: Filters) -> bool:
    for key, wanted in filters.items():
        value = getattr(chunk, key, None) if key in ("doc_id", "source", "title") else chunk.metadata.get(key)
        allowed = wanted if isinstance(wanted, list | tuple | set) else [wanted]
        if value not in allowed:
            return False
    return True


def doc_ranking(results: Sequence[SearchResult]) -> list[str]:
    """Document ids in order of their best chunk (what document-level metrics and citations use)."""
    seen: dict[str, None] = {}
    for r in results:
        seen.setdefault(r.doc_id, None)
    return list(seen)


def resolve_doc_vector_weight(config: RetrievalSettings, version: IndexVersion) -> float:
    """The blend weight a search uses: the setting when it is a number, else (``auto``) the one the index
    recorded from its embedder's recipe; 0 for a version without document vectors."""
    if version.doc_vectors is None:
        return 0.0
    return version.manifest.doc_vector_weight if config.doc_vector_weight == "auto" else config.doc_vector_weight


class Retriever:
    """Dense, BM25 and hybrid search over one index version.

    Args:
        version: the loaded index version.
        embedder: a model with the same fingerprint the version was built with.
        config: retrieval settings (default k, mode, RRF constant, HNSW efSearch).
    """

    def __init__(self, version: IndexVersion, embedder: SentenceTransformer, config: RetrievalSettings) -> None:
        self.version, self.embedder, self.config = version, embedder, config
        self.doc_vector_weight = resolve_doc_vector_weight(config, version)

    def _allowed_ids(self, filters: Filters | None) -> np.ndarray | None:
        if not filters:
            return None
        return np.asarray([cid for cid, c in self.version.chunks.items() if _matches(c, filters)], dtype=np.int64)

    def _result(self, chunk_id: int, score: float) -> SearchResult:
        c = self.version.chunks[int(chunk_id)]
        return SearchResult(c.chunk_id, c.doc_id, c.title, c.heading_path, c.text, float(score), c.source)

    def dense_many(self, queries: Sequence[str], k: int, filters: Filters | None = None) -> list[list[SearchResult]]:
        """Top-``k`` chunks by cosine similarity, blended with their document's vector where the version has
        document vectors and ``doc_vector_weight`` > 0 (``score`` is then the blend)."""
        import faiss

        allowed = self._allowed_ids(filters)
        if allowed is not None and len(allowed) == 0 or self.version.index.ntotal == 0:
            return [[] for _ in queries]
        vectors = encode(self.embedder, queries, batch_size=self.config.embed_batch_size)
        weight = self.doc_vector_weight
        depth = k if weight == 0 else max(k, self.config.doc_vector_candidates)
        params = None
        if self.version.manifest.index_type == "hnsw":
            params = faiss.SearchParametersHNSW(efSearch=max(self.config.hnsw_ef_search, depth))
        if allowed is not None:
            params = params or faiss.SearchParameters()
            params.sel = faiss.IDSelectorBatch(allowed)
        scores, ids = self.version.index.search(vectors, depth, params=params)
        if weight == 0:
            return [[self._result(i, s) for i, s in zip(row_ids, row_scores, strict=True) if i >= 0]
                    for row_ids, row_scores in zip(ids, scores, strict=True)]
        allowed_set = None if allowed is None else set(allowed.tolist())
        return [self._blend(vector, row_ids, row_scores, k, weight, allowed_set)
                for vector, row_ids, row_scores in zip(vectors, ids, scores, strict=True)]

    def _blend(self, vector: np.ndarray, ids: np.ndarray, scores: np.ndarray, k: int, weight: float,
               allowed: set[int] | None) -> list[SearchResult]:
        """Each candidate chunk scored ``(1 - weight) * chunk + weight * its document's vector``; candidates are
        the FAISS hits plus every chunk of the ``k`` best documents by their own vector (so a document whose
        head matches is not lost because its chunks ranked below the fetch depth)."""
        version = self.version
        doc_scores = version.doc_vectors @ vector
        chunk_scores = {int(i): float(s) for i, s in zip(ids, scores, strict=True) if i >= 0}
        for row in np.argsort(-doc_scores, kind="stable")[:k]:
            entry = version.manifest.documents.get(version.manifest.doc_vector_ids[row])
            for cid in entry.chunk_ids if entry else ():
                if cid not in chunk_scores and (allowed is None or cid in allowed):
                    chunk_scores[cid] = float(version.index.reconstruct(cid) @ vector)
        blended = []
        for cid, score in chunk_scores.items():
            row = version.chunk_doc_row.get(cid, -1)
            blended.append((cid, score if row < 0 else (1 - weight) * score + weight * float(doc_scores[row])))
        blended.sort(key=lambda item: item[1], reverse=True)
        return [self._result(cid, s) for cid, s in blended[:k]]

    def embed_and_top_score(self, queries: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """The queries' embeddings and each one's best dense score over the whole index (what drift monitoring
        compares; hybrid scores are rank fusions, not comparable between indexes)."""
        vectors = encode(self.embedder, list(queries), batch_size=self.config.embed_batch_size)
        if self.version.index.ntotal == 0:
            return vectors, np.zeros(len(queries), dtype=np.float32)
        scores, _ = self.version.index.search(vectors, 1)
        return vectors, scores[:, 0].astype(np.float32)

    def bm25_many(self, queries: Sequence[str], k: int, filters: Filters | None = None) -> list[list[SearchResult]]:
        n = len(self.version.chunk_order)
        if n == 0:
            return [[] for _ in queries]
        mask = None
        allowed = self._allowed_ids(filters)
        if allowed is not None:
            mask = np.isin(self.version.chunk_order, allowed).astype(np.float32)
            if not mask.any():
                return [[] for _ in queries]
        tokens = bm25.tokenize(list(queries), self.version.manifest.bm25_analyzer)
        out: list[list[SearchResult]] = []
        for query_tokens in tokens:
            known = [t for t in query_tokens if t in self.version.bm25.vocab_dict]
            if not known:
                out.append([])
                continue
            rows, scores = self.version.bm25.retrieve([known], k=min(k, n), show_progress=False, weight_mask=mask)
            out.append([self._result(self.version.chunk_order[r], s)
                        for r, s in zip(rows[0], scores[0], strict=True) if s > 0])
        return out

    def hybrid_many(self, queries: Sequence[str], k: int, filters: Filters | None = None) -> list[list[SearchResult]]:
        """Weighted reciprocal-rank fusion of dense and BM25 lists: score = sum w / (rrf_k + rank), with
        w = 1 for dense and ``bm25_weight`` for BM25 (0 reproduces the dense ranking)."""
        return self._fuse(*self._hybrid_lists(queries, k, filters), k, self.config.bm25_weight)

    def _hybrid_lists(self, queries: Sequence[str], k: int, filters: Filters | None = None,
                      ) -> tuple[list[list[SearchResult]], list[list[SearchResult]]]:
        depth = max(4 * k, 20)
        return self.dense_many(queries, depth, filters), self.bm25_many(queries, depth, filters)

    def _fuse(self, dense_lists: list[list[SearchResult]], sparse_lists: list[list[SearchResult]], k: int,
              bm25_weight: float) -> list[list[SearchResult]]:
        fused_all = []
        for dense, sparse in zip(dense_lists, sparse_lists, strict=True):
            scores: dict[int, float] = {}
            for weight, ranked in ((1.0, dense), (bm25_weight, sparse)):
                for rank, r in enumerate(ranked, 1):
                    scores[r.chunk_id] = scores.get(r.chunk_id, 0.0) + weight / (self.config.rrf_k + rank)
            best = sorted(scores.items(), key=lambda item: item[1], reverse=True)[:k]
            fused_all.append([self._result(cid, s) for cid, s in best])
        return fused_all

    def search_many(
        self, queries: Sequence[str], k: int | None = None, mode: SearchMode | None = None,
        filters: Filters | None = None,
    ) -> list[list[SearchResult]]:
        """Top-``k`` chunks for each query, best first.

        Raises:
            InvalidInputError: ``k`` < 1, an unknown mode, or an empty query.
        """
        k = self.config.top_k if k is None else k
        mode = mode or self.config.search_mode
        if k < 1:
            raise InvalidInputError(f"k must be >= 1, got {k}")
        if any(not q or not q.strip() for q in queries):
            raise InvalidInputError("query must not be empty")
        runners = {"dense": self.dense_many, "bm25": self.bm25_many, "hybrid": self.hybrid_many}
        if mode not in runners:
            raise InvalidInputError(f"mode must be one of {sorted(runners)}, got {mode!r}")
        return runners[mode](list(queries), k, filters)

    def search(self, query: str, k: int | None = None, mode: SearchMode | None = None,
               filters: Filters | None = None) -> list[SearchResult]:
        return self.search_many([query], k, mode, filters)[0]


def tune_bm25_weight(
    retriever: Retriever, queries: Sequence[str], gold: Sequence[Sequence[str]],
    grid: Sequence[float] = (0.0, 0.1, 0.25, 0.5, 1.0),
) -> tuple[float, dict[float, float]]:
    """The BM25 fusion weight with the best document nDCG@10 on labelled ``queries`` (ties go to the smaller
    weight, so dense alone wins unless BM25 measurably helps), and each weight's score.

    Use training questions: a weight tuned on the test set would flatter hybrid search.
    """
    from retrieval.metrics import retrieval_metrics

    lists = retriever._hybrid_lists(list(queries), 20)  # searched once, fused once per weight
    scores = {}
    for weight in grid:
        ranked = [doc_ranking(r) for r in retriever._fuse(*lists, 20, weight)]
        scores[weight] = round(retrieval_metrics(ranked, gold)["ndcg@10"], 4)
    best = max(sorted(scores), key=lambda w: (scores[w], -w))
    return best, scores


def open_retriever(settings: Settings, index_dir: Path | None = None) -> Retriever:
    """A retriever over the ``CURRENT`` version in ``index_dir`` (default: the settings' index), querying
    with the embedder that version was built with (loaded once per process).

    Raises:
        NotFoundError: no index has been built there.
    """
    version = open_version(index_dir or settings.paths.index_dir)
    return Retriever(version, load_embedder(settings, version.manifest.embedder_location), settings.retrieval)
