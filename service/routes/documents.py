"""Documents and index maintenance: upload, list, delete, incremental refresh and full rebuild as jobs.

Handlers are thin: bodies are read here (within the byte limits, counted on the bytes actually received),
everything that touches files or parses a document runs in :class:`service.documents.DocumentService` in a
worker thread, and untrusted files are parsed in a budgeted child process. Chat keeps answering from the
current index version while a job builds the next one; the new version is swapped in when it is complete.
"""

from __future__ import annotations

import uuid
from typing import Any
from urllib.parse import unquote

import anyio
import msgspec
from litestar import Controller, Request, delete, get, post
from litestar.datastructures import FormMultiDict, UploadFile
from litestar.di import NamedDependency
from litestar.exceptions import ClientException
from litestar.exceptions.http_exceptions import RequestEntityTooLarge
from litestar.params import FromPath

from core.errors import InvalidInputError
from core.prompt import validate_doc_id
from service.auth import requires
from service.db import Job
from service.documents import DocumentService, StoredDocument, render_json_document, safe_file_name
from service.jobs import JobRunner
from service.schemas import DocumentsIn, JobDTO
from service.state import ServiceState


async def _read_limited(request: Request, limit: int) -> bytes:
    """The whole body, or 413 as soon as more than ``limit`` bytes have arrived (chunked bodies included)."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestEntityTooLarge(detail=f"request body exceeds the {limit}-byte limit (server.max_upload_bytes)")
        chunks.append(chunk)
    return b"".join(chunks)


async def _read_form(request: Request, max_files: int) -> FormMultiDict:
    """The multipart form; 413 naming ``server.max_upload_files`` when it has more parts than the app allows."""
    try:
        return await request.form()
    except ClientException as exc:
        if exc.detail == "Request Entity Too Large":  # Litestar's multipart part limit (set from max_upload_files)
            raise RequestEntityTooLarge(detail=f"the upload has more parts than the {max_files} files allowed in one "
                                               "request (server.max_upload_files)") from None
        raise


def _decode_documents(body: bytes) -> DocumentsIn:
    try:
        return msgspec.json.decode(body, type=DocumentsIn)
    except msgspec.ValidationError as exc:
        raise InvalidInputError(f"invalid documents payload: {exc}") from None
    except (msgspec.DecodeError, UnicodeDecodeError):
        raise InvalidInputError("request body is not valid UTF-8 JSON") from None


class DocumentController(Controller):
    """Mounted in a router whose ``request_max_body_size`` is ``server.max_upload_request_bytes``."""

    path = "/v1"
    tags = ["documents"]
    guards = [requires("admin")]

    @get("/documents", summary="Indexed documents, plus uploads not indexed yet.")
    async def list_documents(self, document_service: NamedDependency[DocumentService]) -> list[StoredDocument]:
        return await anyio.to_thread.run_sync(document_service.list)

    @post("/documents", summary="Upload files (multipart field 'files') or JSON documents; refreshes the index.",
          status_code=202)
    async def upload(self, request: Request, service_state: NamedDependency[ServiceState],
                     document_service: NamedDependency[DocumentService],
                     job_runner: NamedDependency[JobRunner]) -> dict[str, Any]:
        limits = service_state.settings.server
        content_type = request.headers.get("content-type", "").lower()
        staging = await anyio.to_thread.run_sync(document_service.new_staging)
        try:
            if content_type.startswith("multipart/form-data"):
                form = await _read_form(request, limits.max_upload_files)
                files = [v for _, v in form.multi_items() if isinstance(v, UploadFile)]
                if not files:
                    raise InvalidInputError("multipart upload has no files (send them as form field 'files')")
                if len(files) > limits.max_upload_files:
                    raise RequestEntityTooLarge(detail=f"{len(files)} files in one upload; at most "
                                                       f"{limits.max_upload_files} (server.max_upload_files)")
                refresh = str(form.get("refresh", "true")).lower() != "false"
                for upload in files:
                    name = safe_file_name(upload.filename or "")
                    data = await upload.read(limits.max_upload_bytes + 1)
                    if len(data) > limits.max_upload_bytes:
                        raise RequestEntityTooLarge(detail=f"{upload.filename}: file exceeds the "
                                                    f"{limits.max_upload_bytes}-byte limit (server.max_upload_bytes)")
                    await anyio.to_thread.run_sync(document_service.stage, staging, name, data)
            elif content_type.startswith("application/json"):
                body = await _read_limited(request, limits.max_upload_bytes)
                payload = await anyio.to_thread.run_sync(_decode_documents, body)
                refresh = payload.refresh
                for doc in payload.documents:
                    name, text = render_json_document(doc.doc_id, doc.text, doc.title, doc.format)
                    await anyio.to_thread.run_sync(document_service.stage, staging, name, text.encode("utf-8"))
            else:
                raise InvalidInputError(f"unsupported content type {content_type!r}; use multipart/form-data or "
                                        "application/json")
            added = await anyio.to_thread.run_sync(document_service.add, staging)
        finally:
            await anyio.to_thread.run_sync(document_service.discard_staging, staging)
        result: dict[str, Any] = {"accepted": added.accepted, "doc_ids": added.doc_ids}
        if refresh:
            job = await job_runner.submit("index.refresh", {"rebuild": False})
            result["job_id"] = str(job.id)
        return result

    @delete("/documents/{doc_id:path}", summary="Delete an uploaded document; refreshes the index.", status_code=202)
    async def delete_document(self, doc_id: FromPath[str], request: Request, service_state: NamedDependency[ServiceState],
                              document_service: NamedDependency[DocumentService],
                              job_runner: NamedDependency[JobRunner]) -> dict[str, Any]:
        # The router normalizes '/v1/documents//id/' to '.../id': the id is read from the path as sent, so
        # extra slashes name no document instead of another one.
        raw = request.scope.get("raw_path") or request.scope["path"].encode()
        sent = unquote(raw.decode("latin-1").split("?", 1)[0]).split("/v1/documents/", 1)[-1]
        doc_id = validate_doc_id(sent, "path")
        file_name = await anyio.to_thread.run_sync(document_service.delete, doc_id)
        job = await job_runner.submit("index.refresh", {"rebuild": False})
        return {"deleted": doc_id, "file": file_name, "job_id": str(job.id)}

    @post("/index/refresh", summary="Incremental reindex job (only new or changed documents are embedded).",
          status_code=202, return_dto=JobDTO)
    async def refresh(self, service_state: NamedDependency[ServiceState], job_runner: NamedDependency[JobRunner]) -> Job:
        return await job_runner.submit("index.refresh", {"rebuild": False})

    @post("/index/rebuild", summary="Full rebuild job (re-embeds every document).", status_code=202, return_dto=JobDTO)
    async def rebuild(self, service_state: NamedDependency[ServiceState], job_runner: NamedDependency[JobRunner]) -> Job:
        return await job_runner.submit("index.rebuild", {"rebuild": True})

    @get("/jobs/{job_id:uuid}", summary="A job's status, progress (with ETA) and result.", return_dto=JobDTO)
    async def job(self, job_id: FromPath[uuid.UUID], job_runner: NamedDependency[JobRunner]) -> Job:
        return await job_runner.get(job_id)

    @get("/jobs", summary="Recent jobs, newest first.", return_dto=JobDTO)
    async def jobs(self, job_runner: NamedDependency[JobRunner]) -> list[Job]:
        return await job_runner.list()
