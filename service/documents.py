"""The uploaded-documents store: staging, validation in a budgeted child process, id conflicts, listing, deletion.

Every method is synchronous and does file and parsing work, so controllers call them in a worker thread
(``anyio.to_thread``). An upload is parsed in a staging folder by :mod:`retrieval.isolation` (time and memory
budget per file) and checked against every doc id the knowledge base already has *before* anything is
moved into the documents folder, so a bad or conflicting upload leaves the store and the index untouched.

Each uploaded file has a sidecar ``.meta/<file>.json`` with the documents it holds, so listing and deleting
never re-parse untrusted files.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from core.errors import ConflictError, InvalidInputError, NotFoundError
from core.settings import Settings
from retrieval import index_store
from retrieval.documents import Document
from retrieval.isolation import ParseBudget, load_file_isolated
from retrieval.loaders import SUFFIXES

logger = logging.getLogger(__name__)

_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9_.-]+")
_FORMAT_SUFFIX = {"markdown": ".md", "text": ".txt", "html": ".html"}
META_DIR = ".meta"


def _public_source(source: str) -> str:
    """A source as an error message may show it: the file's name (and line), never the server's path."""
    path, _, line = source.partition("#")
    return f"indexed source file {Path(path).name}{'#' + line if line else ''}"


@dataclass(frozen=True)
class StoredDocument:
    """One document the knowledge base knows of, indexed or only uploaded so far."""

    doc_id: str
    title: str
    source: str
    format: str
    chunks: int
    updated_at: str
    uploaded: bool


@dataclass(frozen=True)
class UploadResult:
    accepted: list[str]
    doc_ids: list[str]


def safe_file_name(name: str) -> str:
    """The name an uploaded file is stored under: its base name with unsafe characters as ``-``.

    Raises:
        InvalidInputError: nothing usable is left, or the suffix is not a supported document type.
    """
    base = _UNSAFE_NAME.sub("-", Path(name or "").name).strip("-.")
    if not base or Path(base).suffix.lower() not in SUFFIXES:
        raise InvalidInputError(f"{name!r}: unsupported file type; supported: {sorted(SUFFIXES)}")
    return base


def render_json_document(doc_id: str, text: str, title: str | None, fmt: str) -> tuple[str, str]:
    """A JSON-uploaded document as ``(file name, file content)``.

    Markdown gets YAML front matter written by a YAML emitter (never by pasting strings), so a title with
    a newline, ``:``, ``*`` or ``#`` stays a title and cannot override the id.
    """
    import yaml

    if fmt == "markdown":
        front = yaml.safe_dump({"id": doc_id, "title": " ".join((title or doc_id).split())}, allow_unicode=True,
                               sort_keys=False, width=10_000)
        return f"{doc_id.replace('/', '--')}.md", f"---\n{front}---\n\n{text}"
    if "/" in doc_id:
        raise InvalidInputError(f"doc_id {doc_id!r}: ids with '/' are only supported for format 'markdown'")
    return f"{doc_id}{_FORMAT_SUFFIX[fmt]}", text


class DocumentService:
    """Uploads in ``paths.documents_dir`` and their relation to the index manifest.

    Args:
        settings: where documents and the index live, and the upload budgets (``server.parse_*``).
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.root = settings.paths.documents_dir
        self.budget = ParseBudget(settings.server.parse_timeout_s, settings.server.parse_memory_mb * 2**20)
        # Conflict checks and the move into the store must be one step, or two uploads could both pass.
        self._lock = threading.Lock()

    # --- staging ----------------------------------------------------------------------------------------

    def new_staging(self) -> Path:
        """A private staging folder inside the documents folder (hidden: the indexer skips it)."""
        self.root.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=".upload-", dir=self.root))

    @staticmethod
    def discard_staging(staging: Path) -> None:
        shutil.rmtree(staging, ignore_errors=True)

    @staticmethod
    def stage(staging: Path, name: str, data: bytes) -> None:
        path = staging / name
        if path.exists():
            raise InvalidInputError(f"{name!r} appears twice in the request")
        path.write_bytes(data)

    # --- metadata ---------------------------------------------------------------------------------------

    def _meta_path(self, file_name: str) -> Path:
        return self.root / META_DIR / f"{file_name}.json"

    def _write_meta(self, file_name: str, docs: list[Document]) -> None:
        path = self._meta_path(file_name)
        path.parent.mkdir(parents=True, exist_ok=True)
        rows = [{"doc_id": d.doc_id, "title": d.title, "format": d.format, "updated_at": d.updated_at} for d in docs]
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(rows), encoding="utf-8")
        os.replace(tmp, path)

    def _uploads(self) -> dict[str, list[dict[str, str]]]:
        """Stored upload file name -> the documents it holds (re-parsed in isolation when the sidecar is missing)."""
        out: dict[str, list[dict[str, str]]] = {}
        if not self.root.is_dir():
            return out
        for file in sorted(self.root.iterdir()):
            if not file.is_file() or file.name.startswith(".") or file.suffix.lower() not in SUFFIXES:
                continue
            meta = self._meta_path(file.name)
            if not meta.is_file():
                try:
                    self._write_meta(file.name, load_file_isolated(file, self.root, self.budget, name=file.name))
                except InvalidInputError as exc:
                    logger.warning("uploaded file %s cannot be parsed: %s", file.name, exc)
                    continue
            out[file.name] = json.loads(meta.read_text(encoding="utf-8"))
        return out

    def is_upload(self, source: str) -> bool:
        """Whether a document source (``path`` or ``path#Lnn``) lies in the upload folder."""
        return Path(source.split("#")[0]).resolve().is_relative_to(self.root.resolve())

    # --- operations -------------------------------------------------------------------------------------

    def add(self, staging: Path) -> UploadResult:
        """Validate every staged file (budgeted), refuse id conflicts, then move them into the store.

        Raises:
            InvalidInputError: a file is malformed or over its parse budget (named by its upload name).
            ConflictError: a doc id already comes from another file (upload or indexed source).
        """
        files = sorted(p for p in staging.iterdir() if p.is_file())
        if not files:
            raise InvalidInputError("the upload holds no documents")
        parsed = {f.name: load_file_isolated(f, staging, self.budget, name=f.name) for f in files}
        with self._lock:
            owners: dict[str, str] = {}
            for name, rows in self._uploads().items():
                for row in rows:
                    owners[row["doc_id"]] = f"uploaded file {name}"
            manifest = index_store.read_manifest(self.settings.paths.index_dir)
            for doc_id, entry in (manifest.documents if manifest else {}).items():
                if not self.is_upload(entry.source):
                    owners[doc_id] = _public_source(entry.source)
            seen: dict[str, str] = {}
            for name, docs in parsed.items():
                for doc in docs:
                    owner = owners.get(doc.doc_id)
                    if owner is not None and owner != f"uploaded file {name}":
                        raise ConflictError(f"{name}: document id {doc.doc_id!r} already comes from {owner}; "
                                            "choose another id or delete that document first")
                    if doc.doc_id in seen:
                        raise ConflictError(f"document id {doc.doc_id!r} is in both {seen[doc.doc_id]} and {name}")
                    seen[doc.doc_id] = name
            for file in files:
                self._write_meta(file.name, parsed[file.name])
                os.replace(file, self.root / file.name)
        return UploadResult([f.name for f in files], sorted(seen))

    def list(self) -> list[StoredDocument]:
        """Indexed documents, then uploads that are not indexed yet."""
        manifest = index_store.read_manifest(self.settings.paths.index_dir)
        out: list[StoredDocument] = []
        for doc_id, entry in (manifest.documents if manifest else {}).items():
            out.append(StoredDocument(doc_id, entry.title, entry.source, entry.format, len(entry.chunk_ids),
                                      entry.updated_at, self.is_upload(entry.source)))
        indexed = {d.doc_id for d in out}
        for name, rows in self._uploads().items():
            for row in rows:
                if row["doc_id"] not in indexed:
                    out.append(StoredDocument(row["doc_id"], row["title"], str(self.root / name), row["format"], 0,
                                              row["updated_at"], True))
        return out

    def delete(self, doc_id: str) -> str:
        """Delete the uploaded file that holds ``doc_id``; returns its name.

        Raises:
            NotFoundError: no such document.
            ConflictError: the document is not an upload, or its file holds other documents too.
        """
        with self._lock:
            for name, rows in self._uploads().items():
                ids = [r["doc_id"] for r in rows]
                if doc_id not in ids:
                    continue
                if len(ids) > 1:
                    raise ConflictError(f"document {doc_id!r} is one of {len(ids)} documents in uploaded file {name}; "
                                        "upload that file again without it")
                (self.root / name).unlink()
                self._meta_path(name).unlink(missing_ok=True)
                return name
        manifest = index_store.read_manifest(self.settings.paths.index_dir)
        if manifest and doc_id in manifest.documents:
            raise ConflictError(f"document {doc_id!r} comes from {_public_source(manifest.documents[doc_id].source)}, not an "
                                "upload; remove it from that source and refresh the index")
        raise NotFoundError(f"document {doc_id!r} not found")
