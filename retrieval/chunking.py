"""Chunking with langchain-text-splitters: split at Markdown headings, then by embedder-token count.

Every loader emits Markdown-flavoured text (HTML headings become ``#`` lines), so one header-aware path
serves Markdown, HTML, FAQ and plain text alike. Chunks keep their heading path for citations.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from langchain_text_splitters import MarkdownHeaderTextSplitter, RecursiveCharacterTextSplitter

from retrieval.documents import Chunk, Document, chunk_id_for

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

_HEADERS = [("#", "h1"), ("##", "h2"), ("###", "h3"), ("####", "h4")]


class Chunker:
    """Splits documents into token-bounded chunks.

    Args:
        tokenizer: the embedder's tokenizer; sizes are counted in its tokens.
        chunk_size: most tokens in one chunk's text.
        chunk_overlap: tokens shared by consecutive chunks of one section.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, chunk_size: int, chunk_overlap: int) -> None:
        if not 0 <= chunk_overlap < chunk_size:
            raise ValueError(f"chunk_overlap must be in [0, chunk_size), got {chunk_overlap} with {chunk_size}")
        self.chunk_size, self.chunk_overlap = chunk_size, chunk_overlap
        self._headers = MarkdownHeaderTextSplitter(_HEADERS, strip_headers=True)
        self._tokens = RecursiveCharacterTextSplitter.from_huggingface_tokenizer(
            tokenizer, chunk_size=chunk_size, chunk_overlap=chunk_overlap
        )

    def split(self, doc: Document) -> list[Chunk]:
        """Chunks of ``doc`` in reading order; ``position`` counts from 0."""
        chunks: list[Chunk] = []
        for section in self._headers.split_text(doc.text):
            heading_path = tuple(section.metadata[key] for _, key in _HEADERS if key in section.metadata)
            body = section.page_content.replace("  \n", "\n").strip()
            if not body:
                continue
            for piece in self._tokens.split_text(body):
                text = piece.strip()
                if not text:
                    continue
                position = len(chunks)
                chunks.append(Chunk(
                    chunk_id=chunk_id_for(doc.doc_id, position, text),
                    doc_id=doc.doc_id,
                    position=position,
                    text=text,
                    title=doc.title,
                    heading_path=heading_path,
                    source=doc.source,
                    metadata={"format": doc.format, **doc.metadata},
                ))
        if not chunks:  # a document that is only headings still deserves to be findable
            text = doc.text.strip()
            chunks.append(Chunk(chunk_id_for(doc.doc_id, 0, text), doc.doc_id, 0, text, doc.title, (), doc.source,
                                {"format": doc.format, **doc.metadata}))
        return chunks
