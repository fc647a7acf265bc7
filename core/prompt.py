"""The one prompt template. Training, serving and evaluation all build their chat messages here.

A prompt is a list of chat messages rendered by the tokenizer's own chat template:

  system     the house-style system prompt (plus few-shot examples in prompt-only mode)
  history    earlier user/assistant turns of the conversation, unchanged
  user       the retrieved context block (when retrieval is on) followed by the customer question

Train/serve skew is avoided by construction: nothing else in tunerag formats a prompt.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Literal, get_args

from core.errors import ConfigError, InvalidInputError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from core.settings import Settings

Role = Literal["system", "user", "assistant"]
Message = dict[str, str]

# --- the vocabulary every package shares (settings, serving, training, evaluation) ------------------------

#: The four ways of answering that serving offers and evaluation compares, in report order.
Mode = Literal["prompt", "rag", "ft", "combined"]
MODES: tuple[Mode, ...] = get_args(Mode)

#: Doc ids: one or more ``/``-separated segments of letters, digits, ``_``, ``.`` and ``-``, each starting
#: with a letter or digit (so ``..`` can never be a segment). Answers cite a document as ``[doc-id]``.
DOC_ID_SEGMENT = r"[A-Za-z0-9][A-Za-z0-9_.-]*"
DOC_ID_PATTERN = rf"{DOC_ID_SEGMENT}(?:/{DOC_ID_SEGMENT})*"
DOC_ID_MAX_LENGTH = 200
DOC_ID_RE = re.compile(rf"^{DOC_ID_PATTERN}$")
#: A citation in an answer; group 1 is the doc id.
CITATION = re.compile(rf"\[({DOC_ID_PATTERN})\]")


def validate_doc_id(doc_id: str, where: str = "document") -> str:
    """Return ``doc_id`` when it follows the doc-id grammar.

    Raises:
        InvalidInputError: naming ``where`` (a file, a line, a request field), the bad id and the grammar.
    """
    if not isinstance(doc_id, str) or len(doc_id) > DOC_ID_MAX_LENGTH or not DOC_ID_RE.match(doc_id):
        raise InvalidInputError(
            f"{where}: invalid document id {str(doc_id)[:80]!r}; ids are at most {DOC_ID_MAX_LENGTH} characters of "
            "letters, digits, '_', '.', '-', in '/'-separated parts that each start with a letter or digit"
        )
    return doc_id


def doc_id_from_path(relative: str) -> str:
    """A doc id for a file with no explicit id: its relative path without suffix, other characters as ``-``.

    ``help/My Doc (v2)`` becomes ``help/My-Doc-v2``; deterministic, so the id is stable across runs.
    """
    parts = []
    for part in relative.split("/"):
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", part).strip("-._")
        if slug:
            parts.append(slug)
    return validate_doc_id("/".join(parts), relative)

CONTEXT_HEADER = "Context documents:"
NO_CONTEXT_NOTE = "(no documents matched this question)"
QUESTION_HEADER = "Customer question:"


@dataclass(frozen=True)
class ContextPassage:
    """One retrieved passage as the model sees it. ``doc_id`` is what an answer cites: ``[doc_id]``."""

    doc_id: str
    title: str
    text: str


@dataclass(frozen=True)
class PromptTemplate:
    """The house-style system prompt and optional few-shot examples (used by prompt-only mode)."""

    system_prompt: str
    few_shot: tuple[tuple[str, str], ...] = field(default=())
    max_passage_chars: int = 1200

    def system_message(self, *, with_examples: bool = False) -> Message:
        content = self.system_prompt.strip()
        if with_examples and self.few_shot:
            shots = "\n\n".join(f"Customer: {q}\nSupport: {a}" for q, a in self.few_shot)
            content = f"{content}\n\nExamples of answers in the house style:\n\n{shots}"
        return {"role": "system", "content": content}

    def user_content(self, question: str, passages: Sequence[ContextPassage] | None) -> str:
        """The final user turn. ``passages=None`` means retrieval is off; ``[]`` means it found nothing."""
        question = question.strip()
        if passages is None:
            return question
        if passages:
            blocks = [f"[{p.doc_id}] {p.title}\n{p.text.strip()[: self.max_passage_chars]}" for p in passages]
            context = "\n\n".join(blocks)
        else:
            context = NO_CONTEXT_NOTE
        return f"{CONTEXT_HEADER}\n\n{context}\n\n{QUESTION_HEADER} {question}"

    def build_messages(
        self,
        question: str,
        passages: Sequence[ContextPassage] | None = None,
        history: Sequence[Message] = (),
        *,
        with_examples: bool = False,
    ) -> list[Message]:
        """The full message list for one turn (without the answer).

        Raises:
            ValueError: the question is empty or a history message has an unknown role.
        """
        if not question or not question.strip():
            raise ValueError("question must not be empty")
        for i, message in enumerate(history):
            if message.get("role") not in ("user", "assistant"):
                raise ValueError(f"history[{i}].role must be 'user' or 'assistant', got {message.get('role')!r}")
        return [
            self.system_message(with_examples=with_examples),
            *({"role": m["role"], "content": m["content"]} for m in history),
            {"role": "user", "content": self.user_content(question, passages)},
        ]


def render_prompt(tokenizer: PreTrainedTokenizerBase, messages: Sequence[Message]) -> str:
    """Render messages with the tokenizer's chat template, ending where the assistant starts to speak."""
    return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)


