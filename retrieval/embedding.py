"""Embedding chunks and queries with a sentence-transformers model, and fingerprinting that model.

The fingerprint goes into every index manifest so vectors from two different models are never mixed.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int], None]

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".json", ".txt")


@lru_cache(maxsize=256)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def embedder_fingerprint(location: str) -> str:
    """A short id that changes whenever the model's files change: the content of every weight, config and
    vocabulary file (hashed once per process per file version; ~0.2 s for MiniLM)."""
    path = Path(location)
    if not path.is_dir():
        return f"hub:{location}"
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in _WEIGHT_SUFFIXES):
        stat = file.stat()
        digest.update(f"{file.relative_to(path).as_posix()}:{_file_digest(str(file), stat.st_size, stat.st_mtime_ns)}\n".encode())
    return f"{path.name}-{digest.hexdigest()[:16]}"


def embedding_dim(model: SentenceTransformer) -> int:
    getter = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    return int(getter())


def encode(
    model: SentenceTransformer,
    texts: Sequence[str],
    *,
    batch_size: int = 32,
    progress: bool = False,
    on_progress: ProgressCallback | None = None,
) -> np.ndarray:
    """L2-normalised float32 embeddings, shape ``(len(texts), dim)``.

    Encodes in slices so ``on_progress(done, total)`` can report to a job tracker.
    """
    total = len(texts)
    if total == 0:
        return np.zeros((0, embedding_dim(model)), dtype=np.float32)
    step = max(batch_size * 8, 1) if on_progress else total
    parts = []
    for start in range(0, total, step):
        batch = list(texts[start : start + step])
        vectors = model.encode(batch, batch_size=batch_size, normalize_embeddings=True,
                               convert_to_numpy=True, show_progress_bar=progress and total > batch_size)
        parts.append(np.asarray(vectors, dtype=np.float32))
        if on_progress:
            on_progress(min(start + step, total), total)
    return np.vstack(parts)
