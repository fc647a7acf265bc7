"""Both training recipes, unchanged, under torchrun with 2 CPU processes (gloo): one artifact, written by rank 0
alone, with the layout of a single-process run, and a loss that agrees with it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import free_port

from core.settings import SAMPLE_DIR

pytestmark = pytest.mark.slow
ROOT = Path(__file__).parent.parent


def launch(processes: int, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``tunerag ARGS`` in one process, or under torchrun with ``processes`` ranks."""
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
                 "--master_addr", "127.0.0.1", "--master_port", str(free_port())] if processes > 1 else [sys.executable])
    return subprocess.run([*launcher, "-m", "service.cli", *args], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, **env}, timeout=300)


def layout(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def artifacts_of(data_dir: Path, kind: str) -> list[Path]:
    return sorted(p for p in (data_dir / "artifacts" / kind).iterdir() if p.is_dir() and not p.name.startswith("."))


def first_loss(manifest: dict, key: str) -> float:
    return next(row["loss"] for row in manifest[key] if "loss" in row)


@pytest.fixture
def runs(tmp_path: Path, tiny_generator_dir: Path, tiny_embedder_dir: Path) -> dict[int, dict[str, str]]:
    """An environment per world size (1 and 2), each with its own data dir."""
    chats = tmp_path / "chats.jsonl"
    chats.write_text("\n".join((SAMPLE_DIR / "chat_train.jsonl").read_text().splitlines()[:30]) + "\n")
    return {n: {"TUNERAG_DATA_DIR": str(tmp_path / f"var-{n}"), "TUNERAG_MODELS__GENERATOR": str(tiny_generator_dir),
                "TUNERAG_MODELS__EMBEDDER": str(tiny_embedder_dir), "TUNERAG_TRAIN_GENERATOR__CHAT_FILES": json.dumps([str(chats)]),
                "TUNERAG_TRAIN_GENERATOR__R": "4", "TUNERAG_TRAIN_GENERATOR__TARGET_MODULES": "all-linear",
                # The same global batch: 1 process x 2 rows, or 2 processes x 1 row.
                "TUNERAG_TRAIN_GENERATOR__PER_DEVICE_TRAIN_BATCH_SIZE": str(2 // n),
                "TUNERAG_TRAIN_EMBEDDER__PER_DEVICE_TRAIN_BATCH_SIZE": str(16 // n),
                # The training loop is the subject: a random-weight embedder's gain check would keep the base.
                "TUNERAG_TRAIN_EMBEDDER__GAIN_CHECK_FRACTION": "0"}
            for n in (1, 2)}


@pytest.mark.parametrize("recipe, kind, curve", [("generator", "adapter", "loss_curve"),
                                                 ("embedder", "embedder", "log_history")])
def test_recipe_under_torchrun_writes_one_artifact_like_a_single_process(
        runs: dict[int, dict[str, str]], recipe: str, kind: str, curve: str) -> None:
    manifests, layouts = {}, {}
    for processes, env in runs.items():
        result = launch(processes, "train", recipe, "--max-steps", "2", env=env)
        assert result.returncode == 0, result.stderr[-3000:]
        # Rank 0 alone reports: one JSON document on stdout.
        assert result.stdout.count('"artifact"') == 1, result.stdout
        data_dir = Path(env["TUNERAG_DATA_DIR"])
        made = artifacts_of(data_dir, kind)
        assert len(made) == 1, made  # one run, named once for every rank
        leftovers = [p.name for p in (data_dir / "artifacts" / kind).iterdir() if p.name.startswith(".staging")]
        runs_dir = data_dir / "artifacts" / kind / ".runs"
        assert not leftovers and (not runs_dir.exists() or not any(runs_dir.iterdir()))
        manifests[processes] = json.loads((made[0] / "manifest.json").read_text())
        layouts[processes] = layout(made[0])
    assert layouts[1] == layouts[2]
    assert set(manifests[1]) == set(manifests[2])
    assert manifests[1]["distributed"]["processes"] == 1 and manifests[2]["distributed"] == {
        **manifests[2]["distributed"], "processes": 2, "backend": "gloo"}
    assert manifests[1]["global_steps"] == manifests[2]["global_steps"] == 2
    assert manifests[1]["data_hash"] == manifests[2]["data_hash"]
    # Before the first update both runs score the same model on the same global batch size: a loss summed
    # over ranks instead of averaged, or one rank's data only, would show here.
    one, two = first_loss(manifests[1], curve), first_loss(manifests[2], curve)
    assert abs(one - two) / one < 0.15, (one, two)
