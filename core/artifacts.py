"""Versioned training artifacts (fine-tuned embedders, LoRA adapters, answerability verifiers) and which one is active.

Layout under ``<data_dir>/artifacts/<kind>/``::

    .runs/<id>/              a run in progress: checkpoints, logs (kept on interrupt for --resume)
    <id>/manifest.json       a finished artifact: config, data hash, metrics, wall time
    <id>/...                 its files (``model/`` for embedders, peft files for adapters)
    ACTIVE                   the id the service uses (absent: the base model)

An artifact directory appears only when its run has finished (rename from ``.runs``), so a reader never
sees a half-written one.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from core.errors import NotFoundError
from core.settings import Settings

ArtifactKind = Literal["embedder", "adapter", "verifier"]
KINDS: tuple[ArtifactKind, ...] = ("embedder", "adapter", "verifier")
ALIASES = ("latest", "active")


@dataclass(frozen=True)
class Artifact:
    kind: ArtifactKind
    id: str
    path: Path
    manifest: dict[str, Any]


def kind_dir(settings: Settings, kind: ArtifactKind) -> Path:
    if kind not in KINDS:
        raise ValueError(f"artifact kind must be one of {KINDS}, got {kind!r}")
    return settings.paths.artifacts_dir / kind


def new_artifact_id(kind: ArtifactKind) -> str:
    return f"{kind}-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"


def run_dir(settings: Settings, kind: ArtifactKind, artifact_id: str) -> Path:
    """Working directory of a run (checkpoints live here until the run finishes)."""
    return kind_dir(settings, kind) / ".runs" / artifact_id


def finalize(settings: Settings, kind: ArtifactKind, artifact_id: str, manifest: dict[str, Any],
             keep: Iterable[str]) -> Artifact:
    """Move the finished files ``keep`` (relative to the run dir) into a new artifact dir atomically."""
    source = run_dir(settings, kind, artifact_id)
    staging = kind_dir(settings, kind) / f".staging-{artifact_id}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for name in keep:
        os.replace(source / name, staging / name)
    manifest = {"kind": kind, "id": artifact_id, **manifest}
    (staging / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str))
    final = kind_dir(settings, kind) / artifact_id
    os.replace(staging, final)
    shutil.rmtree(source, ignore_errors=True)
    return Artifact(kind, artifact_id, final, manifest)


def list_artifacts(settings: Settings, kind: ArtifactKind) -> list[Artifact]:
    """Finished artifacts of ``kind``, oldest first."""
    root = kind_dir(settings, kind)
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        manifest_file = path / "manifest.json"
        if path.name.startswith(".") or not manifest_file.is_file():
            continue
        found.append(Artifact(kind, path.name, path, json.loads(manifest_file.read_text())))
    return sorted(found, key=lambda a: (a.manifest.get("created_at", ""), a.id))


def active_id(settings: Settings, kind: ArtifactKind) -> str | None:
    pointer = kind_dir(settings, kind) / "ACTIVE"
    if not pointer.is_file():
        return None
    value = pointer.read_text().strip()
    return value if (kind_dir(settings, kind) / value / "manifest.json").is_file() else None


def get_artifact(settings: Settings, kind: ArtifactKind, name: str) -> Artifact:
    """An artifact by id, or ``latest`` / ``active``.

    Raises:
        NotFoundError: no such artifact (the message lists what exists).
    """
    available = list_artifacts(settings, kind)
    if name == "latest" and available:
        return available[-1]
    if name == "active":
        name = active_id(settings, kind) or ""
    for artifact in available:
        if artifact.id == name:
            return artifact
    ids = [a.id for a in available] or ["none yet"]
    raise NotFoundError(f"{kind} artifact {name!r} not found; available: {', '.join(ids)}")


def activate(settings: Settings, kind: ArtifactKind, artifact_id: str | None) -> None:
    """Make ``artifact_id`` the active one (``None``: back to the base model). Atomic."""
    root = kind_dir(settings, kind)
    root.mkdir(parents=True, exist_ok=True)
    if artifact_id is None:
        (root / "ACTIVE").unlink(missing_ok=True)
        return
    get_artifact(settings, kind, artifact_id)
    tmp = root / f".ACTIVE.{os.getpid()}"
    tmp.write_text(artifact_id + "\n")
    os.replace(tmp, root / "ACTIVE")


def active_embedder_location(settings: Settings) -> str | None:
    """The model folder of the active fine-tuned embedder, or None when the base embedder is in use."""
    active = active_id(settings, "embedder")
    return str(get_artifact(settings, "embedder", active).path / "model") if active else None


def embedder_artifact_id(settings: Settings, location: str) -> str | None:
    """The id of the fine-tuned embedder artifact that ``location`` belongs to (None: not an artifact)."""
    root = kind_dir(settings, "embedder").resolve()
    path = Path(location).resolve()
    return path.relative_to(root).parts[0] if path.is_relative_to(root) else None


def data_hash(rows: Iterable[Any]) -> str:
    """sha256 over the JSON of each row, in order: the identity of a training set."""
    digest = hashlib.sha256()
    for row in rows:
        digest.update(json.dumps(row, sort_keys=True, default=str).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
