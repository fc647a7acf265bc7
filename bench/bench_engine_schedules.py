"""Does the llama.cpp engine answer the same whatever the arrival pattern? The same held-out prompts (combined mode,
a trained adapter) decoded greedily alone, rolling (8 in flight, a new one as soon as one finishes) and in waves (8
at a time, the next 8 when all are done), each compared with transformers; at each divergence, transformers'
logit gap between its token and the engine's (a gap of a few tenths is a near tie; of several logits, corruption).

    python bench/bench_engine_schedules.py --data-dir D [--weights f16] [--limit 104]

Measured (bench/RESULTS.md): waves diverge at gaps of 11-23 logits, all of a wave together, ~35 tokens in.
"""

from __future__ import annotations

import argparse
import threading
from pathlib import Path

from common import emit

from core.models import load_generator
from core.prompt import build_prompt, load_template
from core.settings import load_settings
from eval.runner import load_eval_set
from inference.llamacpp_engine import EngineRequest, engine_from_settings
from retrieval.search import open_retriever


def run(engine, prompts: list[list[int]], adapter: str, max_new: int, penalty: float, schedule: str) -> list[str]:
    out: list[str] = [""] * len(prompts)
    width = 1 if schedule == "alone" else 8
    if schedule == "rolling":
        gate, done, left, lock = threading.Semaphore(width), threading.Event(), [len(prompts)], threading.Lock()

        def finish(i: int, result) -> None:
            out[i] = result.text
            gate.release()
            with lock:
                left[0] -= 1
                if not left[0]:
                    done.set()

        for i, ids in enumerate(prompts):
            gate.acquire()
            engine.submit(EngineRequest(ids, adapter, max_new, 0.0, 1.0, penalty, on_text=lambda t: None,
                                        on_done=lambda r, i=i: finish(i, r)))
        done.wait()
        return out
    for start in range(0, len(prompts), width):
        events = []
        for i in range(start, min(start + width, len(prompts))):
            event = threading.Event()
            events.append(event)
            engine.submit(EngineRequest(prompts[i], adapter, max_new, 0.0, 1.0, penalty, on_text=lambda t: None,
                                        on_done=lambda r, i=i, e=event: (out.__setitem__(i, r.text), e.set())))
        for event in events:
            event.wait()
    return out


def engine_on_held_out(data_dir: Path, weights: str, limit: int | None):
    """The data dir's settings (engine weights set), active adapter (loaded as ``"a"``) and llama.cpp engine, and
    the held-out questions' combined-mode prompts as text and as token ids."""
    from core import artifacts

    settings = load_settings(data_dir=data_dir)
    settings = settings.model_copy(update={"generation": settings.generation.model_copy(
        update={"llamacpp_weights": weights})})
    adapter = artifacts.get_artifact(settings, "adapter", "active")
    items = load_eval_set(settings.eval.eval_file, limit)
    retriever = open_retriever(settings)
    engine = engine_from_settings(settings)
    engine.load_adapter("a", adapter.path / "adapter")
    tok = engine.tokenizer
    texts = [build_prompt(load_template(settings), tok, item.question,
                          [r.to_passage() for r in retriever.search(item.question, k=settings.retrieval.top_k)],
                          max_tokens=settings.generation.max_context_tokens) for item in items]
    return settings, adapter, engine, texts, [tok(t, add_special_tokens=False).input_ids for t in texts]


def first_difference(tok, ours: str, ref: str) -> tuple[list[int], list[int], int]:
    """Both answers' tokens and the index of the first token where they differ (the shorter one's length when
    it is a prefix of the other: no token to compare)."""
    a, b = tok(ours, add_special_tokens=False).input_ids, tok(ref, add_special_tokens=False).input_ids
    k = 0
    while k < min(len(a), len(b)) and a[k] == b[k]:
        k += 1
    return a, b, k


def main() -> None:
    import torch
    from peft import PeftModel

    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--weights", default="f16")
    parser.add_argument("--limit", type=int)
    args = parser.parse_args()
    settings, adapter, engine, texts, prompts = engine_on_held_out(args.data_dir, args.weights, args.limit)
    tok = engine.tokenizer
    max_new, penalty = settings.eval.max_new_tokens, settings.generation.repetition_penalty
    model, _ = load_generator(settings, fresh=True)
    model = PeftModel.from_pretrained(model, str(adapter.path / "adapter")).eval()
    from inference.generation import generate

    reference = [generate(model, tok, [t], settings.generation, max_new_tokens=max_new)[0].text for t in texts]
    result: dict = {"weights": args.weights, "questions": len(prompts)}
    for schedule in ("waves", "rolling", "alone"):  # waves first: on a fresh engine (see RESULTS.md)
        answers = run(engine, prompts, "a", max_new, penalty, schedule)
        gaps = []
        for i, (ours, ref) in enumerate(zip(answers, reference, strict=True)):
            if ours == ref:
                continue
            a, b, k = first_difference(tok, ours, ref)
            if k >= min(len(a), len(b)):
                continue
            with torch.no_grad():
                logits = model(torch.tensor([prompts[i] + b[:k]])).logits[0, -1].float()
            for t in set(b[:k]):  # the answer-only penalty both engines apply
                logits[t] = logits[t] / penalty if logits[t] > 0 else logits[t] * penalty
            gaps.append({"question": i, "token": k, "gap": round(float(logits[b[k]] - logits[a[k]]), 3)})
        result[schedule] = {"identical_to_transformers": sum(x == y for x, y in zip(answers, reference, strict=True)),
                            "divergences": gaps,
                            "over_1_logit": sum(g["gap"] > 1.0 for g in gaps)}
        print(schedule, result[schedule]["identical_to_transformers"], result[schedule]["over_1_logit"], flush=True)
    engine.close()
    emit("engine_schedules", result)


if __name__ == "__main__":
    main()
