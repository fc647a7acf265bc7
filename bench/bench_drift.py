"""Drift monitoring on real data: false alarms on in-domain traffic, detection delay when the questions change.

The sample domain's index on the packaged embedder (all-MiniLM-L6-v2); the reference is what a server builds
(the training chats' questions and half of the eval set's answerable questions; the other half is held out).
Each run replays a shuffled stream through the server's own monitor (``DriftMonitor`` with the default
settings: window 200, first check at 50, a check every 25): first ``--in-domain`` held-out questions (resampled),
then questions of another public FAQ (zaragoza-construction-faq, English; fxfunds-platform-faq) until the
first alarm. Reported over ``--runs`` orderings:

    false alarms   share of in-domain checks that alarmed, and share of runs with any in-domain alarm
    delay          queries after the switch until the first alarm (median, max), per other domain

Usage: python bench/bench_drift.py [--runs 20] [--in-domain 150]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
from common import emit, public_faq

from core.jsonl import read_jsonl
from core.settings import SAMPLE_DIR, load_settings
from monitoring.monitor import DriftMonitor, build_reference
from retrieval.indexer import update_index
from retrieval.search import open_retriever


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--in-domain", type=int, default=150)
    parser.add_argument("--max-after", type=int, default=200, help="Give up on a run this many queries after the switch.")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-drift-"))
    items = [row for _, row in read_jsonl(SAMPLE_DIR / "eval.jsonl")]
    answerable = [i for i in items if i["answerable"]]
    kept, heldout = answerable[::2], [i["question"] for i in answerable[1::2]]
    eval_file = work / "reference-eval.jsonl"
    eval_file.write_text("".join(json.dumps(i) + "\n" for i in kept))
    settings = load_settings(data_dir=work / "var", eval={"eval_file": eval_file})
    update_index(settings)
    retriever = open_retriever(settings)
    reference = build_reference(settings, retriever, settings.train_generator.chat_files, settings.monitoring.reference_max)
    config = settings.monitoring

    held_vectors, held_scores = retriever.embed_and_top_score(heldout)
    others = {}
    for name in ("zaragoza-en", "fxfunds"):
        questions = [e["q"] for e in public_faq(name).entries]
        others[name] = retriever.embed_and_top_score(questions)

    in_domain_checks = in_domain_alarms = runs_with_false_alarm = 0
    delays: dict[str, list[int | None]] = {name: [] for name in others}
    for run in range(args.runs):
        rng = np.random.default_rng(run)
        for name, (vectors, scores) in others.items():
            monitor = DriftMonitor(reference, config)
            false_alarm = False
            for i in rng.choice(len(heldout), args.in_domain, replace=True):
                checked = monitor.observe(held_vectors[i], float(held_scores[i]), False)
                if checked is not None:
                    in_domain_checks += 1
                    in_domain_alarms += checked["drift"]
                    false_alarm |= checked["drift"]
            runs_with_false_alarm += false_alarm
            delay = None
            for n, i in enumerate(rng.choice(len(vectors), args.max_after, replace=True), start=1):
                checked = monitor.observe(vectors[i], float(scores[i]), False)
                if checked is not None and checked["drift"]:
                    delay = n
                    break
            delays[name].append(delay)

    def summary(values: list[int | None]) -> dict:
        found = [v for v in values if v is not None]
        return {"detected_runs": f"{len(found)}/{len(values)}", "median_queries": float(np.median(found)) if found else None,
                "max_queries": max(found) if found else None}

    emit("bench_drift", {
        "reference": reference.summary() | {"top_score_histogram": None},
        "settings": config.model_dump(),
        "runs": args.runs, "in_domain_queries_per_run": args.in_domain, "heldout_questions": len(heldout),
        "false_alarms": {"checks": in_domain_checks, "alarmed": in_domain_alarms,
                         "rate_per_check": round(in_domain_alarms / max(in_domain_checks, 1), 4),
                         "runs_with_any": f"{runs_with_false_alarm}/{args.runs * len(others)}"},
        "detection_delay_after_switch": {name: summary(v) for name, v in delays.items()},
    })


if __name__ == "__main__":
    main()
