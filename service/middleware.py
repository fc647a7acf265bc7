"""ASGI middleware of the API: request ids, origins, body content types, and the request log.

* Request ids: every request gets one (a sane ``X-Request-ID`` from the client is kept), it is echoed in
  the response header and named in the log line and the JSON body of an unexpected error.
* Origins: a browser sends multipart forms, ``text/plain`` and empty POSTs to any site without a CORS
  preflight, so a web page could upload documents or start jobs on a local instance with auth off. A
  state-changing request that a browser marks as coming from another origin (``Origin``, or
  ``Sec-Fetch-Site: cross-site/same-site``) is refused with 403 unless that origin is in
  ``server.cors_origins``; clients that are not browsers send neither header and are unaffected.
* Content types: a request with a body, or with a ``Content-Type`` at all, must say it is JSON (or
  multipart, for uploads).
* Request log: one row per API call (method, path, status, duration, hashed key of a *known* key). Calls
  without a known key (with auth on: all of them; with auth off: refused ones, 429) are stored at most
  ``server.request_log_unauthenticated_per_minute`` times a minute, so anonymous traffic cannot grow the
  table; rows older than ``server.request_log_retention_days`` are deleted at start-up and then hourly.
"""

from __future__ import annotations

import contextvars
import logging
import re
import time
import uuid
from datetime import datetime, timedelta, timezone
from urllib.parse import urlsplit

from litestar import Request
from litestar.exceptions import HTTPException
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from prometheus_client import Counter
from sqlalchemy import delete
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core.settings import ServerSettings
from service.auth import known_key, presented_key
from service.db import RequestLog

logger = logging.getLogger(__name__)

REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
UNLOGGED = ("/health", "/metrics")
_CLIENT_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_BODY_METHODS = {"POST", "PUT", "PATCH"}
_STATE_CHANGING = {"POST", "PUT", "PATCH", "DELETE"}
_REFUSED = {401, 403, 429}
LOG_DROPPED = Counter("tunerag_request_log_dropped_total", "Anonymous calls not written to the request log (over budget)")
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


def _origin_refusal(scope: Scope, allowed: set[str]) -> str | None:
    """Why a browser's state-changing request comes from a foreign origin, or None when it does not."""
    origin = _header(scope, b"origin")
    if origin is not None:
        origin = origin.strip().rstrip("/")
        if origin.lower() in allowed:
            return None
        parts = urlsplit(origin)
        host = (_header(scope, b"host") or "").strip().lower()
        if origin != "null" and parts.scheme in ("http", "https") and parts.netloc.lower() == host and host:
            return None
        return f"Origin {origin[:100]!r} is not this server"
    site = (_header(scope, b"sec-fetch-site") or "").strip().lower()
    if site in ("cross-site", "same-site"):
        return f"the browser marks it {site} (Sec-Fetch-Site)"
    return None


def origin_middleware(app: ASGIApp) -> ASGIApp:
    """403 for a state-changing request that a browser sent from another origin (see the module docstring)."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in _STATE_CHANGING:
            server: ServerSettings = scope["app"].state.settings.server
            reason = _origin_refusal(scope, {o.rstrip("/").lower() for o in server.cors_origins})
            if reason is not None:
                raise HTTPException(status_code=403, detail=f"cross-origin request refused: {reason}; add the origin "
                                                            "to server.cors_origins to allow it")
        await app(scope, receive, send)

    return middleware


def content_type_middleware(app: ASGIApp) -> ASGIApp:
    """Answer 415 to a body (or a declared content type) that is neither JSON nor (on upload routes) multipart."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        declared = _header(scope, b"content-type")
        if scope["type"] == "http" and scope["method"] in _BODY_METHODS and (_has_body(scope) or (declared or "").strip()):
            media_type = (declared or "").split(";")[0].strip().lower()
            allowed = (_JSON, _MULTIPART) if scope["path"].rstrip("/") in UPLOAD_PATHS else (_JSON,)
            if media_type not in allowed:
                raise HTTPException(status_code=415, detail=f"unsupported content type {media_type or 'none'!r}; "
                                                            f"send {' or '.join(allowed)}")
        await app(scope, receive, send)

    return middleware


class RequestLogBudget:
    """How many anonymous calls may still be logged this minute, and when old rows are due to go."""

    def __init__(self, per_minute: int, retention_days: float) -> None:
        self.per_minute, self.retention = per_minute, timedelta(days=retention_days)
        self._window, self._used = -1, 0
        self._next_prune = 0.0

    def admit(self, status: int, key: str | None, auth_on: bool) -> bool:
        """Whether to store this call's row: always for a known key; for anything else (with auth on, every call
        without a known key; with auth off, refused calls) while this minute's budget lasts."""
        if key is not None or (status not in _REFUSED and not auth_on):
            return True
        window = int(time.monotonic() // 60)
        if window != self._window:
            self._window, self._used = window, 0
        if self._used >= self.per_minute:
            LOG_DROPPED.inc()
            return False
        self._used += 1
        return True

    def prune_due(self) -> bool:
        return time.monotonic() >= self._next_prune

    async def prune(self, sessions: async_sessionmaker[AsyncSession]) -> int:
        """Delete rows older than the retention (the next prune is due in an hour); returns how many."""
        self._next_prune = time.monotonic() + 3600
        cutoff = datetime.now(timezone.utc) - self.retention
        async with sessions() as session, session.begin():
            result = await session.execute(delete(RequestLog).where(RequestLog.created_at < cutoff))
        return int(result.rowcount or 0)


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
            state = scope["app"].state
            sessions = getattr(state, "sessions", None)
            budget: RequestLogBudget | None = getattr(state, "request_log_budget", None)
            if sessions is not None and budget is not None:
                request = Request(scope)
                key = known_key(request, presented_key(request))
                try:
                    if budget.admit(status[0], key, bool(state.settings.server.api_keys)):
                        async with sessions() as session, session.begin():
                            session.add(RequestLog(method=scope["method"], path=scope["path"][:256],
                                                   status_code=status[0], api_key_id=key,
                                                   duration_ms=(time.perf_counter() - began) * 1000))
                    if budget.prune_due():
                        await budget.prune(sessions)
                except Exception:  # the log must never break a request
                    logger.debug("request log write failed", exc_info=True)

    return middleware
