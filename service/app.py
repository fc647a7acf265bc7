"""The Litestar application factory: lifespan, dependencies, middleware, routes and error mapping.

Models and the index are loaded once in the lifespan and kept on ``app.state``; handlers receive them
through dependency injection. Errors from every package derive from ``TuneragError`` and are mapped to
a JSON body here, once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from litestar import Litestar, Request, Response
from litestar.config.cors import CORSConfig
from litestar.datastructures import State
from litestar.di import Provide
from litestar.middleware.rate_limit import RateLimitConfig
from litestar.openapi import OpenAPIConfig
from litestar.plugins.prometheus import PrometheusConfig
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core.errors import TuneragError
from core.logs import configure_logging
from core.settings import Settings, load_settings
from service.auth import key_id, presented_key, rate_limit_identity
from service.backends import GenerationBackend, LocalBackend, OpenAIBackend
from service.chat import ChatService
from service.db import RequestLog, alchemy_config
from service.jobs import JobRunner
from service.routes.artifacts import ArtifactController
from service.routes.chat import ChatController
from service.routes.documents import DocumentController
from service.routes.evals import EvalController
from service.routes.openai import OpenAIController
from service.routes.ops import MetricsController, health, ready
from service.state import ServiceState

logger = logging.getLogger(__name__)
UNLOGGED = ("/health", "/metrics")


def _error(request: Request, exc: TuneragError) -> Response[dict[str, object]]:
    return Response({"status_code": exc.status_code, "error": type(exc).__name__, "detail": str(exc)},
                    status_code=exc.status_code)


def make_backend(settings: Settings) -> tuple[GenerationBackend, object]:
    """The configured generation backend and the generator's tokenizer (prompts are rendered locally)."""
    if settings.server.generation_backend == "openai":
        from transformers import AutoTokenizer

        from core.models import resolve_generator

        if not settings.server.openai_base_url:
            raise TuneragError("server.generation_backend=openai needs server.openai_base_url")
        resolved = resolve_generator(settings)
        tokenizer = AutoTokenizer.from_pretrained(resolved.location)
        backend = OpenAIBackend(settings.server.openai_base_url, settings.server.openai_api_key,
                                settings.models.generator, settings.generation)
        return backend, tokenizer
    from core.engine import GenerationEngine

    engine = GenerationEngine.from_settings(settings)
    return LocalBackend(engine, settings.generation), engine.tokenizer


def request_log_middleware(app: ASGIApp) -> ASGIApp:
    """Write one request-log row per API call (method, path, status, duration, hashed key)."""

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
        finally:
            sessions = getattr(scope["app"].state, "sessions", None)
            if sessions is not None:
                key = presented_key(Request(scope))
                try:
                    async with sessions() as session, session.begin():
                        session.add(RequestLog(method=scope["method"], path=scope["path"][:256], status_code=status[0],
                                               duration_ms=(time.perf_counter() - began) * 1000,
                                               api_key_id=key_id(key) if key else None))
                except Exception:  # the log must never break a request
                    logger.debug("request log write failed", exc_info=True)

    return middleware


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
        from advanced_alchemy.base import orm_registry

        async with db.get_engine().begin() as conn:
            await conn.run_sync(orm_registry.metadata.create_all)
        sessions: async_sessionmaker[AsyncSession] = db.create_session_maker()
        app.state.sessions = sessions
        runner = JobRunner(sessions)
        recovered = await runner.recover()
        if recovered:
            logger.warning("%d job(s) from a previous run were interrupted; marked failed (resumable)", recovered)
        if settings.server.api_keys:
            logger.info("API keys configured: %d", len(settings.server.api_keys))
        else:
            logger.warning("no API keys configured: authentication is OFF (set server.api_keys)")
        if backend is not None:
            active_backend, active_tokenizer = backend, tokenizer
        else:
            import anyio

            active_backend, active_tokenizer = await anyio.to_thread.run_sync(make_backend, settings)
        state = ServiceState(settings, active_backend, active_tokenizer)
        await state.start()
        app.state.service_state = state
        app.state.chat_service = ChatService(state)
        app.state.job_runner = runner
        try:
            yield
        finally:
            await runner.shutdown()
            await active_backend.close()
            await db.get_engine().dispose()

    def provide(name: str):
        def dependency(state: State) -> object:
            return state.get(name)

        dependency.__name__ = f"provide_{name}"
        return Provide(dependency, sync_to_thread=False)

    server = settings.server
    app = Litestar(
        route_handlers=[health, ready, MetricsController, ChatController, OpenAIController, DocumentController,
                        ArtifactController, EvalController],
        lifespan=[lifespan],
        dependencies={name: provide(name) for name in ("service_state", "chat_service", "job_runner", "sessions")},
        exception_handlers={TuneragError: _error},
        middleware=[
            request_log_middleware,
            RateLimitConfig(rate_limit=("minute", server.rate_limit_per_minute), exclude=["/health", "/ready", "/metrics"],
                            identifier_for_request=rate_limit_identity).middleware,
            PrometheusConfig(app_name="tunerag", prefix="tunerag", group_path=True, exclude=["/metrics"]).middleware,
        ],
        cors_config=CORSConfig(allow_origins=server.cors_origins) if server.cors_origins else None,
        request_max_body_size=server.max_request_bytes,
        openapi_config=OpenAPIConfig(title="tunerag", version="0.1.0",
                                     description="Support chat with fine-tuned retrieval and a LoRA-adapted generator."),
        state=State({"settings": settings}),
    )
    return app
