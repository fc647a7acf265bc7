"""Greedy agreement of the llama.cpp engine with transformers on the same GGUF weights.

    python bench/bench_engine_parity.py [--questions 20] [--max-tokens 48]

For the first N held-out questions of the sample set (base model, two fixed passages, the serving prompt
template): whether the two answers are identical, and after how many tokens they first differ.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading

from common import emit

from core.models import load_generator
from core.prompt import ContextPassage, build_prompt, load_template
from core.settings import SAMPLE_DIR, load_settings
from inference.generation import generate
from inference.llamacpp_engine import EngineRequest, engine_from_settings

PASSAGES = [ContextPassage("ts-void-label", "Voiding a label", "Open the shipment in Parcelly and click Void label."),
            ContextPassage("billing-plans", "Plans", "Starter is free. Pro costs $29 per month.")]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--questions", type=int, default=20)
    parser.add_argument("--max-tokens", type=int, default=48)
    args = parser.parse_args()
    settings = load_settings()
    model, tokenizer = load_generator(settings)
    engine = engine_from_settings(settings)
    questions = [json.loads(line)["question"] for line in (SAMPLE_DIR / "eval.jsonl").read_text().splitlines()]
    rows = []
    try:
        for question in questions[: args.questions]:
            prompt = build_prompt(load_template(settings), tokenizer, question, PASSAGES)
            done, box = threading.Event(), []
            engine.submit(EngineRequest(tokenizer(prompt, add_special_tokens=False).input_ids, None, args.max_tokens,
                                        0.0, 1.0, settings.generation.repetition_penalty, on_text=lambda t: None,
                                        on_done=lambda r, box=box, done=done: (box.append(r), done.set())))
            done.wait()
            ours = box[0].text
            theirs = generate(model, tokenizer, [prompt], settings.generation, max_new_tokens=args.max_tokens)[0].text
            a, b = tokenizer(ours).input_ids, tokenizer(theirs).input_ids
            common = 0
            while common < min(len(a), len(b)) and a[common] == b[common]:
                common += 1
            rows.append({"question": question, "identical": ours == theirs, "common_prefix_tokens": common})
    finally:
        engine.close()
    prefixes = [r["common_prefix_tokens"] for r in rows]
    emit("engine_parity", {"questions": len(rows), "max_tokens": args.max_tokens,
                           "identical": sum(r["identical"] for r in rows),
                           "common_prefix_tokens": {"median": statistics.median(prefixes),
                                                    "mean": round(statistics.mean(prefixes), 1),
                                                    "min": min(prefixes), "max": max(prefixes)},
                           "rows": rows})


if __name__ == "__main__":
    main()
