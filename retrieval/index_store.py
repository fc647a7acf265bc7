"""The persistent index on disk: versioned directories, a manifest, an atomic ``CURRENT`` pointer, a writer lock.

Layout under ``index_dir``::

    CURRENT                      name of the version readers open (replaced atomically)
    .lock                        held by the one process that is writing a version
    versions/v000003/
        manifest.json            embedder, dimensions, counts, documents with content hashes and chunk ids
        index.faiss              IndexIDMap2 over IndexFlatIP (exact) or IndexHNSWFlat (approximate)
        chunks.jsonl             chunk text and citation metadata, in BM25 order
        doc_vectors.npy          one vector per document (its head), rows in ``manifest.doc_vector_ids`` order
        bm25/                    bm25s index over the same chunks

A version is written into a hidden staging directory and renamed into place; only then does ``CURRENT``
move. A crash at any point leaves the previous version serving and at worst a stale staging directory,
which the next writer removes.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
from pydantic import BaseModel, Field

from core.errors import ConflictError, NotFoundError
from retrieval.documents import Chunk

if TYPE_CHECKING:
    import bm25s
    import faiss

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
_VERSION_NAME = re.compile(r"^v(\d{6})$")


class DocumentEntry(BaseModel):
    content_hash: str
    title: str
    source: str
    format: str
    updated_at: str
    chunk_ids: list[int]


class BuildStats(BaseModel):
    mode: Literal["rebuild", "update"]
    added: int = 0
    changed: int = 0
    removed: int = 0
    unchanged: int = 0
    embedded_chunks: int = 0
    seconds: float = 0.0


class Manifest(BaseModel):
    """Everything needed to know how a version was made and to update it incrementally."""

    format_version: int = FORMAT_VERSION
    version: str
    parent: str | None
    created_at: str = Field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    embedder_id: str
    embedder_location: str
    dim: int
    index_type: Literal["flat", "hnsw"]
    chunk_size: int
    chunk_overlap: int
    bm25_analyzer: Literal["words", "cjk_bigrams"] = "words"  # queries are tokenized the way the corpus was
    documents: dict[str, DocumentEntry]
    num_chunks: int
    build: BuildStats
    doc_vector_ids: list[str] = Field(
        default_factory=list, description="Row order of doc_vectors.npy (empty: a version built without them).")
    doc_vector_weight: float = Field(
        0.0, ge=0.0, le=1.0, description="The blend weight the embedder's recipe chose (retrieval.doc_vector_weight "
        "auto uses it); 0 for an embedder no recipe tuned.")


@dataclass
class IndexVersion:
    """One loaded, read-only index version. Safe to share between threads for searching."""

    path: Path
    manifest: Manifest
    index: faiss.Index
    chunks: dict[int, Chunk]
    chunk_order: np.ndarray  # BM25 row -> chunk id
    bm25: bm25s.BM25
    doc_vectors: np.ndarray | None = None  # one row per document, rows in manifest.doc_vector_ids order

    @cached_property
    def chunk_doc_row(self) -> dict[int, int]:
        """Chunk id -> its document's row in ``doc_vectors`` (-1: none); built on first use, by blending only."""
        doc_row = {doc_id: i for i, doc_id in enumerate(self.manifest.doc_vector_ids)}
        return {cid: doc_row.get(c.doc_id, -1) for cid, c in self.chunks.items()}

    @property
    def name(self) -> str:
        return self.manifest.version

    def vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """All stored vectors and their chunk ids (for incremental updates)."""
        import faiss

        ids = faiss.vector_to_array(self.index.id_map).astype(np.int64)
        if len(ids) == 0:
            return np.zeros((0, self.manifest.dim), dtype=np.float32), ids
        return self.index.index.reconstruct_n(0, self.index.ntotal), ids


def versions_dir(index_dir: Path) -> Path:
    return index_dir / "versions"


def current_version(index_dir: Path) -> str | None:
    """Name of the version readers should open, or None when no index was ever built."""
    pointer = index_dir / "CURRENT"
    if not pointer.is_file():
        return None
    name = pointer.read_text().strip()
    return name if (versions_dir(index_dir) / name / "manifest.json").is_file() else None


def read_manifest(index_dir: Path, version: str | None = None) -> Manifest | None:
    version = version or current_version(index_dir)
    if version is None:
        return None
    return Manifest.model_validate_json((versions_dir(index_dir) / version / "manifest.json").read_text())


def next_version_name(index_dir: Path) -> str:
    numbers = [int(m.group(1)) for p in versions_dir(index_dir).glob("v*") if (m := _VERSION_NAME.match(p.name))]
    return f"v{max(numbers, default=0) + 1:06d}"


