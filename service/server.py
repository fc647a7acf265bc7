"""Running the API under uvicorn: the one place its server options are set (the CLI and tests call it).

* Forwarded headers (``X-Forwarded-For``/``-Proto``) are believed only from ``server.trusted_proxies``;
  with none (the default), the client is the connecting address, so a forged header buys no new
  rate-limit bucket. uvicorn's own default trusts 127.0.0.1, which any local client can use.
* SIGTERM/SIGINT: open requests get ``server.shutdown_timeout_s`` to finish, then are cancelled, the lifespan
  closes the jobs and the generator, and the process exits even if a worker thread is still busy in native
  code (an interrupted job is marked resumable at the next start; index versions are swapped atomically, so
  nothing stored is left half-written).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time

from core.settings import Settings

logger = logging.getLogger(__name__)
EXIT_GRACE_S = 2.0  # after the lifespan has shut down: how long busy worker threads may still take


def uvicorn_config(settings: Settings, app: object, *, host: str | None = None, port: int | None = None) -> object:
    """The ``uvicorn.Config`` for ``app`` under ``settings`` (host/port override ``server.host``/``port``)."""
    import uvicorn

    server = settings.server
    return uvicorn.Config(
        app, host=host or server.host, port=port or server.port, log_level=settings.log_level.lower(),
        proxy_headers=bool(server.trusted_proxies),
        forwarded_allow_ips=list(server.trusted_proxies) or None,
        timeout_graceful_shutdown=max(1, round(server.shutdown_timeout_s)),
    )


def run_server(settings: Settings, *, host: str | None = None, port: int | None = None) -> None:
    """Serve the API until a signal; then exit within the shutdown deadline."""
    import uvicorn

    from service.app import create_app

    server = uvicorn.Server(uvicorn_config(settings, create_app(settings), host=host, port=port))
    server.run()
    deadline = time.monotonic() + EXIT_GRACE_S  # idle worker threads leave at once; a busy one may not
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join(max(0.0, deadline - time.monotonic()))
    busy = [t.name for t in threading.enumerate() if t is not threading.current_thread() and not t.daemon and t.is_alive()]
    if busy:
        # Python would wait for them at exit (a model call, an index build): the deadline wins.
        logger.warning("exiting with %d worker thread(s) still busy: %s", len(busy), ", ".join(sorted(set(busy))))
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0 if server.started else 1)
    if not server.started:
        sys.exit(1)
