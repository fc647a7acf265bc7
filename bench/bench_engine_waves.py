"""Does a burst of requests decode what each request decodes alone? Held-out prompts (combined mode, the data
dir's active adapter) sent to a fresh llama.cpp engine in waves of 8 (the next 8 when all are done, like bursts
after idle), then each alone on the same engine; at each difference, the engine's own logit gap between the
token decoded alone and the one decoded in the wave (a few tenths: a near tie; several logits: corruption).

    python bench/bench_engine_waves.py --data-dir D [--weights f16|q8_0] [--limit 48] [--no-compaction]

``--no-compaction`` turns off the KV-cache compaction after a request finishes among others, to show the bug it
fixes (bench/RESULTS.md: 41/48 identical with gaps of 3-33 logits without it, 48/48 with it).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from bench_engine_schedules import engine_on_held_out, first_difference, run
from common import emit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, required=True, help="a data dir with an active adapter and an index")
    parser.add_argument("--weights", default="f16")
    parser.add_argument("--limit", type=int, default=48)
    parser.add_argument("--no-compaction", action="store_true")
    args = parser.parse_args()
    settings, adapter, engine, _, prompts = engine_on_held_out(args.data_dir, args.weights, args.limit)
    if args.no_compaction:
        engine.api.kv_defrag = lambda ctx: None
        engine.api.kv_update = lambda ctx: None
    tok = engine.tokenizer
    max_new, penalty = settings.eval.max_new_tokens, settings.generation.repetition_penalty
    began = time.perf_counter()
    waves = run(engine, prompts, "a", max_new, penalty, "waves")  # first, on the fresh engine
    alone = run(engine, prompts, "a", max_new, penalty, "alone")
    divergences = []
    for i, (a, b) in enumerate(zip(alone, waves, strict=True)):
        if a == b:
            continue
        ta, tb, k = first_difference(tok, a, b)
        gap = None
        if k < min(len(ta), len(tb)):
            logits = np.array(engine.prompt_logits(prompts[i] + ta[:k], "a"), dtype=np.float64)
            for t in set(ta[:k]):  # the answer-only repetition penalty the engine applies
                logits[t] = logits[t] / penalty if logits[t] > 0 else logits[t] * penalty
            gap = round(float(logits[ta[k]] - logits[tb[k]]), 3)
        divergences.append({"question": i, "token": k, "gap": gap})
    engine.close()
    emit("engine_waves", {
        "weights": args.weights, "compaction": not args.no_compaction, "adapter": adapter.id,
        "questions": len(prompts), "mean_prompt_tokens": round(float(np.mean([len(p) for p in prompts])), 1),
        "max_new_tokens": max_new, "identical_to_alone": len(prompts) - len(divergences),
        "over_1_logit": sum(1 for d in divergences if d["gap"] is not None and d["gap"] > 1.0),
        "divergences": divergences, "wall_s": round(time.perf_counter() - began, 1),
    })


if __name__ == "__main__":
    main()
