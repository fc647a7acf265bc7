"""Placeholder until the evaluation package lands."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class EvalOptions:
    limit: int | None = None
    systems: tuple[str, ...] | None = None
    out_dir: Path | None = None


def run_evaluation(settings, options, on_progress=None):
    from core.errors import TuneragError

    raise TuneragError("evaluation is not available yet")
