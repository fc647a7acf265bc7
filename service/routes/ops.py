"""Operations: liveness, readiness, drift monitoring and Prometheus metrics."""

from __future__ import annotations

from typing import Any

from litestar import Response, get
from litestar.di import NamedDependency
from litestar.exceptions import ServiceUnavailableException
from litestar.plugins.prometheus import PrometheusController

from service.auth import requires
from service.state import ServiceState


@get("/health", tags=["ops"], summary="Liveness: the process answers.")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@get("/ready", tags=["ops"], summary="Readiness: models and index are loaded.")
async def ready(service_state: NamedDependency[ServiceState | None]) -> Response[dict[str, Any]]:
    if service_state is None or service_state.retriever is None:
        return Response({"status": "starting"}, status_code=503)
    health = getattr(service_state.backend, "health", None)
    problem = await health() if health is not None else None
    return Response({
        "status": "ready" if problem is None else "unavailable",
        **({"problem": problem} if problem else {}),
        "replica": service_state.replica,
        "generator": service_state.settings.models.generator,
        "engine": getattr(service_state.backend, "name", type(service_state.backend).__name__),
        "index_version": service_state.index_version,
        "embedder": service_state.embedder_id,
        "active_adapter": service_state.active_adapter,
        "loaded_adapters": service_state.backend.loaded_adapters(),
        "verifier": service_state.verifier.id if service_state.verifier else None,
        "notes": service_state.notes,
    }, status_code=200 if problem is None else 503)


@get("/v1/monitoring", tags=["ops"], guards=[requires("admin")],
     summary="Drift of served queries against the artifacts' questions: tests, p-values, window (numbers only).")
async def monitoring(service_state: NamedDependency[ServiceState | None]) -> dict[str, Any]:
    if service_state is None or service_state.monitoring is None:
        raise ServiceUnavailableException("the service is starting")
    return service_state.monitoring.status()


class MetricsController(PrometheusController):
    path = "/metrics"
    include_in_schema = False
