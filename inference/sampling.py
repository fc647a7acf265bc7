"""Sampling, one module for every engine: the repetition penalty and its scope, the refusal gate, greedy or
temperature + nucleus sampling.

transformers generates through logits processors (:func:`logits_processing`: transformers' own
``RepetitionPenaltyLogitsProcessor``, whose ``prompt_ignore_length`` gives the answer-only scope, and the
refusal gate); the llama.cpp engine samples its logits in numpy with :func:`sample_next`, the same semantics
(CTRL penalty: positive logits divided, negative multiplied, on the tokens seen so far). The remote backend
sends the same settings to its server.
"""

from __future__ import annotations

import numpy as np

from core.settings import GenerationSettings
from inference.refusal import RefusalGate


def logits_processing(config: GenerationSettings, prompt_length: int,
                      refusal_gate: RefusalGate | None) -> dict[str, object]:
    """``generate`` keyword arguments: the refusal gate on the model's own logits, then the configured
    repetition penalty and scope (see GenerationSettings). Prompts are left-padded to ``prompt_length``."""
    from transformers import LogitsProcessorList, RepetitionPenaltyLogitsProcessor

    processors: list[object] = [RefusalGateProcessor(refusal_gate, prompt_length)] if refusal_gate else []
    if config.repetition_penalty == 1.0 or config.repetition_penalty_scope == "prompt_and_answer":
        return {"repetition_penalty": config.repetition_penalty, "logits_processor": LogitsProcessorList(processors)}
    processors.append(RepetitionPenaltyLogitsProcessor(config.repetition_penalty, prompt_ignore_length=prompt_length))
    return {"logits_processor": LogitsProcessorList(processors)}


class RefusalGateProcessor:
    """:class:`inference.refusal.RefusalGate` as a transformers logits processor (rows whose answer so far is a
    prefix of the refusal; answers start at ``prompt_length`` in every left-padded row)."""

    def __init__(self, gate: RefusalGate, prompt_length: int) -> None:
        self.gate, self.prompt_length = gate, prompt_length

    def __call__(self, input_ids, scores):  # (LongTensor, FloatTensor) -> FloatTensor
        answers = input_ids[:, self.prompt_length :]
        if answers.shape[1] >= len(self.gate.tokens):
            return scores
        for row, answer in enumerate(answers.tolist()):
            blocked = self.gate.blocked(answer, scores[row].float().cpu().numpy())
            if blocked is not None:
                scores[row, blocked] = float("-inf")
        return scores


def sample_next(logits: np.ndarray, seen: np.ndarray, penalty: float, temperature: float, top_p: float,
            rng: np.random.Generator) -> int:
    """transformers' semantics: repetition penalty on the ``seen`` tokens (the answer's, plus the prompt's
    when the request says so), then greedy or temperature + nucleus sampling."""
    x = np.array(logits, dtype=np.float32)
    if penalty != 1.0:
        picked = x[seen]
        x[seen] = np.where(picked > 0, picked / penalty, picked * penalty)
    if temperature <= 0:
        return int(np.argmax(x))
    x = x / temperature
    order = np.argsort(-x)
    probs = np.exp(x[order] - x[order[0]])
    probs /= probs.sum()
    if top_p < 1.0:
        keep = int(np.searchsorted(np.cumsum(probs), top_p) + 1)
        probs = probs[:keep] / probs[:keep].sum()
        order = order[:keep]
    return int(order[rng.choice(len(probs), p=probs)])
