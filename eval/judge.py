"""Optional LLM-as-judge: an OpenAI-compatible chat model grades each answer against the reference.

Used only when ``eval.judge_base_url`` is configured; never required. The judge sees the question, the
reference answer and the candidate answer and replies ``Score: N`` (1-5); the metric ``judge_score`` is
(N - 1) / 4, so it lies in [0, 1] like the other metrics. Replies without a score count as missing.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import httpx

from core.settings import EvalSettings

RUBRIC = (
    "You grade customer-support answers. Compare the candidate answer with the reference answer for the "
    "customer's question. 5: same facts, nothing wrong or missing. 4: correct, minor omission. 3: partly "
    "correct. 2: mostly wrong or missing the point. 1: wrong, or answers a different question. A correct "
    "refusal to answer counts as correct when the reference also refuses. Reply with 'Score: N' only."
)
_SCORE = re.compile(r"score\s*[:=]?\s*([1-5])", re.IGNORECASE)


def parse_score(reply: str) -> float | None:
    match = _SCORE.search(reply)
    return (int(match.group(1)) - 1) / 4 if match else None


class Judge:
    """Grades answers through ``POST {base_url}/v1/chat/completions``."""

    def __init__(self, cfg: EvalSettings, client: httpx.Client | None = None) -> None:
        if not cfg.judge_base_url:
            raise ValueError("eval.judge_base_url is not set")
        headers = {"Authorization": f"Bearer {cfg.judge_api_key}"} if cfg.judge_api_key else {}
        self.model = cfg.judge_model or "judge"
        self.client = client or httpx.Client(base_url=cfg.judge_base_url.rstrip("/"), headers=headers, timeout=120)

    def score(self, question: str, reference: str, answer: str) -> float | None:
        response = self.client.post("/v1/chat/completions", json={
            "model": self.model, "temperature": 0, "max_tokens": 8,
            "messages": [{"role": "system", "content": RUBRIC},
                         {"role": "user", "content": f"Question: {question}\n\nReference answer:\n{reference}\n\n"
                                                     f"Candidate answer:\n{answer}"}]})
        response.raise_for_status()
        return parse_score(response.json()["choices"][0]["message"]["content"])

    def score_many(self, questions: Sequence[str], references: Sequence[str], answers: Sequence[str]) -> list[float | None]:
        return [self.score(q, r, a) for q, r, a in zip(questions, references, answers, strict=True)]
