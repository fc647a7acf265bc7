"""The Litestar application factory: routes, state and error mapping for the tunerag API."""

from __future__ import annotations

from litestar import Litestar, Request, Response, get
from litestar.openapi import OpenAPIConfig

from core.errors import TuneragError
from core.settings import Settings, load_settings


@get("/health", tags=["ops"], summary="Liveness: the process answers.")
async def health() -> dict[str, str]:
    return {"status": "ok"}


def _tunerag_error(request: Request, exc: TuneragError) -> Response[dict[str, str]]:
    return Response({"error": type(exc).__name__, "detail": str(exc)}, status_code=exc.status_code)


def create_app(settings: Settings | None = None) -> Litestar:
    """Build the API for ``settings`` (default: :func:`core.settings.load_settings`)."""
    settings = settings or load_settings()
    app = Litestar(
        route_handlers=[health],
        exception_handlers={TuneragError: _tunerag_error},
        openapi_config=OpenAPIConfig(title="tunerag", version="0.1.0"),
    )
    app.state.settings = settings
    return app
