"""The training recipes in one process and under torchrun with 2 processes (gloo on this machine's CPUs).

Packaged models (SmolLM2-135M through transformers, all-MiniLM-L6-v2), the sample domain, default recipes
except the step count; the global batch is the same in both (2 processes x half the rows). Reported per
recipe: seconds per optimizer step (the Trainer's own train_runtime / steps, so data preparation and model
loading are outside it), the ratio 2-process / 1-process, the first logged loss of each, and the wall time of
the whole command.

Usage: python bench/bench_distributed.py [--steps 6]
On 2 cores expect no speed-up (two processes share the cores one process already uses); the point is that
the recipes run under the launcher and agree.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, emit, free_port

RECIPES = {"generator": ("adapter", "loss_curve", "TUNERAG_TRAIN_GENERATOR__PER_DEVICE_TRAIN_BATCH_SIZE", 4),
           "embedder": ("embedder", "log_history", "TUNERAG_TRAIN_EMBEDDER__PER_DEVICE_TRAIN_BATCH_SIZE", 32)}


def run(recipe: str, processes: int, steps: int, work: Path) -> dict:
    kind, curve, batch_var, global_batch = RECIPES[recipe]
    data_dir = work / f"{recipe}-{processes}"
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("TUNERAG_")}, "TUNERAG_DATA_DIR": str(data_dir),
           batch_var: str(global_batch // processes), "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 2) // processes))}
    if os.environ.get("TUNERAG_CACHE_DIR"):
        env["TUNERAG_CACHE_DIR"] = os.environ["TUNERAG_CACHE_DIR"]
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes), "--master_addr",
                 "127.0.0.1", "--master_port", str(free_port())] if processes > 1 else [sys.executable])
    began = time.perf_counter()
    done = subprocess.run([*launcher, "-m", "service.cli", "train", recipe, "--max-steps", str(steps),
                           *(["--no-activate"] if recipe == "generator" else [])],
                          cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - began
    if done.returncode != 0:
        raise RuntimeError(f"{recipe} x{processes} failed:\n{done.stderr[-3000:]}")
    folder = next(p for p in (data_dir / "artifacts" / kind).iterdir() if p.is_dir() and not p.name.startswith("."))
    manifest = json.loads((folder / "manifest.json").read_text())
    rows = manifest[curve]
    runtime = next(r["train_runtime"] for r in rows if "train_runtime" in r)
    losses = [r["loss"] for r in rows if "loss" in r]
    return {"processes": processes, "steps": manifest["global_steps"], "s_per_step": round(runtime / manifest["global_steps"], 3),
            "train_runtime_s": round(runtime, 2), "command_wall_s": round(wall, 1), "first_loss": losses[0] if losses else None,
            "last_loss": losses[-1] if losses else None, "distributed": manifest["distributed"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--recipes", default="generator,embedder")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-distributed-"))
    subprocess.run([sys.executable, "-m", "service.cli", "--data-dir", str(work / "prepare"), "models", "prepare"],
                   cwd=ROOT, check=True, capture_output=True)
    result: dict[str, dict] = {}
    for recipe in args.recipes.split(","):
        one, two = run(recipe, 1, args.steps, work), run(recipe, 2, args.steps, work)
        result[recipe] = {"one_process": one, "two_processes": two,
                          "step_time_ratio_2_vs_1": round(two["s_per_step"] / one["s_per_step"], 3)}
    emit("bench_distributed", {"steps": args.steps, "global_batch": {r: RECIPES[r][3] for r in RECIPES}, **result})


if __name__ == "__main__":
    main()
