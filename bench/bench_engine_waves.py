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
import threading
import time
from pathlib import Path

import numpy as np
from common import emit

from core import artifacts
from core.prompt import build_prompt, load_template
from core.settings import load_settings
from eval.runner import load_eval_set
from inference.llamacpp_engine import EngineRequest, LlamaCppEngine, engine_from_settings
from retrieval.search import open_retriever


def decode(engine: LlamaCppEngine, prompts: list[list[int]], width: int, max_new: int, penalty: float) -> list[str]:
    """Greedy answers, ``width`` requests submitted together and all awaited before the next ``width``."""
    out = [""] * len(prompts)
    for start in range(0, len(prompts), width):
        events = []
        for i in range(start, min(start + width, len(prompts))):
            event = threading.Event()
            events.append(event)
            engine.submit(EngineRequest(prompts[i], "a", max_new, 0.0, 1.0, penalty, on_text=lambda t: None,
                                        on_done=lambda r, i=i, e=event: (out.__setitem__(i, getattr(r, "text", repr(r))),
                                                                          e.set())))
        for event in events:
            event.wait()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, required=True, help="a data dir with an active adapter and an index")
    parser.add_argument("--weights", default="f16")
    parser.add_argument("--limit", type=int, default=48)
    parser.add_argument("--no-compaction", action="store_true")
    args = parser.parse_args()
    settings = load_settings(data_dir=args.data_dir)
    settings = settings.model_copy(update={"generation": settings.generation.model_copy(
        update={"llamacpp_weights": args.weights})})
    adapter = artifacts.get_artifact(settings, "adapter", "active")
    items = load_eval_set(settings.eval.eval_file, args.limit)
    retriever = open_retriever(settings)
    engine = engine_from_settings(settings)
    if args.no_compaction:
        engine.api.kv_defrag = lambda ctx: None
        engine.api.kv_update = lambda ctx: None
    engine.load_adapter("a", adapter.path / "adapter")
    tok = engine.tokenizer
    texts = [build_prompt(load_template(settings), tok, item.question,
                          [r.to_passage() for r in retriever.search(item.question, k=settings.retrieval.top_k)],
                          max_tokens=settings.generation.max_context_tokens) for item in items]
    prompts = [tok(t, add_special_tokens=False).input_ids for t in texts]
    max_new, penalty = settings.eval.max_new_tokens, settings.generation.repetition_penalty
    began = time.perf_counter()
    waves = decode(engine, prompts, 8, max_new, penalty)  # first, on the fresh engine
    alone = decode(engine, prompts, 1, max_new, penalty)
    divergences = []
    for i, (a, b) in enumerate(zip(alone, waves, strict=True)):
        if a == b:
            continue
        ta, tb = tok(a, add_special_tokens=False).input_ids, tok(b, add_special_tokens=False).input_ids
        k = 0
        while k < min(len(ta), len(tb)) and ta[k] == tb[k]:
            k += 1
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
