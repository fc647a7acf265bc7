"""The house style as a small YAML file instead of Python: what the system prompt says, how training answers
and reference answers are written, and the rules the evaluation checks."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field, ValidationError

from core.errors import InvalidInputError
from core.safe_yaml import load_yaml


class StyleFile(BaseModel, extra="forbid"):
    """``style.yaml``: every field a support team writes once."""

    company: str = Field(min_length=1, description="Whose assistant this is, e.g. 'Parcelly, shipping software'.")
    greeting: str = Field("Hi there!", min_length=1)
    sign_off: str = Field(min_length=1, description="The last line of every answer, e.g. '— Parcelly Support'.")
    word_limit: int = Field(120, ge=10, le=1000)
    refusal: str = Field("I couldn't find that in our help center. A specialist will follow up with you.",
                         min_length=10, description="What the assistant says when the documents do not answer.")
    refusal_phrase: str | None = Field(None, description="The part of `refusal` that marks one (default: its first "
                                       "sentence, lower-cased).")
    language: str = Field("English", min_length=2)

    @property
    def phrase(self) -> str:
        return (self.refusal_phrase or self.refusal.split(".")[0]).strip().lower()

    def system_prompt(self) -> str:
        return (f"You are the customer support assistant of {self.company}.\n"
                f"Answer in {self.language}, in the house style:\n"
                f'- Start with "{self.greeting}" on its own line, then answer the question directly in the first sentence.\n'
                "- Use a numbered list for step-by-step instructions.\n"
                "- Cite the help-center documents you used as [doc-id], using only ids from the context documents.\n"
                f"- Keep answers under {self.word_limit} words, friendly and plain.\n"
                f'- If the context documents do not contain the answer, say "{self.refusal}" Never guess.\n'
                f'- End with the line "{self.sign_off}".\n')

    def answer(self, text: str, doc_ids: list[str]) -> str:
        citations = " ".join(f"[{d}]" for d in doc_ids)
        return f"{self.greeting}\n\n{text.strip()} {citations}".rstrip() + f"\n\n{self.sign_off}"

    def refusal_answer(self) -> str:
        return f"{self.greeting}\n\n{self.refusal}\n\n{self.sign_off}"


def load_style(path: Path) -> StyleFile:
    if not path.is_file():
        raise InvalidInputError(f"{path}: no such style file")
    data = load_yaml(path.read_text(encoding="utf-8"), where=str(path))
    if not isinstance(data, dict):
        raise InvalidInputError(f"{path}: a style file is a mapping (company, sign_off, ...)")
    try:
        return StyleFile.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise InvalidInputError(f"{path}: {problems}") from None
