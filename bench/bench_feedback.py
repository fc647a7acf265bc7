"""Feedback into training, measured: corrections for a set of questions, then held-out paraphrases of them.

The packaged models on the sample domain, `configs/cpu-quick.yaml` (40 steps), the quick embedder, in one run:

1. adapter A: ``tunerag train generator`` on the sample chats (active);
2. through the API (``POST /v1/chat``, mode combined, adapter A): one question of each of ``--groups`` held-out
   entries (entries of data/sample/eval.jsonl with two or more paraphrased questions, seeded choice) is asked,
   rated down and corrected with the entry's reference answer, as a support agent would;
3. ``tunerag feedback export``, then two next rounds on top of A, ``--round-steps`` steps each:
   B = ``train generator --from-adapter A --with-feedback DIR`` (the feedback rows, repeated, plus as many
   replayed regular rows), and the control C = ``train generator --from-adapter A`` (the same number of steps
   on the regular chats alone: what training A further does without any feedback);
4. ``tunerag eval --systems combined`` for A, B and C on the held-out set without the corrected questions, split
   into the *paraphrases* of corrected entries and the *rest*; per-subset means with 95% bootstrap intervals and
   paired differences B - A, B - C (the feedback's own effect) and C - A (more training alone).

Usage: python bench/bench_feedback.py [--groups 17] [--seed 0] [--round-steps 20]   (~35 min on 2 cores)
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

from common import ROOT, emit

METRICS = ("rouge_l", "style_adherence", "citation_hit", "false_refusal", "refusal_correct")


def cli(env: dict[str, str], *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "service.cli", *args], cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"tunerag {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return done.stdout


def last_json(text: str) -> dict:
    return json.loads(text[text.index("{"):])


def choose(rows: list[dict], groups: int, seed: int) -> tuple[list[dict], set[str]]:
    """The corrected questions (one per chosen entry) and the ids of their held-out paraphrases."""
    by_entry: dict[tuple, list[dict]] = defaultdict(list)
    for row in rows:
        if row["answerable"]:
            by_entry[(tuple(row["gold_doc_ids"]), row["reference_answer"])].append(row)
    entries = sorted((e for e in by_entry.values() if len(e) >= 2), key=lambda e: e[0]["id"])
    random.Random(seed).shuffle(entries)
    chosen = entries[:groups]
    return [e[0] for e in chosen], {r["id"] for e in chosen for r in e[1:]}


def give_feedback(data_dir: Path, corrected: list[dict]) -> list[dict]:
    """Ask each question through the API with the active adapter, rate it down, correct it with the reference."""
    from litestar.testing import TestClient

    from core.settings import load_settings
    from service.app import create_app

    settings = load_settings(data_dir=data_dir, server={"api_keys": {"agent": ["chat"]}, "rate_limit_per_minute": 10_000})
    headers = {"X-API-Key": "agent"}
    given = []
    with TestClient(app=create_app(settings), timeout=600) as client:
        for row in corrected:
            answer = client.post("/v1/chat", json={"question": row["question"], "mode": "combined"}, headers=headers)
            answer.raise_for_status()
            body = answer.json()
            rated = client.post(f"/v1/chat/{body['conversation_id']}/feedback", headers=headers,
                                json={"rating": "down", "message_id": body["message_id"],
                                      "correction": row["reference_answer"]})
            rated.raise_for_status()
            given.append({"id": row["id"], "question": row["question"], "served_answer": body["answer"]})
    return given


PAIRS = (("B", "A"), ("B", "C"), ("C", "A"))


def subset_scores(reports: dict[str, dict], ids: set[str]) -> dict:
    """Per adapter: mean with a bootstrap interval; per pair in PAIRS: the paired difference and its test."""
    from eval.stats import bootstrap_ci, paired_test

    order = [q["id"] for q in reports["A"]["questions"] if q["id"] in ids]
    values = {name: {q["id"]: q["systems"]["combined"]["metrics"] for q in report["questions"]}
              for name, report in reports.items()}
    out: dict = {"questions": len(order)}
    for metric in METRICS:
        series = {name: [values[name][i].get(metric) for i in order] for name in reports}
        if all(v is None for v in series["A"]):
            continue
        out[metric] = {name: bootstrap_ci([v for v in vs if v is not None]).to_json() for name, vs in series.items()}
        for x, y in PAIRS:
            out[metric][f"{x}_minus_{y}"] = paired_test(series[x], series[y], name_a=x, name_b=y, metric=metric).to_json()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--groups", type=int, default=17, help="entries corrected (17: every held-out entry with a paraphrase)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--round-steps", type=int, default=20, help="optimizer steps of each next round (B and C)")
    args = parser.parse_args()
    from core.settings import SAMPLE_DIR

    work = Path(tempfile.mkdtemp(prefix="bench-feedback-"))
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("TUNERAG_")}, "TUNERAG_DATA_DIR": str(work / "var")}
    config = ("--config", str(ROOT / "configs" / "cpu-quick.yaml"))
    cli(env, "models", "prepare")
    cli(env, "index")
    # The combined system retrieves with the fine-tuned embedder (one quick run, the same for every adapter).
    cli(env, "--config", str(ROOT / "configs" / "cpu-quick.yaml"), "train", "embedder")
    a = last_json(cli(env, *config, "train", "generator", "--activate"))

    rows = [json.loads(x) for x in (SAMPLE_DIR / "eval.jsonl").read_text().splitlines() if x.strip()]
    corrected, paraphrase_ids = choose(rows, args.groups, args.seed)
    corrected_ids = {r["id"] for r in corrected}
    eval_file = work / "eval_without_corrected.jsonl"
    eval_file.write_text("".join(json.dumps(r) + "\n" for r in rows if r["id"] not in corrected_ids))
    given = give_feedback(work / "var", corrected)
    export = last_json(cli(env, "feedback", "export", "--out", str(work / "feedback")))
    round_args = (*config, "train", "generator", "--no-activate", "--from-adapter", a["artifact"],
                  "--max-steps", str(args.round_steps))
    b = last_json(cli(env, *round_args, "--with-feedback", str(work / "feedback")))
    c = last_json(cli(env, *round_args))

    reports = {}
    for name, adapter in (("A", a), ("B", b), ("C", c)):
        out = work / f"eval-{name}"
        cli({**env, "TUNERAG_EVAL__ADAPTER": adapter["artifact"]}, "eval", "--systems", "combined",
            "--eval-file", str(eval_file), "--out", str(out))
        reports[name] = json.loads((out / "report.json").read_text())
    rest_ids = {q["id"] for q in reports["A"]["questions"]} - paraphrase_ids
    answerable_rest = {q["id"] for q in reports["A"]["questions"] if q["answerable"]} - paraphrase_ids
    emit("bench_feedback", {
        "groups": args.groups, "seed": args.seed, "round_steps": args.round_steps,
        "adapters": {"A": a["artifact"], "B_round_with_feedback": b["artifact"], "C_round_without": c["artifact"]},
        "rounds": {name: {k: r.get(k) for k in ("global_steps", "wall_time_s", "final_validation_loss")} | {
            "feedback": (r.get("data") or {}).get("feedback")} for name, r in (("A", a), ("B", b), ("C", c))},
        "feedback_given": len(given), "export": export,
        "paraphrases_of_corrected": subset_scores(reports, paraphrase_ids),
        "rest_of_eval": subset_scores(reports, rest_ids),
        "rest_answerable": subset_scores(reports, answerable_rest),
        "work_dir": str(work),
    })


if __name__ == "__main__":
    main()