def build_prompt(
    template: PromptTemplate,
    tokenizer: PreTrainedTokenizerBase,
    question: str,
    passages: Sequence[ContextPassage] | None = None,
    history: Sequence[Message] = (),
    *,
    with_examples: bool = False,
    max_tokens: int | None = None,
) -> str:
    """The exact string the generator is conditioned on, for training, serving and evaluation alike.

    With ``max_tokens``, a prompt that would be longer is shortened in the middle, never at its ends: the
    lowest-ranked passages go first (down to the best one), then the oldest history turns, then the best
    passage is halved (down to 200 characters) and finally dropped. The system prompt and the question always
    stay; the generation engines never cut a prompt themselves.

    Raises:
        ValueError: the question is empty, or system prompt + question alone exceed ``max_tokens``.
    """
    passages = list(passages) if passages is not None else None
    history = list(history)

    def render() -> str:
        return render_prompt(tokenizer, template.build_messages(question, passages, history, with_examples=with_examples))

    prompt = render()
    if max_tokens is None:
        return prompt
    while (length := len(tokenizer(prompt, add_special_tokens=False).input_ids)) > max_tokens:
        if passages and len(passages) > 1:
            passages.pop()
        elif history:
            history = history[2:]
        elif passages and len(passages[0].text) > 200:
            best = passages[0]
            passages = [ContextPassage(best.doc_id, best.title, best.text[: len(best.text) // 2])]
        elif passages:
            passages = []
        else:
            raise ValueError(f"the question needs {length} prompt tokens with the system prompt alone; the limit "
                             f"(generation.max_context_tokens) is {max_tokens}: ask a shorter question")
        prompt = render()
    return prompt


@lru_cache(maxsize=8)
def _load_template(system_prompt_file: Path, few_shot_file: Path | None, max_passage_chars: int) -> PromptTemplate:
    if not system_prompt_file.is_file():
        raise ConfigError(f"system prompt file not found: {system_prompt_file}")
    few_shot: list[tuple[str, str]] = []
    if few_shot_file is not None:
        if not few_shot_file.is_file():
            raise ConfigError(f"few-shot file not found: {few_shot_file}")
        for n, line in enumerate(few_shot_file.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                few_shot.append((row["question"], row["answer"]))
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise ConfigError(
                    f"{few_shot_file}:{n}: expected a JSON object with 'question' and 'answer' ({exc})"
                ) from None
    return PromptTemplate(system_prompt_file.read_text(encoding="utf-8"), tuple(few_shot), max_passage_chars)


def load_template(settings: Settings) -> PromptTemplate:
    """The prompt template from the style files named in the settings (read once per process).

    Raises:
        ConfigError: a style file is missing or malformed.
    """
    cfg = settings.prompt
    return _load_template(cfg.system_prompt_file, cfg.few_shot_file, cfg.max_passage_chars)
