"""Building and incrementally updating the index: load, diff by content hash, embed only what changed.

``update_index`` is the one entry point used by the CLI, the API's reindex jobs and the benchmarks:

1. load and validate every source document (a bad file raises before anything is written);
2. take the writer lock (a concurrent reindex is refused with a clear message);
3. compare content hashes with the current manifest: unchanged documents keep their chunks and vectors,
   new and changed ones are chunked and embedded, vanished ones are dropped;
4. write a complete new version, then switch ``CURRENT`` to it atomically and prune old versions.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from core.errors import ConflictError, InvalidInputError
from core.models import embedder_doc_vector_weight, load_embedder, resolve_embedder
from core.settings import Settings
from retrieval import bm25, index_store
from retrieval.chunking import Chunker
from retrieval.documents import Chunk, Document
from retrieval.embedding import embedder_fingerprint, embedding_dim, encode
from retrieval.loaders import load_documents

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

logger = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]  # (stage, done, total)


@dataclass(frozen=True)
class IndexReport:
    """What one indexing run did."""

    version: str
    changed_index: bool
    mode: Literal["rebuild", "update"]
    documents: int
    chunks: int
    added: int
    changed: int
    removed: int
    unchanged: int
    embedded_chunks: int
    index_type: str
    seconds: float


def default_sources(settings: Settings) -> list[Path]:
    """Configured sources plus documents uploaded through the API."""
    sources = list(settings.retrieval.sources)
    if settings.paths.documents_dir.is_dir() and any(settings.paths.documents_dir.iterdir()):
        sources.append(settings.paths.documents_dir)
    return sources


def choose_index_type(settings: Settings, num_vectors: int) -> Literal["flat", "hnsw"]:
    configured = settings.retrieval.index_type
    if configured != "auto":
        return configured
    return "hnsw" if num_vectors >= settings.retrieval.ann_threshold else "flat"


def choose_bm25_analyzer(settings: Settings, chunks: Sequence[Chunk]) -> bm25.Analyzer:
    configured = settings.retrieval.bm25_analyzer
    return bm25.detect_analyzer(c.text for c in chunks) if configured == "auto" else configured


def _document_vectors(model: SentenceTransformer, documents: Sequence[Document], to_embed: Sequence[Document],
                      old: index_store.IndexVersion | None, batch_size: int) -> np.ndarray:
    """One vector per document, rows in ``documents`` order: unchanged documents keep the rows of ``old`` (the
    previous version, opened when it has unchanged documents), the rest (and all of them, when that version
    has no document vectors) are embedded."""
    old_vectors = old.doc_vectors if old is not None else None
    old_row = {doc_id: i for i, doc_id in enumerate(old.manifest.doc_vector_ids)} if old_vectors is not None else {}
    changed = {d.doc_id for d in to_embed}
    fresh = [d for d in documents if d.doc_id in changed or d.doc_id not in old_row]
    vectors = encode(model, [d.embedding_text() for d in fresh], batch_size=batch_size)
    out = np.zeros((len(documents), embedding_dim(model)), dtype=np.float32)
    fresh_row = {d.doc_id: i for i, d in enumerate(fresh)}
    for i, d in enumerate(documents):
        out[i] = vectors[fresh_row[d.doc_id]] if d.doc_id in fresh_row else old_vectors[old_row[d.doc_id]]
    return out


def update_index(
    settings: Settings,
    paths: Sequence[Path] | None = None,
    *,
    rebuild: bool = False,
    embedder_location: str | None = None,
    progress: bool = False,
    on_progress: Progress | None = None,
    documents: Sequence[Document] | None = None,
) -> IndexReport:
    """Bring the index in ``settings.paths.index_dir`` in line with the documents under ``paths``.

    Args:
        paths: files/folders to index (default: :func:`default_sources`). Documents no longer present
            are removed from the index.
        rebuild: re-embed everything (needed after changing the embedder).
        embedder_location: a sentence-transformers folder overriding ``settings.models.embedder``
            (e.g. a fine-tuned artifact).
        documents: already-loaded documents (skips loading ``paths``).

    Raises:
        InvalidInputError: a source file is malformed (nothing is written).
        ConflictError: another reindex is running, or the index was built with another embedder
            and ``rebuild`` is False.
    """
    began = time.perf_counter()
    index_dir = settings.paths.index_dir
    if documents is None:
        paths = list(paths) if paths else default_sources(settings)
        documents = load_documents(paths)
        if not documents:
            raise InvalidInputError(f"no supported documents under {', '.join(map(str, paths))}")
    location = embedder_location or resolve_embedder(settings).location
    fingerprint = embedder_fingerprint(location)
    cfg = settings.retrieval

    with index_store.writer_lock(index_dir):
        previous = None if rebuild else index_store.read_manifest(index_dir)
        if previous is not None and previous.embedder_id != fingerprint:
            raise ConflictError(
                f"the index was built with embedder {previous.embedder_id} ({previous.embedder_location}) but "
                f"the settings name {fingerprint} ({location}); vectors of two models cannot be mixed: "
                "run `tunerag index --rebuild`"
            )
        if previous is not None and (previous.chunk_size, previous.chunk_overlap) != (cfg.chunk_size, cfg.chunk_overlap):
            logger.info("chunking settings changed since %s: re-embedding every document", previous.version)
            previous = None
        mode: Literal["rebuild", "update"] = "update" if previous is not None else "rebuild"
        old_docs = previous.documents if previous is not None else {}
        current = {d.doc_id: d for d in documents}
        unchanged = [d for d in documents if d.doc_id in old_docs and old_docs[d.doc_id].content_hash == d.content_hash]
        unchanged_ids = {d.doc_id for d in unchanged}
        to_embed = [d for d in documents if d.doc_id not in unchanged_ids]
        removed = [doc_id for doc_id in old_docs if doc_id not in current]
        stats = index_store.BuildStats(
            mode=mode,
            added=sum(d.doc_id not in old_docs for d in to_embed),
            changed=sum(d.doc_id in old_docs for d in to_embed),
            removed=len(removed),
            unchanged=len(unchanged),
        )
        if previous is not None and not to_embed and not removed and previous.doc_vector_ids:
            logger.info("index %s is up to date (%d documents)", previous.version, len(unchanged))
            return IndexReport(previous.version, False, mode, len(documents), previous.num_chunks, 0, 0, 0,
                               len(unchanged), 0, previous.index_type, time.perf_counter() - began)

        model: SentenceTransformer = load_embedder(settings, location)
        chunker = Chunker(model.tokenizer, cfg.chunk_size, cfg.chunk_overlap)
        new_chunks = [chunk for doc in to_embed for chunk in chunker.split(doc)]
        logger.info("embedding %d chunks from %d new/changed documents (%d unchanged, %d removed)",
                    len(new_chunks), len(to_embed), len(unchanged), len(removed))
        stage_progress = (lambda done, total: on_progress("embedding", done, total)) if on_progress else None
        new_vectors = encode(model, [c.embedding_text() for c in new_chunks], batch_size=cfg.embed_batch_size,
                             progress=progress, on_progress=stage_progress)
        stats.embedded_chunks = len(new_chunks)

        kept_chunks: list[Chunk] = []
        kept_vectors = np.zeros((0, embedding_dim(model)), dtype=np.float32)
        old = None
        if unchanged:
            old = index_store.open_version(index_dir, previous.version)
            vectors, ids = old.vectors()
            keep_ids = [cid for d in unchanged for cid in old_docs[d.doc_id].chunk_ids]
            row = {int(cid): i for i, cid in enumerate(ids)}
            kept_vectors = vectors[[row[cid] for cid in keep_ids]]
            kept_chunks = [old.chunks[cid] for cid in keep_ids]
        doc_vectors = _document_vectors(model, documents, to_embed, old, cfg.embed_batch_size)

        all_chunks = kept_chunks + new_chunks
        all_vectors = np.vstack([kept_vectors, new_vectors]) if len(all_chunks) else kept_vectors
        ids = np.asarray([c.chunk_id for c in all_chunks], dtype=np.int64)
        if len(set(ids.tolist())) != len(ids):
            raise ConflictError("chunk id collision; rebuild the index with `tunerag index --rebuild`")
        index_type = choose_index_type(settings, len(all_chunks))
        if on_progress:
            on_progress("indexing", 0, len(all_chunks))
        faiss_index = index_store.build_faiss_index(all_vectors, ids, index_type, hnsw_m=cfg.hnsw_m)
        analyzer = choose_bm25_analyzer(settings, all_chunks)
        bm25_index = bm25.build_index([c.embedding_text() for c in all_chunks], analyzer)

        chunk_ids_by_doc: dict[str, list[int]] = {}
        for chunk in all_chunks:
            chunk_ids_by_doc.setdefault(chunk.doc_id, []).append(chunk.chunk_id)
        version = index_store.next_version_name(index_dir)
        stats.seconds = round(time.perf_counter() - began, 3)
        manifest = index_store.Manifest(
            version=version,
            parent=previous.version if previous is not None else index_store.current_version(index_dir),
            embedder_id=fingerprint,
            embedder_location=location,
            dim=int(all_vectors.shape[1]),
            index_type=index_type,
            chunk_size=cfg.chunk_size,
            chunk_overlap=cfg.chunk_overlap,
            bm25_analyzer=analyzer,
            documents={
                d.doc_id: index_store.DocumentEntry(
                    content_hash=d.content_hash, title=d.title, source=d.source, format=d.format,
                    updated_at=d.updated_at, chunk_ids=chunk_ids_by_doc.get(d.doc_id, []),
                )
                for d in documents
            },
            num_chunks=len(all_chunks),
            build=stats,
            doc_vector_ids=[d.doc_id for d in documents],
            doc_vector_weight=embedder_doc_vector_weight(location),
        )
        index_store.write_version(index_dir, manifest, faiss_index, all_chunks, bm25_index, doc_vectors)
        index_store.activate(index_dir, version)
        index_store.prune(index_dir, cfg.keep_versions)
        if on_progress:
            on_progress("done", len(all_chunks), len(all_chunks))
    seconds = time.perf_counter() - began
    logger.info("index %s active: %d documents, %d chunks (%s) in %.1fs", version, len(documents),
                len(all_chunks), index_type, seconds)
    return IndexReport(version, True, mode, len(documents), len(all_chunks), stats.added, stats.changed,
                       stats.removed, stats.unchanged, stats.embedded_chunks, index_type, seconds)
