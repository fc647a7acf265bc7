"""Adapter, embedder and verifier versions: list with manifests, activate (hot swap, no restart)."""

from __future__ import annotations

from typing import Any

from litestar import Controller, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath

from core import artifacts
from service.auth import requires
from service.db import Job
from service.jobs import JobRunner
from service.schemas import ArtifactOut, JobDTO
from service.state import ServiceState

# Manifest keys too large for a listing (full loss curves, training logs).
_BULKY = ("loss_curve", "log_history")


def _out(artifact: artifacts.Artifact, active: str | None, loaded: list[str], full: bool) -> ArtifactOut:
    manifest = artifact.manifest if full else {k: v for k, v in artifact.manifest.items() if k not in _BULKY}
    return ArtifactOut(artifact.id, artifact.kind, artifact.id == active, artifact.id in loaded, manifest)


class ArtifactController(Controller):
    path = "/v1"
    tags = ["artifacts"]
    guards = [requires("admin")]

    @get("/adapters", summary="LoRA adapter versions with their manifests.")
    async def adapters(self, service_state: NamedDependency[ServiceState]) -> list[ArtifactOut]:
        loaded = service_state.backend.loaded_adapters()
        return [_out(a, service_state.active_adapter, loaded, False)
                for a in artifacts.list_artifacts(service_state.settings, "adapter")]

    @get("/adapters/{adapter_id:str}", summary="One adapter with its full manifest.")
    async def adapter(self, adapter_id: FromPath[str], service_state: NamedDependency[ServiceState]) -> ArtifactOut:
        artifact = artifacts.get_artifact(service_state.settings, "adapter", adapter_id)
        return _out(artifact, service_state.active_adapter, service_state.backend.loaded_adapters(), True)

    @post("/adapters/{adapter_id:str}/activate", summary="Switch the serving adapter (use 'base' for none).",
          status_code=200)
    async def activate_adapter(self, adapter_id: FromPath[str], service_state: NamedDependency[ServiceState]) -> dict[str, Any]:
        await service_state.activate_adapter(None if adapter_id == "base" else adapter_id)
        return {"active_adapter": service_state.active_adapter}

    @get("/embedders", summary="Fine-tuned embedder versions with their manifests.")
    async def embedders(self, service_state: NamedDependency[ServiceState]) -> list[ArtifactOut]:
        active = artifacts.active_id(service_state.settings, "embedder")
        return [_out(a, active, [], False) for a in artifacts.list_artifacts(service_state.settings, "embedder")]

    @post("/embedders/{embedder_id:str}/activate", status_code=202, return_dto=JobDTO,
          summary="Rebuild the index with this embedder ('base' for the configured one), then swap it in.")
    async def activate_embedder(self, embedder_id: FromPath[str], service_state: NamedDependency[ServiceState], job_runner: NamedDependency[JobRunner]) -> Job:
        settings = service_state.settings
        if embedder_id == "base":
            target_id, location = None, None
        else:
            artifact = artifacts.get_artifact(settings, "embedder", embedder_id)
            target_id, location = artifact.id, str(artifact.path / "model")

        if location is None:
            from core.models import resolve_embedder

            location = resolve_embedder(settings).location
        return await job_runner.submit("embedder.activate", {"embedder": embedder_id, "embedder_id": target_id,
                                                             "embedder_location": location, "rebuild": True})

    @get("/verifiers", summary="Answerability verifier versions with their manifests.")
    async def verifiers(self, service_state: NamedDependency[ServiceState]) -> list[ArtifactOut]:
        active = service_state.verifier.id if service_state.verifier else None
        return [_out(a, active, [active] if active else [], False)
                for a in artifacts.list_artifacts(service_state.settings, "verifier")]

    @post("/verifiers/{verifier_id:str}/activate", status_code=200,
          summary="Gate answers with this verifier ('none' turns it off); the current one serves until it loads.")
    async def activate_verifier(self, verifier_id: FromPath[str], service_state: NamedDependency[ServiceState]) -> dict[str, Any]:
        await service_state.activate_verifier(None if verifier_id == "none" else verifier_id)
        verifier = service_state.verifier
        return {"active_verifier": verifier.id if verifier else None,
                "threshold": verifier.threshold if verifier else None}
