"""Documents and index maintenance: upload, list, delete, incremental refresh and full rebuild as jobs.

Uploaded files are validated with the same loaders as the indexer before anything is stored, so a bad
file is a 4xx naming it and the knowledge base and index are untouched. Chat keeps answering from the
current index version while a job builds the next one; the new version is swapped in when it is complete.
"""

from __future__ import annotations

import os
import re
import tempfile
import uuid
from pathlib import Path
from typing import Any

import msgspec
from litestar import Controller, Request, delete, get, post
from litestar.datastructures import UploadFile
from litestar.di import NamedDependency
from litestar.exceptions import HTTPException
from litestar.params import FromPath

from core import artifacts
from core.errors import ConflictError, InvalidInputError, NotFoundError
from retrieval import index_store
from retrieval.indexer import update_index
from retrieval.loaders import SUFFIXES, load_documents, load_file
from service.auth import requires
from service.db import Job
from service.jobs import JobRunner
from service.schemas import DocumentOut, DocumentsIn, JobDTO
from service.state import ServiceState

_SAFE_NAME = re.compile(r"[^A-Za-z0-9_.-]+")
_FORMAT_SUFFIX = {"markdown": ".md", "text": ".txt", "html": ".html"}


class PayloadTooLarge(HTTPException):
    status_code = 413


def start_index_job(runner: JobRunner, state: ServiceState, kind: str, *, rebuild: bool,
                    embedder_location: str | None = None, params: dict[str, Any] | None = None,
                    after: Any = None):
    """Submit a reindex job on the ``index`` lane; on success the new version is swapped in."""
    settings = state.settings

    def work(progress) -> dict[str, Any]:
        location = embedder_location or artifacts.active_embedder_location(settings)
        report = update_index(settings, rebuild=rebuild, embedder_location=location, on_progress=progress)
        return {k: getattr(report, k) for k in report.__dataclass_fields__}

    async def swap(_: dict[str, Any]) -> None:
        state.open_current_index()
        if after is not None:
            await after()

    return runner.submit(kind, params or {"rebuild": rebuild}, work, lane="index", on_success=swap)


def _is_upload(settings, source: str) -> bool:
    """Whether a document source (``path`` or ``path#Lnn``) lies in the API's upload folder."""
    return Path(source.split("#")[0]).resolve().is_relative_to(settings.paths.documents_dir.resolve())


