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


def sample_kb_copies(root: Path, copies: int) -> Path:
    """``copies`` editions of the sample KB under ``root/corpus/edition-NN`` (ids from the paths, so each
    edition's documents are distinct); for throughput and rebuild-under-load measurements."""
    from core.settings import SAMPLE_DIR

    corpus = root / "corpus"
    for n in range(copies):
        target = corpus / f"edition-{n:02d}"
        target.mkdir(parents=True)
        for src in (SAMPLE_DIR / "kb").iterdir():
            # Ids must come from the path, so drop the explicit ids the sample files carry.
            text = src.read_text().replace('<meta name="doc-id"', '<meta name="x-doc-id"')
            text = "\n".join(line for line in text.splitlines() if not line.startswith("id: "))
            (target / src.name).write_text(text + (f"\n\nEdition {n} of this article.\n" if src.suffix == ".md" else ""))
    return corpus


def zaragoza_split(work: Path) -> tuple[Path, list[dict], list[dict]]:
    """The public FAQ (zaragoza-construction-faq, English, CC-BY-4.0) as a corpus of answers under
    ``work/corpus`` plus an 80/20 split of the entries by id (seed 0): (corpus, train, held-out)."""
    import random

    import zaragoza_construction_faq as faq

    entries = faq.load(lang="en")
    corpus = work / "corpus"
    if not corpus.is_dir():
        corpus.mkdir(parents=True)
        for e in entries:
            title = e["category"].replace("-", " ").capitalize()
            (corpus / f"{e['id']}.md").write_text(f"---\nid: {e['id']}\ntitle: {title}\n---\n\n{e['a']}\n")
    ids = sorted(e["id"] for e in entries)
    random.Random(0).shuffle(ids)
    heldout_ids = set(ids[: len(ids) // 5])
    return (corpus, [e for e in entries if e["id"] not in heldout_ids], [e for e in entries if e["id"] in heldout_ids])
