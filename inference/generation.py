"""The generation engine: batched decoding of rendered prompts with a causal LM.

One function, ``generate``, used by the CLI, the API (behind its dynamic batcher) and evaluation, so every
path decodes with the same settings. Decoding on CPU is memory-bound: a batch of 8 gives several times
the tokens per second of one-at-a-time, so callers should pass prompts in batches.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from core.settings import GenerationSettings
from inference.refusal import RefusalGate
from inference.sampling import logits_processing

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass(frozen=True)
class Generation:
    """One decoded answer with its token counts and the wall time of the batch it was decoded in.

    ``finish_reason`` is ``"stop"`` when the model ended the answer (EOS) and ``"length"`` when
    ``max_new_tokens`` cut it, as in the OpenAI API.
    """

    text: str
    prompt_tokens: int
    completion_tokens: int
    seconds: float
    finish_reason: str = "stop"


def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    config: GenerationSettings,
    *,
    max_new_tokens: int | None = None,
    temperature: float | None = None,
    streamer: object | None = None,
    stop: threading.Event | None = None,
    refusal_gate: RefusalGate | None = None,
) -> list[Generation]:
    """Decode ``prompts`` (already rendered by :mod:`core.prompt`) in batches of ``config.batch_size``.

    Prompts longer than ``config.max_context_tokens`` keep their last tokens (the question sits at the end).
    A ``streamer`` (transformers ``TextIteratorStreamer``) receives tokens as they are decoded; use it with
    a single prompt. Setting ``stop`` ends the decoding after the current step (a cancelled request).
    ``refusal_gate`` (the selected adapter's, :mod:`inference.refusal`) masks an unsure refusal.
    Returns one :class:`Generation` per prompt, in order.
    """
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    class _Stopped(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs) -> bool:  # noqa: ANN001
            return stop is not None and stop.is_set()

    if not prompts:
        return []
    max_new = max_new_tokens or config.max_new_tokens
    temp = config.temperature if temperature is None else temperature
    sampling = temp > 0
    results: list[Generation] = []
    old_side, old_trunc = tokenizer.padding_side, tokenizer.truncation_side
    tokenizer.padding_side, tokenizer.truncation_side = "left", "left"
    try:
        for start in range(0, len(prompts), config.batch_size):
            batch = list(prompts[start : start + config.batch_size])
            began = time.perf_counter()
            enc = tokenizer(
                batch,
                return_tensors="pt",
                padding=True,
                truncation=True,
                max_length=config.max_context_tokens,
                add_special_tokens=False,
            ).to(model.device)
            with torch.inference_mode():
                out = model.generate(
                    **enc,
                    max_new_tokens=max_new,
                    do_sample=sampling,
                    temperature=temp if sampling else None,
                    top_p=config.top_p if sampling else None,
                    top_k=None,
                    **logits_processing(config, enc["input_ids"].shape[1], refusal_gate),
                    pad_token_id=tokenizer.pad_token_id,
                    streamer=streamer,
                    stopping_criteria=StoppingCriteriaList([_Stopped()]) if stop is not None else None,
                )
            elapsed = time.perf_counter() - began
            new_tokens = out[:, enc["input_ids"].shape[1] :]
            for row, mask in zip(new_tokens, enc["attention_mask"], strict=True):
                ids = row.tolist()
                stopped = tokenizer.eos_token_id in ids
                if stopped:
                    ids = ids[: ids.index(tokenizer.eos_token_id) + 1]
                text = tokenizer.decode(ids, skip_special_tokens=True).strip()
                results.append(Generation(text, int(mask.sum()), len(ids), elapsed, "stop" if stopped else "length"))
    finally:
        tokenizer.padding_side, tokenizer.truncation_side = old_side, old_trunc
    return results
