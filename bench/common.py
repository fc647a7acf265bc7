"""Helpers shared by the benchmarks: isolated settings, percentiles, peak memory, JSON output, a free port and a
readiness wait for servers the benchmarks start."""

from __future__ import annotations

import json
import os
import platform
import resource
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen, timeout_s: float, what: str) -> None:
    """Poll ``url`` until it answers 200; fail when ``proc`` exits or ``timeout_s`` passes."""
    import httpx

    deadline = time.time() + timeout_s
    while time.time() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited during start-up")
        time.sleep(0.3)
    raise RuntimeError(f"{what} not ready after {timeout_s:.0f} s")


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


@dataclass(frozen=True)
class FaqSet:
    """A public FAQ nobody on this project wrote: entries ``{"id", "q", "a", "title"}`` and where it comes from."""

    name: str
    origin: str
    entries: list[dict]


def public_faq(name: str) -> FaqSet:
    """``zaragoza-en`` / ``zaragoza-sv``: zaragoza-construction-faq (Zaragoza AB, CC-BY-4.0, 503 entries);
    ``fxfunds``: fxfunds-platform-faq (FXFunds, CC-BY-4.0, 24 entries), both from PyPI (the bench extra);
    ``python-faq``, ``debian-faq``, ``sqlite-faq``: FAQs written by those projects, from Debian's packages
    (``bench/debian_faqs.py``)."""
    if name.startswith("zaragoza-"):
        import zaragoza_construction_faq as faq

        entries = [{"id": e["id"], "q": e["q"], "a": e["a"], "title": e["category"].replace("-", " ").capitalize()}
                   for e in faq.load(lang=name.removeprefix("zaragoza-"))]
        return FaqSet(name, f"zaragoza-construction-faq {faq.__version__}, {faq.__license__}, DOI {faq.__doi__}", entries)
    if name == "fxfunds":
        import fxfunds_platform_faq as faq

        entries = [{"id": e["id"], "q": e["question"], "a": e["answer"], "title": e["category"].replace("-", " ").capitalize()}
                   for e in faq.all_questions()]
        return FaqSet(name, f"fxfunds-platform-faq {faq.__version__}, CC-BY-4.0", entries)
    if name in ("python-faq", "debian-faq", "sqlite-faq"):
        import debian_faqs

        entries, origin = debian_faqs.load(name)
        return FaqSet(name, origin, entries)
    raise ValueError(f"unknown FAQ set {name!r}")


def faq_split(work: Path, faq: FaqSet, heldout_fraction: float = 0.3, seed: int = 0) -> tuple[Path, list[dict], list[dict]]:
    """The FAQ's answers as a corpus under ``work/corpus`` (one Markdown file per entry, id = entry id) and a
    split of its questions by entry id, ``heldout_fraction`` held out (seeded): (corpus, train, held-out)."""
    import random

    corpus = work / "corpus"
    if not corpus.is_dir():
        corpus.mkdir(parents=True)
        for e in faq.entries:
            (corpus / f"{e['id']}.md").write_text(f"---\nid: {e['id']}\ntitle: {e['title']}\n---\n\n{e['a']}\n")
    ids = sorted(e["id"] for e in faq.entries)
    random.Random(seed).shuffle(ids)
    heldout_ids = set(ids[: round(len(ids) * heldout_fraction)])
    return (corpus, [e for e in faq.entries if e["id"] not in heldout_ids],
            [e for e in faq.entries if e["id"] in heldout_ids])


def zaragoza_split(work: Path) -> tuple[Path, list[dict], list[dict]]:
    """zaragoza-construction-faq (English) as corpus + 70/30 question split, as every benchmark uses it."""
    return faq_split(work, public_faq("zaragoza-en"))
