from __future__ import annotations

from litestar.testing import TestClient

from core.settings import Settings
from service.app import create_app


def test_health_answers(settings: Settings) -> None:
    with TestClient(app=create_app(settings)) as client:
        response = client.get("/health")
        assert response.status_code == 200
        assert response.json() == {"status": "ok"}


def test_openapi_schema_is_served(settings: Settings) -> None:
    with TestClient(app=create_app(settings)) as client:
        schema = client.get("/schema/openapi.json").json()
        assert "/health" in schema["paths"]
