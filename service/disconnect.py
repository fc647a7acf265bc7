"""Stop work for a client that hung up: await a coroutine unless the HTTP connection closes first.

A non-streaming chat holds a generation slot for its whole answer; if the client goes away, the slot must be
freed at the next decode step rather than after a full answer nobody reads. (Streams are cancelled by the
server closing the event generator.)
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from litestar import Request

from core.errors import TuneragError

T = TypeVar("T")


class ClientDisconnected(TuneragError):
    """The client closed the connection before the answer was ready (nginx's 499)."""

    status_code = 499


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """``await work``, cancelling it when an ``http.disconnect`` arrives first.

    Call it after the request body has been read: the next ASGI message is then the disconnect.

    Raises:
        ClientDisconnected: the client went away; ``work`` was cancelled.
    """
    task = asyncio.ensure_future(work)

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(disconnected())
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        raise
    finally:
        watcher.cancel()
    if task in done:
        return task.result()
    task.cancel()
    raise ClientDisconnected("the client disconnected before the answer was ready")
