"""The Litestar application factory: lifespan, dependencies, middleware, routes and error mapping.

Models and the index are loaded once in the lifespan and kept on ``app.state``; handlers receive them
through dependency injection. Errors from every package derive from ``TuneragError`` and are mapped to
a JSON body here, once.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from advanced_alchemy.extensions.litestar import SQLAlchemyPlugin
from litestar import Litestar, Request, Response, Router
from litestar.config.cors import CORSConfig
from litestar.datastructures import State
from litestar.exceptions import HTTPException
from litestar.middleware.rate_limit import RateLimitConfig
from litestar.openapi import OpenAPIConfig
from litestar.plugins.prometheus import PrometheusConfig
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core.errors import TuneragError
from core.logs import configure_logging
from core.settings import Settings, load_settings
from inference.backends import GenerationBackend
from inference.loader import LoadedEngine, decoding_info, load_engine
from service.auth import rate_limit_identity
from service.chat import ChatService
from service.db import alchemy_config, migrate
from service.dependencies import DEPENDENCIES
from service.documents import DocumentService
from service.job_kinds import job_kinds
from service.jobs import JobRunner, replica_name
from service.middleware import (
    REQUEST_ID,
    RequestLogBudget,
    content_type_middleware,
    origin_middleware,
    request_id_middleware,
    request_log_middleware,
)
from service.monitoring import MonitorService
from service.routes.artifacts import ArtifactController
from service.routes.chat import ChatController
from service.routes.documents import DocumentController
from service.routes.evals import EvalController
from service.routes.openai import OpenAIController
from service.routes.ops import MetricsController, health, monitoring, ready
from service.state import ServiceState

logger = logging.getLogger(__name__)


def _error(request: Request, exc: TuneragError) -> Response[dict[str, object]]:
    return Response({"status_code": exc.status_code, "error": type(exc).__name__, "detail": str(exc)},
                    status_code=exc.status_code)


def _http_error(request: Request, exc: HTTPException) -> Response[dict[str, object]]:
    body: dict[str, object] = {"status_code": exc.status_code, "error": type(exc).__name__, "detail": exc.detail}
    if exc.extra:
        body["extra"] = exc.extra
    if exc.status_code >= 500:
        logger.error("request %s %s failed (request id %s): %s", request.method, request.url.path, REQUEST_ID.get(),
                     exc.detail)
    return Response(body, status_code=exc.status_code, headers=exc.headers)


def _unexpected(request: Request, exc: Exception) -> Response[dict[str, object]]:
    """Any other exception: logged with its traceback and request id; the client sees no paths or internals."""
    if isinstance(exc, UnicodeDecodeError):  # a body that is not UTF-8, found while decoding it
        return _http_error(request, HTTPException(status_code=400, detail="request body is not valid UTF-8"))
    if isinstance(exc, RecursionError):  # the JSON decoder's nesting limit, hit while decoding the body
        return _http_error(request, HTTPException(
            status_code=400, detail=f"request body nests too deeply: JSON is decoded to at most ~{sys.getrecursionlimit()} "
                                    "levels of arrays and objects, and no field of this API needs more than 3"))
    request_id = REQUEST_ID.get()
    logger.exception("unexpected error in %s %s (request id %s)", request.method, request.url.path, request_id)
    return Response({"status_code": 500, "error": "InternalServerError",
                     "detail": f"internal error; quote request id {request_id} when reporting it",
                     "request_id": request_id}, status_code=500)


def make_backend(settings: Settings) -> LoadedEngine:
    """The configured generation backend, the tokenizer prompts are rendered with, and what it runs."""
    from inference.backends import OCCUPANCY

    return load_engine(settings, on_step=OCCUPANCY.observe)


def create_app(settings: Settings | None = None, *, backend: GenerationBackend | None = None,
               tokenizer: object | None = None) -> Litestar:
    """Build the API for ``settings`` (default: :func:`core.settings.load_settings`).

    ``backend``/``tokenizer`` override the configured generation backend (tests, benchmarks).
    """
    settings = settings or load_settings()
    configure_logging(settings.log_level)
    db = alchemy_config(settings)

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        import anyio

        before = await anyio.to_thread.run_sync(migrate, settings)
        logger.info("database schema: revision %s -> head", before or "none")
        # Work outside a request (jobs, the request log, a stream's final turn) opens its own sessions.
        sessions: async_sessionmaker[AsyncSession] = db.create_session_maker()
        app.state.sessions = sessions
        budget = RequestLogBudget(settings.server.request_log_unauthenticated_per_minute,
                                  settings.server.request_log_retention_days)
        pruned = await budget.prune(sessions)
        if pruned:
            logger.info("request log: %d row(s) older than %s days deleted", pruned, settings.server.request_log_retention_days)
        app.state.request_log_budget = budget
        if settings.server.api_keys:
            logger.info("API keys configured: %d", len(settings.server.api_keys))
        else:
            logger.warning("no API keys configured: authentication is OFF (set server.api_keys)")
        if backend is not None:
            loaded = LoadedEngine(backend, tokenizer, {"engine": backend.name, "decoding": decoding_info(settings)})
        else:
            loaded = await anyio.to_thread.run_sync(make_backend, settings)
        active_backend = loaded.backend
        state = ServiceState(settings, active_backend, loaded.tokenizer, engine_info=loaded.info,
                             replica=replica_name(settings.server), monitoring=MonitorService(settings))
        await state.start()
        runner = JobRunner(sessions, job_kinds(state), settings.server, owner=state.replica)
        app.state.service_state = state
        app.state.chat_service = ChatService(state)
        app.state.job_runner = runner
        app.state.document_service = DocumentService(settings)
        runner.start()
        watcher = asyncio.create_task(state.watch(), name="pointer-watcher")
        logger.info("replica %s: running jobs, following the shared pointers every %.1f s", runner.owner,
                    settings.server.watch_interval_s)
        try:
            yield
        finally:
            watcher.cancel()
            await runner.shutdown()
            await asyncio.gather(watcher, return_exceptions=True)
            state.monitoring.close()
            await active_backend.close()

    server = settings.server
    # Uploads get their own body limit (counted on the bytes received, chunked bodies included).
    uploads = Router(path="/", route_handlers=[DocumentController], request_max_body_size=server.max_upload_request_bytes)
    app = Litestar(
        route_handlers=[health, ready, monitoring, MetricsController, ChatController, OpenAIController, uploads,
                        ArtifactController, EvalController],
        lifespan=[lifespan],
        dependencies=DEPENDENCIES,
        plugins=[SQLAlchemyPlugin(config=db)],
        exception_handlers={TuneragError: _error, HTTPException: _http_error, Exception: _unexpected},
        middleware=[
            request_id_middleware,
            request_log_middleware,
            origin_middleware,
            RateLimitConfig(rate_limit=("minute", server.rate_limit_per_minute), exclude=["/health", "/ready", "/metrics"],
                            identifier_for_request=rate_limit_identity).middleware,
            content_type_middleware,
            PrometheusConfig(app_name="tunerag", prefix="tunerag", group_path=True, exclude=["/metrics"]).middleware,
        ],
        cors_config=CORSConfig(allow_origins=server.cors_origins) if server.cors_origins else None,
        request_max_body_size=server.max_request_bytes,
        # A few parts beyond the file limit for the form's other fields; the upload route names the limit.
        multipart_form_part_limit=server.max_upload_files + 8,
        openapi_config=OpenAPIConfig(title="tunerag", version="0.1.0",
                                     description="Support chat with fine-tuned retrieval and a LoRA-adapted generator."),
        state=State({"settings": settings}),
    )
    return app
