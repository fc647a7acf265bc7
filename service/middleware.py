"""ASGI middleware of the API: request ids, body content types, and the request log.

* Request ids: every request gets one (a sane ``X-Request-ID`` from the client is kept), it is echoed in
  the response header and named in the log line and the JSON body of an unexpected error.
* Content types: a request with a body must say it is JSON (or multipart, for uploads). A web page can post
  ``text/plain`` cross-origin without a CORS preflight; refusing it closes that door on a local instance.
* Request log: one row per API call (method, path, status, duration, hashed key of a *known* key).
"""

from __future__ import annotations

import contextvars
import logging
import re
import time
import uuid

from litestar import Request
from litestar.exceptions import HTTPException
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from service.auth import known_key, presented_key
from service.db import RequestLog

logger = logging.getLogger(__name__)

REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
UNLOGGED = ("/health", "/metrics")
_CLIENT_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_BODY_METHODS = {"POST", "PUT", "PATCH"}
_JSON = "application/json"
_MULTIPART = "multipart/form-data"
UPLOAD_PATHS = ("/v1/documents",)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def request_id_middleware(app: ASGIApp) -> ASGIApp:
    """Assign the request id (kept in a context variable for the error handler) and add it to the response."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        offered = _header(scope, b"x-request-id")
        request_id = offered if offered and _CLIENT_ID.match(offered) else uuid.uuid4().hex
        token = REQUEST_ID.set(request_id)

        async def with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await app(scope, receive, with_id)
        finally:
            REQUEST_ID.reset(token)

    return middleware


def _has_body(scope: Scope) -> bool:
    length = _header(scope, b"content-length")
    return _header(scope, b"transfer-encoding") is not None or (length is not None and length.strip() not in ("", "0"))


def content_type_middleware(app: ASGIApp) -> ASGIApp:
    """Answer 415 to a body that is neither JSON nor (on upload routes) multipart."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in _BODY_METHODS and _has_body(scope):
            media_type = (_header(scope, b"content-type") or "").split(";")[0].strip().lower()
            allowed = (_JSON, _MULTIPART) if scope["path"].rstrip("/") in UPLOAD_PATHS else (_JSON,)
            if media_type not in allowed:
                raise HTTPException(status_code=415, detail=f"unsupported content type {media_type or 'none'!r}; "
                                                            f"send {' or '.join(allowed)}")
        await app(scope, receive, send)

    return middleware


def request_log_middleware(app: ASGIApp) -> ASGIApp:
    """Write one request-log row per API call; an error answered by an exception handler keeps its status."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(UNLOGGED):
            await app(scope, receive, send)
            return
        began = time.perf_counter()
        status = [500]

        async def capture(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await app(scope, receive, capture)
        except HTTPException as exc:  # raised by later middleware (rate limit, 415): answered further out
            status[0] = exc.status_code
            raise
        finally:
            sessions = getattr(scope["app"].state, "sessions", None)
            if sessions is not None:
                request = Request(scope)
                key = known_key(request, presented_key(request))
                try:
                    async with sessions() as session, session.begin():
                        session.add(RequestLog(method=scope["method"], path=scope["path"][:256], status_code=status[0],
                                               duration_ms=(time.perf_counter() - began) * 1000, api_key_id=key))
                except Exception:  # the log must never break a request
                    logger.debug("request log write failed", exc_info=True)

    return middleware
