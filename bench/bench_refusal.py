"""How well an adapter ranks refusals: the probability it gives its refusal, per held-out question.

For every question of the eval set the combined prompt is built as evaluation builds it (fine-tuned
embedder's retrieval, top_k passages), the adapter is teacher-forced through the opening it shares with its
answers (the greeting) and the probability of the refusal's next token is read. The refusal gate at
threshold t (``generation.refusal_min_prob``) refuses exactly where that probability is >= t, so the table
printed is the gate's trade-off: correct refusals of unanswerable questions against false refusals of
answerable ones, per threshold. One forward pass per question (about a minute for 104 on 2 cores).

    python bench/bench_refusal.py --data-dir D        # D: a data dir with a trained embedder and adapter
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from common import emit

THRESHOLDS = (0.1, 0.2, 0.3, 0.35, 0.4, 0.45, 0.5, 0.6, 0.7, 0.8, 0.9)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=None, help="Folder for the retrieval index (default: D/bench-refusal).")
    args = parser.parse_args()

    import torch
    from peft import PeftModel

    from core.jsonl import read_jsonl
    from core.models import load_generator
    from core.prompt import build_prompt, load_template
    from core.settings import load_settings
    from eval.runner import _artifact, _retriever, load_eval_set
    from inference.refusal import REFUSAL_FILE, load_gate, shared_prefix

    settings = load_settings(data_dir=args.data_dir)
    adapter = _artifact(settings, "adapter", settings.eval.adapter)
    embedder = _artifact(settings, "embedder", settings.eval.embedder)
    if adapter is None or embedder is None:
        raise SystemExit(f"{args.data_dir}: needs a trained embedder and adapter (tunerag train embedder / generator)")
    model, tokenizer = load_generator(settings, fresh=True)
    gate = load_gate(adapter.path / "adapter", tokenizer, 1.0)  # the refusal and opening the gate would use
    if gate is None:
        raise SystemExit(f"{adapter.path / 'adapter' / REFUSAL_FILE} is missing: the adapter was trained without a refusal")
    model = PeftModel.from_pretrained(model, str(adapter.path / "adapter")).eval()
    refusal, k = list(gate.tokens), gate.opening
    if not k:  # an adapter trained before the opening was recorded: the same rule as training's write_refusal
        answers = [tokenizer(row["completion"].strip(), add_special_tokens=False).input_ids
                   for _, row in read_jsonl(adapter.path / "data" / "train.jsonl") if row["variant"] == "gold"]
        k = shared_prefix(refusal, answers)
    if k >= len(refusal):
        raise SystemExit("the refusal is a prefix of a grounded answer: nothing to decide between")

    items = load_eval_set(settings.eval.eval_file)
    retriever = _retriever(settings, str(embedder.path / "model"), args.out or args.data_dir / "bench-refusal")
    found = retriever.search_many([i.question for i in items], k=settings.retrieval.top_k)
    template = load_template(settings)
    began = time.perf_counter()
    rows = []
    for item, results in zip(items, found, strict=True):
        prompt = build_prompt(template, tokenizer, item.question, [r.to_passage() for r in results],
                              max_tokens=settings.generation.max_context_tokens)
        ids = tokenizer(prompt, add_special_tokens=False).input_ids + refusal[:k]  # (the prompt ends in "\n")
        with torch.inference_mode():
            probs = model(torch.tensor([ids])).logits[0, -1].softmax(-1)
        rows.append({"id": item.id, "answerable": item.answerable, "p_refusal": round(float(probs[refusal[k]]), 4),
                     "top_score": round(results[0].score, 4) if results else None})
    answerable = [r for r in rows if r["answerable"]]
    unanswerable = [r for r in rows if not r["answerable"]]
    curve = [{"threshold": t,
              "correct_refusals": sum(r["p_refusal"] >= t for r in unanswerable),
              "false_refusals": sum(r["p_refusal"] >= t for r in answerable)} for t in THRESHOLDS]
    emit("refusal", {
        "adapter": adapter.id, "embedder": embedder.id, "decision_token": tokenizer.decode(refusal[k]),
        "opening": tokenizer.decode(refusal[:k]), "answerable": len(answerable), "unanswerable": len(unanswerable),
        "seconds": round(time.perf_counter() - began, 1), "curve": curve, "questions": rows,
    })


if __name__ == "__main__":
    main()
