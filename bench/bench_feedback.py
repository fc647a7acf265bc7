"""Feedback into training, measured: corrections for a set of questions, then held-out paraphrases of them.

The packaged models on the sample domain, `configs/cpu-quick.yaml` (40 steps), the base embedder, in one run:

1. adapter A: ``tunerag train generator`` on the sample chats;
2. through the API (``POST /v1/chat``, mode combined, adapter A): one question of each of ``--groups`` held-out
   entries (entries of data/sample/eval.jsonl with two or more paraphrased questions, seeded choice) is asked,
   rated down and corrected with the entry's reference answer, as a support agent would;
3. ``tunerag feedback export``, then adapter B: ``tunerag train generator --with-feedback`` (same config, seed);
4. ``tunerag eval --systems combined`` for A and for B on the held-out set without the corrected questions,
   split into the *paraphrases* of corrected entries and the *rest*; per-subset means with 95% bootstrap
   intervals and B - A paired differences (``eval.stats``).

Usage: python bench/bench_feedback.py [--groups 17] [--seed 0]   (~40 min on 2 cores)
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


def subset_scores(report_a: dict, report_b: dict, ids: set[str]) -> dict:
    from eval.stats import bootstrap_ci, paired_test

    qa = [q for q in report_a["questions"] if q["id"] in ids]
    qb = {q["id"]: q for q in report_b["questions"]}
    out: dict = {"questions": len(qa)}
    for metric in METRICS:
        a = [q["systems"]["combined"]["metrics"].get(metric) for q in qa]
        b = [qb[q["id"]]["systems"]["combined"]["metrics"].get(metric) for q in qa]
        if all(v is None for v in a):
            continue
        out[metric] = {"A": bootstrap_ci([v for v in a if v is not None]).to_json(),
                       "B_with_feedback": bootstrap_ci([v for v in b if v is not None]).to_json(),
                       "B_minus_A": paired_test(b, a, name_a="B", name_b="A", metric=metric).to_json()}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--groups", type=int, default=17, help="entries corrected (17: every held-out entry with a paraphrase)")
    parser.add_argument("--seed", type=int, default=0)
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
    b = last_json(cli(env, *config, "train", "generator", "--no-activate", "--with-feedback", str(work / "feedback")))

    reports = {}
    for name, adapter in (("A", a), ("B", b)):
        out = work / f"eval-{name}"
        cli({**env, "TUNERAG_EVAL__ADAPTER": adapter["artifact"]}, "eval", "--systems", "combined",
            "--eval-file", str(eval_file), "--out", str(out))
        reports[name] = json.loads((out / "report.json").read_text())
    rest_ids = {q["id"] for q in reports["A"]["questions"]} - paraphrase_ids
    answerable_rest = {q["id"] for q in reports["A"]["questions"] if q["answerable"]} - paraphrase_ids
    emit("bench_feedback", {
        "groups": args.groups, "seed": args.seed, "adapters": {"A": a["artifact"], "B_with_feedback": b["artifact"]},
        "feedback_given": len(given), "export": export,
        "paraphrases_of_corrected": subset_scores(reports["A"], reports["B"], paraphrase_ids),
        "rest_of_eval": subset_scores(reports["A"], reports["B"], rest_ids),
        "rest_answerable": subset_scores(reports["A"], reports["B"], answerable_rest),
        "work_dir": str(work),
    })


if __name__ == "__main__":
    main()
