"""General replay against forgetting: what mixing the base model's own general answers into training saves in
forgetting and costs in house style, both adapters trained and evaluated in one run.

The packaged models on the sample domain, `configs/cpu-quick.yaml` (40 steps), the base embedder. Two adapters:
no replay, and ``general_replay_fraction`` (default 0.25) of general replay rows. Each is scored by the
forgetting check its training run recorded, and by ``tunerag eval`` through the serving backend (the ``ft`` and
``combined`` systems, the first ``--limit`` held-out questions): style adherence, citation hit, false refusals.

Usage: python bench/bench_replay.py [--fraction 0.25] [--limit 52]   (~35 min on 2 cores)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from common import ROOT, emit

SYSTEMS = ("ft", "combined")
METRICS = ("style_adherence", "citation_hit", "rouge_l")


def cli(env: dict[str, str], *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "service.cli", *args], cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"tunerag {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fraction", type=float, default=0.25)
    parser.add_argument("--limit", type=int, default=52)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-replay-"))
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("TUNERAG_")}, "TUNERAG_DATA_DIR": str(work / "var")}
    if os.environ.get("TUNERAG_CACHE_DIR"):
        env["TUNERAG_CACHE_DIR"] = os.environ["TUNERAG_CACHE_DIR"]
    cli(env, "models", "prepare")
    cli(env, "index")
    # The combined system retrieves with the fine-tuned embedder (one quick run, the same for every adapter).
    cli(env, "--config", str(ROOT / "configs" / "cpu-quick.yaml"), "train", "embedder")
    result: dict[str, dict] = {}
    for name, fraction in (("no_replay", 0.0), ("replay", args.fraction)):
        trained = cli({**env, "TUNERAG_TRAIN_GENERATOR__GENERAL_REPLAY_FRACTION": str(fraction)},
                      "--config", str(ROOT / "configs" / "cpu-quick.yaml"), "train", "generator", "--no-activate")
        info = json.loads(trained[trained.index("{"):])
        manifest = json.loads((Path(info["path"]) / "manifest.json").read_text())
        out = work / f"eval-{name}"
        cli({**env, "TUNERAG_EVAL__ADAPTER": info["artifact"]}, "eval", "--systems", ",".join(SYSTEMS),
            "--limit", str(args.limit), "--out", str(out))
        report = json.loads((out / "report.json").read_text())
        systems = {}
        for system in SYSTEMS:
            metrics = report["systems"][system]["metrics"]
            systems[system] = {m: metrics[m]["mean"] for m in METRICS if m in metrics}
            systems[system]["refusals"] = report["systems"][system].get("refusals")
        forgot = manifest["forgetting"]
        result[name] = {"adapter": info["artifact"], "replay_rows": manifest["general_replay"]["rows"],
                        "train_rows": manifest["data"]["split_sizes"]["train"],
                        "perplexity": forgot["perplexity"], "instruction_agreement": forgot["instruction_agreement_rouge_l"],
                        "forgetting_warnings": forgot["warnings"], "systems": systems,
                        "wall_time_s": manifest["wall_time_s"]}
    base, replay = result["no_replay"], result["replay"]
    emit("bench_replay", {
        "fraction": args.fraction, "limit": args.limit, **result,
        "replay_vs_no_replay": {
            "perplexity_change": [base["perplexity"]["change"], replay["perplexity"]["change"]],
            "instruction_agreement": [base["instruction_agreement"]["mean"], replay["instruction_agreement"]["mean"]],
            **{f"{s}_style_ratio": round(replay["systems"][s]["style_adherence"] / max(base["systems"][s]["style_adherence"], 1e-9), 3)
               for s in SYSTEMS}},
    })


if __name__ == "__main__":
    main()
