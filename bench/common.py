"""Helpers shared by the benchmarks: isolated settings, percentiles, peak memory, JSON output."""

from __future__ import annotations

import json
import os
import platform
import resource
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Libraries (the HF Trainer among them) print progress to stdout; only the result JSON goes there.
_RESULT_STREAM = sys.stdout
sys.stdout = sys.stderr
RESULTS_DIR = ROOT / "bench" / "results"


def percentiles(samples_s: list[float]) -> dict[str, float]:
    ms = np.asarray(samples_s) * 1000
    return {"p50_ms": round(float(np.percentile(ms, 50)), 3), "p95_ms": round(float(np.percentile(ms, 95)), 3),
            "mean_ms": round(float(ms.mean()), 3), "n": len(samples_s)}


def peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def machine() -> dict[str, object]:
    import torch

    return {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
            "machine": platform.machine()}


def emit(name: str, result: dict[str, object]) -> None:
    """Print the benchmark's JSON to stdout and store it as bench/results/<name>.json."""
    text = json.dumps({"benchmark": name, "machine": machine(), **result}, indent=2)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / f"{name}.json").write_text(text + "\n")
    print(text, file=_RESULT_STREAM, flush=True)
