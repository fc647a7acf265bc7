"""The house-style checker: tests an answer against the style guide's automatable rules.

Rules (data/sample/style_guide.md, 1-6):
  greeting   the first line is exactly the greeting
  sign_off   the last line is exactly the sign-off
  length     at most ``max_words`` words, not counting the sign-off
  citation   an answer that is not a refusal cites at least one ``[doc-id]``; a refusal cites nothing
  steps      when the reference answer has numbered steps, so does the answer
  no_ai      never "As an AI"
An answer *adheres* when every applicable rule passes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from core.prompt import CITATION
from core.settings import EvalSettings

STEP = re.compile(r"^\s*1\.\s", re.MULTILINE)


@dataclass(frozen=True)
class StyleRules:
    greeting: str
    sign_off: str
    max_words: int
    refusal_phrase: str

    @classmethod
    def from_settings(cls, cfg: EvalSettings) -> StyleRules:
        return cls(cfg.style_greeting, cfg.style_sign_off, cfg.style_max_words, cfg.refusal_phrase)


def is_refusal(answer: str, rules: StyleRules) -> bool:
    return rules.refusal_phrase.lower() in answer.lower().replace("’", "'")


def check_style(answer: str, rules: StyleRules, reference: str | None = None) -> dict[str, bool]:
    """Each rule's verdict, plus ``adheres`` (all rules pass)."""
    lines = [line.strip() for line in answer.strip().splitlines() if line.strip()]
    body = lines[:-1] if lines and lines[-1] == rules.sign_off else lines
    refusal = is_refusal(answer, rules)
    cites = bool(CITATION.search(answer))
    verdict = {
        "greeting": bool(lines) and lines[0] == rules.greeting,
        "sign_off": bool(lines) and lines[-1] == rules.sign_off,
        "length": len(" ".join(body).split()) <= rules.max_words,
        "citation": (not cites) if refusal else cites,
        "steps": not (reference and STEP.search(reference)) or bool(STEP.search(answer)),
        "no_ai": "as an ai" not in answer.lower(),
    }
    verdict["adheres"] = all(verdict.values())
    return verdict