class DocumentController(Controller):
    path = "/v1"
    tags = ["documents"]
    guards = [requires("admin")]

    @get("/documents", summary="Indexed documents, plus uploads not indexed yet.")
    async def list_documents(self, service_state: NamedDependency[ServiceState]) -> list[DocumentOut]:
        settings = service_state.settings
        manifest = index_store.read_manifest(settings.paths.index_dir)
        out = []
        indexed = set()
        for doc_id, entry in (manifest.documents if manifest else {}).items():
            indexed.add(doc_id)
            out.append(DocumentOut(doc_id, entry.title, entry.source, entry.format, len(entry.chunk_ids),
                                   entry.updated_at, _is_upload(settings, entry.source)))
        if settings.paths.documents_dir.is_dir():
            for doc in load_documents([settings.paths.documents_dir]):
                if doc.doc_id not in indexed:
                    out.append(DocumentOut(doc.doc_id, doc.title, doc.source, doc.format, 0, doc.updated_at, True))
        return out

    # Uploads have their own limit (server.max_upload_bytes per file), checked below instead of the app-wide one.
    @post("/documents", summary="Upload files (multipart) or JSON documents; refreshes the index.", status_code=202,
          request_max_body_size=None)
    async def upload(self, request: Request, service_state: NamedDependency[ServiceState], job_runner: NamedDependency[JobRunner]) -> dict[str, Any]:
        settings = service_state.settings
        content_type = request.headers.get("content-type", "")
        declared = int(request.headers.get("content-length") or 0)
        if declared > 20 * settings.server.max_upload_bytes:
            raise PayloadTooLarge(detail=f"request body of {declared} bytes exceeds the upload limit")
        if content_type.startswith("application/json") and declared > settings.server.max_upload_bytes:
            raise PayloadTooLarge(detail=f"JSON body exceeds the {settings.server.max_upload_bytes}-byte limit")
        staging = Path(tempfile.mkdtemp(prefix=".upload-", dir=self._documents_dir(settings)))
        try:
            refresh = True
            if content_type.startswith("multipart/form-data"):
                form = await request.form()
                files = [v for _, v in form.multi_items() if isinstance(v, UploadFile)]
                if not files:
                    raise InvalidInputError("multipart upload has no files (send them as form field 'files')")
                refresh = str(form.get("refresh", "true")).lower() != "false"
                for upload in files:
                    await self._stage_file(upload, staging, settings.server.max_upload_bytes)
            elif content_type.startswith("application/json"):
                try:
                    payload = msgspec.json.decode(await request.body(), type=DocumentsIn)
                except msgspec.ValidationError as exc:
                    raise InvalidInputError(f"invalid documents payload: {exc}") from None
                except msgspec.DecodeError:
                    raise InvalidInputError("request body is not valid JSON") from None
                refresh = payload.refresh
                for doc in payload.documents:
                    self._stage_json(doc, staging)
            else:
                raise InvalidInputError(f"unsupported content type {content_type!r}; use multipart/form-data or application/json")
            staged = load_documents([staging])  # validates every file; raises naming the bad one
            self._check_conflicts(service_state, staged, staging)
            accepted = []
            for file in sorted(p for p in staging.iterdir() if p.is_file()):
                os.replace(file, settings.paths.documents_dir / file.name)
                accepted.append(file.name)
        finally:
            for leftover in staging.iterdir():
                leftover.unlink()
            staging.rmdir()
        result: dict[str, Any] = {"accepted": accepted, "doc_ids": sorted(d.doc_id for d in staged)}
        if refresh:
            job = await start_index_job(job_runner, service_state, "index.refresh", rebuild=False)
            result["job_id"] = str(job.id)
        return result

    @staticmethod
    def _documents_dir(settings) -> Path:
        settings.paths.documents_dir.mkdir(parents=True, exist_ok=True)
        return settings.paths.documents_dir

    @staticmethod
    async def _stage_file(upload: UploadFile, staging: Path, limit: int) -> None:
        name = _SAFE_NAME.sub("-", Path(upload.filename or "").name).strip("-.")
        if not name or Path(name).suffix.lower() not in SUFFIXES:
            raise InvalidInputError(f"{upload.filename!r}: unsupported file type; supported: {sorted(SUFFIXES)}")
        data = await upload.read(limit + 1)
        if len(data) > limit:
            raise PayloadTooLarge(detail=f"{upload.filename}: file exceeds the {limit}-byte upload limit")
        (staging / name).write_bytes(data)
        load_file(staging / name, staging)  # early, per-file validation with the file's own name

    @staticmethod
    def _stage_json(doc, staging: Path) -> None:
        path = staging / f"{doc.doc_id}{_FORMAT_SUFFIX[doc.format]}"
        if path.exists():
            raise InvalidInputError(f"document id {doc.doc_id!r} appears twice in the request")
        text = doc.text
        if doc.format == "markdown":
            title = doc.title or doc.doc_id
            text = f"---\nid: {doc.doc_id}\ntitle: {title}\n---\n\n{text}"
        path.write_text(text, encoding="utf-8")

    @staticmethod
    def _check_conflicts(state: ServiceState, staged, staging: Path) -> None:
        manifest = index_store.read_manifest(state.settings.paths.index_dir)
        for doc in staged:
            entry = manifest.documents.get(doc.doc_id) if manifest else None
            if entry is not None and not _is_upload(state.settings, entry.source):
                raise ConflictError(f"document id {doc.doc_id!r} already comes from {entry.source}; choose another id")
            for existing in state.settings.paths.documents_dir.glob(f"{Path(doc.source).stem}.*"):
                if existing.is_file() and existing.name != Path(doc.source).name:
                    raise ConflictError(f"document {doc.doc_id!r} was uploaded as {existing.name}; delete it first")

    @delete("/documents/{doc_id:str}", summary="Delete an uploaded document; refreshes the index.", status_code=202)
    async def delete_document(self, doc_id: FromPath[str], service_state: NamedDependency[ServiceState], job_runner: NamedDependency[JobRunner]) -> dict[str, Any]:
        settings = service_state.settings
        uploaded = [p for p in settings.paths.documents_dir.glob("*") if p.is_file() and p.stem == doc_id] \
            if settings.paths.documents_dir.is_dir() else []
        if not uploaded:
            manifest = index_store.read_manifest(settings.paths.index_dir)
            if manifest and doc_id in manifest.documents:
                raise ConflictError(f"document {doc_id!r} comes from {manifest.documents[doc_id].source}, not an "
                                    "upload; remove it from that source and refresh the index")
            raise NotFoundError(f"document {doc_id!r} not found")
        for path in uploaded:
            path.unlink()
        job = await start_index_job(job_runner, service_state, "index.refresh", rebuild=False)
        return {"deleted": doc_id, "job_id": str(job.id)}

    @post("/index/refresh", summary="Incremental reindex job (only new or changed documents are embedded).",
          status_code=202, return_dto=JobDTO)
    async def refresh(self, service_state: NamedDependency[ServiceState], job_runner: NamedDependency[JobRunner]) -> Job:
        return await start_index_job(job_runner, service_state, "index.refresh", rebuild=False)

    @post("/index/rebuild", summary="Full rebuild job (re-embeds every document).", status_code=202, return_dto=JobDTO)
    async def rebuild(self, service_state: NamedDependency[ServiceState], job_runner: NamedDependency[JobRunner]) -> Job:
        return await start_index_job(job_runner, service_state, "index.rebuild", rebuild=True)

    @get("/jobs/{job_id:uuid}", summary="A job's status, progress (with ETA) and result.", return_dto=JobDTO)
    async def job(self, job_id: FromPath[uuid.UUID], job_runner: NamedDependency[JobRunner]) -> Job:
        return await job_runner.get(job_id)

    @get("/jobs", summary="Recent jobs, newest first.", return_dto=JobDTO)
    async def jobs(self, job_runner: NamedDependency[JobRunner]) -> list[Job]:
        return await job_runner.list()