def open_version(index_dir: Path, version: str | None = None) -> IndexVersion:
    """Load a version (default: ``CURRENT``).

    Raises:
        NotFoundError: no index has been built in ``index_dir`` (or the named version is missing).
    """
    import bm25s
    import faiss

    version = version or current_version(index_dir)
    if version is None:
        raise NotFoundError(f"no index in {index_dir}: run `tunerag index` first")
    path = versions_dir(index_dir) / version
    if not (path / "manifest.json").is_file():
        raise NotFoundError(f"index version {version!r} not found in {index_dir}")
    manifest = Manifest.model_validate_json((path / "manifest.json").read_text())
    index = faiss.read_index(str(path / "index.faiss"))
    chunks: dict[int, Chunk] = {}
    order: list[int] = []
    with (path / "chunks.jsonl").open(encoding="utf-8") as fh:
        for line in fh:
            chunk = Chunk.from_json(json.loads(line))
            chunks[chunk.chunk_id] = chunk
            order.append(chunk.chunk_id)
    bm25 = bm25s.BM25.load(str(path / "bm25"))
    chunk_order = np.asarray(order, dtype=np.int64)
    doc_vectors = np.load(path / "doc_vectors.npy") if manifest.doc_vector_ids else None
    return IndexVersion(path, manifest, index, chunks, chunk_order, bm25, doc_vectors)


def build_faiss_index(
    vectors: np.ndarray, ids: np.ndarray, index_type: Literal["flat", "hnsw"], *, hnsw_m: int = 32
) -> faiss.Index:
    """An id-mapped inner-product index over L2-normalised ``vectors`` (so scores are cosine similarities)."""
    import faiss

    dim = vectors.shape[1]
    if index_type == "hnsw":
        base = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        base.hnsw.efConstruction = 80
    else:
        base = faiss.IndexFlatIP(dim)
    index = faiss.IndexIDMap2(base)
    if len(ids):
        index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), np.asarray(ids, dtype=np.int64))
    return index


def write_version(
    index_dir: Path, manifest: Manifest, index: faiss.Index, chunks: list[Chunk], bm25: bm25s.BM25,
    doc_vectors: np.ndarray | None = None,
) -> Path:
    """Write a complete version directory atomically (staging dir + rename). Does not activate it."""
    import faiss

    root = versions_dir(index_dir)
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".staging-{manifest.version}-", dir=root))
    try:
        faiss.write_index(index, str(staging / "index.faiss"))
        with (staging / "chunks.jsonl").open("w", encoding="utf-8") as fh:
            for chunk in chunks:
                fh.write(json.dumps(chunk.to_json(), ensure_ascii=False) + "\n")
        bm25.save(str(staging / "bm25"))
        if manifest.doc_vector_ids:
            if doc_vectors is None or len(doc_vectors) != len(manifest.doc_vector_ids):
                raise ValueError("doc_vectors must have one row per manifest.doc_vector_ids entry")
            np.save(staging / "doc_vectors.npy", np.ascontiguousarray(doc_vectors, dtype=np.float32))
        (staging / "manifest.json").write_text(manifest.model_dump_json(indent=2))
        final = root / manifest.version
        os.replace(staging, final)
        return final
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def activate(index_dir: Path, version: str) -> None:
    """Point ``CURRENT`` at ``version`` atomically (write, fsync, rename)."""
    if not (versions_dir(index_dir) / version / "manifest.json").is_file():
        raise NotFoundError(f"index version {version!r} not found in {index_dir}")
    tmp = index_dir / f".CURRENT.{os.getpid()}"
    with tmp.open("w") as fh:
        fh.write(version + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, index_dir / "CURRENT")


def prune(index_dir: Path, keep: int) -> list[str]:
    """Delete stale staging dirs and all but the newest ``keep`` versions (never the current one)."""
    root = versions_dir(index_dir)
    if not root.is_dir():
        return []
    current = current_version(index_dir)
    for staging in root.glob(".staging-*"):
        shutil.rmtree(staging, ignore_errors=True)
    names = sorted((p.name for p in root.iterdir() if _VERSION_NAME.match(p.name)), reverse=True)
    removed = [n for n in names[keep:] if n != current]
    for name in removed:
        shutil.rmtree(root / name, ignore_errors=True)
    return removed


@contextmanager
def writer_lock(index_dir: Path) -> Iterator[None]:
    """Exclusive right to write a new version; a second writer is refused at once, not queued.

    Raises:
        ConflictError: another process or thread holds the lock.
    """
    index_dir.mkdir(parents=True, exist_ok=True)
    fh = (index_dir / ".lock").open("a+")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        raise ConflictError(f"another reindex of {index_dir} is running; try again when it has finished") from None
    try:
        yield
    finally:
        fcntl.flock(fh, fcntl.LOCK_UN)
        fh.close()
