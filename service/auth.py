"""API keys with scopes, as Litestar guards, and the per-key identity used for rate limiting and logs.

Keys come from ``server.api_keys`` (key -> scopes). A request presents one as ``Authorization: Bearer
<key>`` or ``X-API-Key: <key>``. No key or an unknown key: 401; a key without the route's scope: 403.
With no keys configured, auth is off (development) and a warning is logged at start-up.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.handlers import BaseRouteHandler

Scope = str


def presented_key(connection: ASGIConnection) -> str | None:
    header = connection.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip() or None
    return connection.headers.get("x-api-key") or None


def key_id(key: str) -> str:
    """A stable, non-secret identifier of a key for logs and rate-limit buckets."""
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def requires(scope: Scope) -> Callable[[ASGIConnection, BaseRouteHandler], None]:
    """A guard admitting requests whose key has ``scope`` (or any request when auth is off)."""

    def guard(connection: ASGIConnection, _: BaseRouteHandler) -> None:
        keys: dict[str, list[str]] = connection.app.state.settings.server.api_keys
        if not keys:
            return
        key = presented_key(connection)
        if key is None:
            raise NotAuthorizedException("missing API key: send 'Authorization: Bearer <key>' or 'X-API-Key'")
        if key not in keys:
            raise NotAuthorizedException("unknown API key")
        if scope not in keys[key]:
            raise PermissionDeniedException(f"this API key lacks the '{scope}' scope (it has: {', '.join(keys[key])})")

    guard.__name__ = f"requires_{scope}"
    return guard


def rate_limit_identity(request) -> str:  # litestar Request
    key = presented_key(request)
    if key is not None:
        return f"key:{key_id(key)}"
    client = request.client
    return f"ip:{client.host if client else 'unknown'}"
