"""`tunerag pipeline` on a real public FAQ with defaults only, as a new team would run it.

The FAQ is written out as the JSONL export a team would have (question, answer, doc_id), with a style file;
there are no other documents (every answer becomes a document). zaragoza-construction-faq asks 6 questions
twice with different answers: ``--on-conflict keep-first`` keeps the first of each (the default refuses). The command runs in a subprocess; reported:
wall time per stage, the total against the 30-minute target, peak memory of the process tree, and the
evaluation's headline (retrieval, style, citations, refusals, ROUGE-L per system with intervals).

Usage: python bench/bench_pipeline.py [--faq zaragoza-en|python-faq|debian-faq|fxfunds] [--eval-limit N] [--work DIR]

``--work DIR`` keeps the run in DIR: running the same command again resumes the pipeline at its first unfinished
stage (delete a stage from ``DIR/run/pipeline.json`` to measure it again).
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

from common import ROOT, emit, public_faq

#: Reported per system as [mean, low, high] (95% bootstrap intervals).
METRICS = ("ndcg@10", "recall@5", "style_adherence", "citation_validity", "citation_hit", "refusal_correct",
           "false_refusal", "rouge_l")
STYLES = {
    "zaragoza-en": {"company": "Zaragoza AB, a construction company", "sign_off": "— Zaragoza Support"},
    "fxfunds": {"company": "FXFunds, a trading platform", "sign_off": "— FXFunds Support"},
    "python-faq": {"company": "the Python Software Foundation's help desk for the Python language",
                   "sign_off": "— Python Help Desk"},
    "debian-faq": {"company": "the Debian project's help desk", "sign_off": "— Debian Help Desk"},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--faq", default="zaragoza-en", choices=sorted(STYLES))
    parser.add_argument("--eval-limit", type=int, default=None)
    parser.add_argument("--work", type=Path, default=None, help="run folder (kept; a second run resumes)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    work.mkdir(parents=True, exist_ok=True)
    faq = public_faq(args.faq)
    faq_file = work / "faq.jsonl"
    faq_file.write_text("".join(json.dumps({"question": e["q"], "answer": e["a"], "doc_id": e["id"]}, ensure_ascii=False)
                                + "\n" for e in faq.entries))
    style = work / "style.yaml"
    style.write_text("".join(f"{k}: {json.dumps(v, ensure_ascii=False)}\n" for k, v in STYLES[args.faq].items()))
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("TUNERAG_")}}
    if os.environ.get("TUNERAG_CACHE_DIR"):
        env["TUNERAG_CACHE_DIR"] = os.environ["TUNERAG_CACHE_DIR"]
    command = [sys.executable, "-m", "service.cli", "pipeline", "--faq", str(faq_file), "--style", str(style),
               "--out", str(work / "run"), "--on-conflict", "keep-first", *(["--eval-limit", str(args.eval_limit)] if args.eval_limit else [])]
    began = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - began
    (work / "pipeline.stderr").write_text(done.stderr)
    if done.returncode != 0:
        raise RuntimeError(f"pipeline failed (log: {work / 'pipeline.stderr'}):\n{done.stderr[-3000:]}")
    state = json.loads((work / "run" / "pipeline.json").read_text())
    report = json.loads((work / "run" / "report" / "report.json").read_text())
    stages_total_s = sum(s["seconds"] for s in state["stages"].values())
    emit(f"bench_pipeline_{args.faq}", {
        "faq": faq.origin, "entries": len(faq.entries), "wall_time_s": round(wall, 1),
        "under_30_min": stages_total_s < 1800,
        # the pipeline resets its peak (VmHWM) at each stage, so ru_maxrss of the child is only the last stage's
        "peak_rss_mb": max((s.get("peak_rss_mb") or 0) for s in state["stages"].values()),
        "stages_s": {name: s["seconds"] for name, s in state["stages"].items()},
        "stages_total_s": round(stages_total_s, 1),
        "stages_peak_rss_mb": {name: s.get("peak_rss_mb") for name, s in state["stages"].items()},
        "eval_systems_s": {name: system.get("wall_time_s") for name, system in report["systems"].items()},
        "data": state["stages"]["data"]["result"],
        "embedder": {k: state["stages"]["embedder"]["result"][k] for k in ("metrics_before", "metrics_after")},
        "verifier": state["stages"]["verifier"]["result"],
        "systems": {name: {m: [v["mean"], v.get("low"), v.get("high")] for m, v in system.get("metrics", {}).items()
                           if m in METRICS and isinstance(v, dict)}
                    for name, system in report["systems"].items() if system["status"] == "ok"},
        "report": str(work / "run" / "report" / "report.html"),
    })


if __name__ == "__main__":
    main()
