"""Catastrophic-forgetting check after every generator run: what the adapter changed outside the domain.

The general set is text nobody here wrote, shipped with CPython: the Python reference manual's topic texts
(``pydoc_data.topics``). Two scores, base model (adapter disabled through peft) against base + adapter:

- **perplexity** on prose paragraphs of those texts: a model updated hard on a narrow set gets worse at text in
  general;
- **instruction agreement**: greedy answers to general instructions derived from the topics' titles ("Explain
  the "if" statement ...") scored against the base model's own answers with ROUGE-L (1.0: unchanged). An
  adapter that answers everything in the house style, or refuses, scores low.

The result goes into the adapter's manifest (before, after, change) with a warning when a threshold of
``train_generator.forgetting`` is passed.
"""

from __future__ import annotations

import logging
import math
import random
import re
from typing import Any

from core.prompt import render_prompt
from core.settings import ForgettingSettings

logger = logging.getLogger(__name__)
SOURCE = "pydoc_data.topics: the Python reference manual's topic texts, shipped with CPython"


def general_passages(count: int, chars: int, seed: int = 0) -> list[str]:
    """Prose paragraphs (no grammar rules or code) of the reference manual, cut to ``chars`` characters."""
    from pydoc_data.topics import topics

    paragraphs = []
    for text in topics.values():
        for block in re.split(r"\n\s*\n", text):
            block = " ".join(block.split())
            letters = sum(c.isalpha() or c == " " for c in block)
            if len(block) >= 200 and letters / len(block) > 0.9 and "::=" not in block:
                paragraphs.append(block[:chars])
    random.Random(seed).shuffle(paragraphs)
    return paragraphs[:count]


def _titles(seed: int = 0) -> list[str]:
    from pydoc_data.topics import topics

    titles = sorted({text.strip().splitlines()[0].strip() for text in topics.values() if text.strip()})
    titles = [t for t in titles if 4 <= len(t) <= 60 and not t.startswith("*")]
    random.Random(seed).shuffle(titles)
    return titles


def general_instructions(count: int, seed: int = 0) -> list[str]:
    """The check's general instructions: the first ``count`` topic titles (a fixed shuffle)."""
    return [f"In two sentences, explain {title} in Python." for title in _titles(seed)[:count]]


def replay_instructions(count: int, held_out: int) -> list[str]:
    """Instructions for general replay in training: other topic titles than the check's first ``held_out``, in
    other words, so the check never scores what replay trained on."""
    titles = _titles()[held_out:]
    forms = ("Briefly describe {t} in Python.", "What should a beginner know about {t} in Python?")
    return [forms[i % len(forms)].format(t=t) for i, t in enumerate(titles[:count])]


def replay_rows(model: Any, tokenizer: Any, count: int, held_out: int, max_new_tokens: int) -> list[dict[str, str]]:
    """General replay rows: the base model's own greedy answers to general instructions (self-distillation),
    rendered through the one chat-formatting path, as prompt/completion rows."""
    instructions = replay_instructions(count, held_out)
    was_training = model.training
    model.eval()  # greedy answers without dropout
    try:
        answers = greedy_answers(model, tokenizer, instructions, max_new_tokens)
    finally:
        model.train(was_training)
    return [{"prompt": render_prompt(tokenizer, [{"role": "user", "content": i}]), "completion": a + tokenizer.eos_token,
             "variant": "replay"} for i, a in zip(instructions, answers, strict=True) if a]


def perplexity(model: Any, tokenizer: Any, texts: list[str]) -> float:
    import torch

    total_nll, total_tokens = 0.0, 0
    with torch.no_grad():
        for text in texts:
            ids = tokenizer(text, return_tensors="pt").input_ids.to(model.device)
            out = model(input_ids=ids, labels=ids)
            n = ids.shape[1] - 1
            total_nll += float(out.loss) * n
            total_tokens += n
    return math.exp(total_nll / max(total_tokens, 1))


def greedy_answers(model: Any, tokenizer: Any, instructions: list[str], max_new_tokens: int) -> list[str]:
    import torch

    answers = []
    with torch.no_grad():
        for instruction in instructions:
            prompt = render_prompt(tokenizer, [{"role": "user", "content": instruction}])
            ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).input_ids.to(model.device)
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                 do_sample=False, pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
            answers.append(tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip())
    return answers


def forgetting_check(model: Any, tokenizer: Any, cfg: ForgettingSettings) -> dict[str, Any]:
    """Score base (adapter disabled) and adapter on the general set; ``model`` is a peft model."""
    from rouge_score import rouge_scorer

    passages = general_passages(cfg.passages, cfg.passage_chars)
    instructions = general_instructions(cfg.instructions)
    was_training = model.training
    model.eval()
    try:
        with model.disable_adapter():
            base_ppl = perplexity(model, tokenizer, passages)
            base_answers = greedy_answers(model, tokenizer, instructions, cfg.max_new_tokens)
        adapter_ppl = perplexity(model, tokenizer, passages)
        adapter_answers = greedy_answers(model, tokenizer, instructions, cfg.max_new_tokens)
    finally:
        model.train(was_training)
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    # Identical answers agree fully (ROUGE-L of two empty strings would say 0).
    agreement = [1.0 if a == b else scorer.score(b, a)["rougeL"].fmeasure
                 for a, b in zip(adapter_answers, base_answers, strict=True)]
    change = adapter_ppl / base_ppl - 1
    mean_agreement = sum(agreement) / max(len(agreement), 1)
    warnings = []
    if change > cfg.max_perplexity_increase:
        warnings.append(f"general-text perplexity rose {change:+.1%} (threshold +{cfg.max_perplexity_increase:.0%})")
    if mean_agreement < cfg.min_instruction_agreement:
        warnings.append(f"answers to general instructions agree with the base model's at ROUGE-L {mean_agreement:.2f} "
                        f"(threshold {cfg.min_instruction_agreement:.2f})")
    for warning in warnings:
        logger.warning("forgetting check: %s", warning)
    return {"source": SOURCE, "passages": len(passages), "instructions": len(instructions),
            "perplexity": {"base": round(base_ppl, 3), "adapter": round(adapter_ppl, 3), "change": round(change, 4)},
            "instruction_agreement_rouge_l": {"mean": round(mean_agreement, 4), "min": round(min(agreement), 4)},
            "examples": [{"instruction": i, "base": b[:300], "adapter": a[:300]}
                         for i, b, a in list(zip(instructions, base_answers, adapter_answers, strict=True))[:3]],
            "thresholds": {"max_perplexity_increase": cfg.max_perplexity_increase,
                           "min_instruction_agreement": cfg.min_instruction_agreement},
            "warnings": warnings}
