"""The data that flows through retrieval: a loaded ``Document`` and the ``Chunk``s cut from it."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from typing import Any


def content_hash(text: str) -> str:
    """sha256 of the text; a document is re-embedded exactly when this changes."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Document:
    """One source document after loading.

    ``text`` is Markdown-flavoured plain text: headings as ``#`` lines, so chunking can follow them
    whatever the source format. ``doc_id`` is stable across runs (a path relative to its source root
    without suffix, or the id a FAQ line gives), and is what answers cite.
    """

    doc_id: str
    text: str
    title: str
    source: str
    format: str
    updated_at: str
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def content_hash(self) -> str:
        return content_hash(f"{self.title}\n{self.text}\n{sorted(self.metadata.items())}")

    def embedding_text(self) -> str:
        """What the document-level vector embeds: title and text (the embedder keeps its head, up to its
        max length)."""
        return f"{self.title}\n{self.text}"


@dataclass(frozen=True)
class Chunk:
    """A piece of a document small enough to embed, with what a citation needs.

    ``chunk_id`` is a stable int64 (FAISS id) derived from the doc id, position and text.
    """

    chunk_id: int
    doc_id: str
    position: int
    text: str
    title: str
    heading_path: tuple[str, ...]
    source: str
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["heading_path"] = list(self.heading_path)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Chunk:
        return cls(**{**data, "heading_path": tuple(data["heading_path"])})

    def embedding_text(self) -> str:
        """What is embedded and BM25-indexed: title and heading path give a short chunk its context."""
        path = " > ".join(h for h in self.heading_path if h != self.title)
        header = f"{self.title} — {path}" if path else self.title
        return f"{header}\n{self.text}"


def chunk_id_for(doc_id: str, position: int, text: str) -> int:
    digest = hashlib.blake2b(f"{doc_id}\x00{position}\x00{text}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") & 0x7FFF_FFFF_FFFF_FFFF  # non-negative int64
