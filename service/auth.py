"""API keys with scopes, as Litestar guards, and the per-key identity used for rate limiting and logs.

Keys come from ``server.api_keys`` (key -> scopes). A request presents one as ``Authorization: Bearer
<key>`` or ``X-API-Key: <key>``. No key or an unknown key: 401; a key without the route's scope: 403.
With no keys configured, auth is off (development) and a warning is logged at start-up.

Keys are compared in constant time against every configured key, so response timing does not leak a
key's prefix. Rate limits count per known key; anything else (no key, an unknown key) counts per client
address, so inventing keys buys no extra requests.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from typing import Any

from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.handlers import BaseRouteHandler

Scope = str


def presented_key(connection: ASGIConnection) -> str | None:
    """The key of ``Authorization: Bearer <key>``, else of ``X-API-Key``; an empty one counts as absent."""
    header = connection.headers.get("authorization", "")
    if header.lower().startswith("bearer ") and header[7:].strip():
        return header[7:].strip()
    return connection.headers.get("x-api-key", "").strip() or None


def key_id(key: str) -> str:
    """A stable, non-secret identifier of a key for logs and rate-limit buckets."""
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def match_key(key: str | None, keys: dict[str, list[str]]) -> list[str] | None:
    """The scopes of ``key`` when it is configured, else None; compares against every key in constant time."""
    if key is None:
        return None
    found: list[str] | None = None
    presented = key.encode()
    for candidate, scopes in keys.items():
        if hmac.compare_digest(presented, candidate.encode()):
            found = scopes
    return found


def known_key(connection: ASGIConnection, key: str | None) -> str | None:
    """The non-secret id of ``key`` if it is a configured key (for logs and ownership), else None."""
    keys: dict[str, list[str]] = connection.app.state.settings.server.api_keys
    return key_id(key) if key is not None and match_key(key, keys) is not None else None


def is_admin(connection: ASGIConnection) -> bool:
    """Whether the request may act on every key's data (auth off, or a key with the admin scope)."""
    keys: dict[str, list[str]] = connection.app.state.settings.server.api_keys
    return not keys or "admin" in (match_key(presented_key(connection), keys) or [])


def requires(scope: Scope) -> Callable[[ASGIConnection, BaseRouteHandler], None]:
    """A guard admitting requests whose key has ``scope`` (or any request when auth is off)."""

    def guard(connection: ASGIConnection, _: BaseRouteHandler) -> None:
        keys: dict[str, list[str]] = connection.app.state.settings.server.api_keys
        if not keys:
            return
        key = presented_key(connection)
        if key is None:
            raise NotAuthorizedException("missing API key: send 'Authorization: Bearer <key>' or 'X-API-Key'")
        scopes = match_key(key, keys)
        if scopes is None:
            raise NotAuthorizedException("unknown API key")
        if scope not in scopes:
            raise PermissionDeniedException(f"this API key lacks the '{scope}' scope")

    guard.__name__ = f"requires_{scope}"
    return guard


def rate_limit_identity(request: Any) -> str:  # a litestar Request
    known = known_key(request, presented_key(request))
    if known is not None:
        return f"key:{known}"
    client = request.client
    return f"ip:{client.host if client else 'unknown'}"
