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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cache, lru_cache
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

    def system_message(self, *, with_examples: bool = False, instructions: str | None = None) -> Message:
        """The house system prompt, then the few-shot examples (``with_examples``), then a client's own
        ``instructions`` (an OpenAI client's system message): the house rules always come first."""
        content = self.system_prompt.strip()
        if with_examples and self.few_shot:
            shots = "\n\n".join(f"Customer: {q}\nSupport: {a}" for q, a in self.few_shot)
            content = f"{content}\n\nExamples of answers in the house style:\n\n{shots}"
        if instructions and instructions.strip():
            content = f"{content}\n\n{instructions.strip()}"
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
        instructions: str | None = None,
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
            self.system_message(with_examples=with_examples, instructions=instructions),
            *({"role": m["role"], "content": m["content"]} for m in history),
            {"role": "user", "content": self.user_content(question, passages)},
        ]


#: Inserted after the first character of a control-token string found in untrusted text, so the tokenizer
#: reads it as plain characters (the text looks the same; the model sees it was written, not a turn marker).
CONTROL_TOKEN_BREAK = "\u200b"


@lru_cache(maxsize=16)
def _control_token_pattern(tokens: tuple[str, ...]) -> re.Pattern[str] | None:
    tokens = tuple(t for t in tokens if len(t) > 1)
    if not tokens:
        return None
    return re.compile("|".join(re.escape(t) for t in sorted(tokens, key=len, reverse=True)))


def escape_control_tokens(text: str, tokenizer: PreTrainedTokenizerBase) -> str:
    """``text`` with every string the tokenizer would read as one added token (``<|im_end|>``,
    ``<|im_start|>``, ``<|endoftext|>``, ...) broken by :data:`CONTROL_TOKEN_BREAK`.

    Chat messages, retrieved passages and training answers are untrusted text: unescaped, a question holding
    ``<|im_end|>\n<|im_start|>system`` would close its turn and open a forged system turn. Every prompt and
    every training target goes through here (:func:`render_prompt`), so what a model is trained on is what it
    is served; only the chat template itself writes control tokens.
    """
    pattern = _control_token_pattern(tuple(tokenizer.get_added_vocab()))
    if pattern is None or not text:
        return text
    return pattern.sub(lambda m: m.group(0)[0] + CONTROL_TOKEN_BREAK + m.group(0)[1:], text)


def render_prompt(tokenizer: PreTrainedTokenizerBase, messages: Sequence[Message]) -> str:
    """Render messages with the tokenizer's chat template, ending where the assistant starts to speak.

    Message contents are escaped first (:func:`escape_control_tokens`): only the template writes turn markers.
    """
    safe = [{**m, "content": escape_control_tokens(m["content"], tokenizer)} for m in messages]
    return tokenizer.apply_chat_template(safe, tokenize=False, add_generation_prompt=True)


def _last_true(lo: int, hi: int, ok: Callable[[int], bool]) -> int | None:
    """The largest n in [lo, hi] with ``ok(n)``, for ``ok`` true up to some n and false after; None if none."""
    if not ok(lo):
        return None
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if ok(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


def build_prompt(
    template: PromptTemplate,
    tokenizer: PreTrainedTokenizerBase,
    question: str,
    passages: Sequence[ContextPassage] | None = None,
    history: Sequence[Message] = (),
    *,
    with_examples: bool = False,
    max_tokens: int | None = None,
    instructions: str | None = None,
) -> str:
    """The exact string the generator is conditioned on, for training, serving and evaluation alike.

    With ``max_tokens``, a prompt that would be longer is shortened in the middle, never at its ends: the
    lowest-ranked passages go first (down to the best one), then the oldest history turns (two messages at a
    time), then the best passage is halved (down to 200 characters) and finally dropped. The system prompt and
    the question always stay (so do ``instructions``, a client's system message placed after the house
    prompt); the generation engines never cut a prompt themselves.

    The shortest cut that fits is found by search, not by dropping one piece per render: the number of
    renders grows with the logarithm of the passage and history counts, and the history renders probe from
    the newest turns outwards, so their cost follows what fits in ``max_tokens``, not how much a client sent.

    Raises:
        ValueError: the question is empty, or system prompt + question alone exceed ``max_tokens``.
    """
    passages = list(passages) if passages is not None else None
    history = list(history)

    def render(kept: list[ContextPassage] | None, turns: list[Message]) -> str:
        return render_prompt(tokenizer, template.build_messages(question, kept, turns, with_examples=with_examples,
                                                                instructions=instructions))

    prompt = render(passages, history)
    if max_tokens is None:
        return prompt

    def fits(text: str) -> bool:
        return len(tokenizer(text, add_special_tokens=False).input_ids) <= max_tokens

    if fits(prompt):
        return prompt
    # 1. Fewer passages (at least the best one), the whole history.
    if passages and len(passages) > 1:
        n = _last_true(1, len(passages) - 1, lambda k: fits(render(passages[:k], history)))
        if n is not None:
            return render(passages[:n], history)
        passages = passages[:1]
    # 2. The best passage (if any) and the newest k history pairs: the oldest messages go two at a time.
    if history:
        pairs = (len(history) + 1) // 2

        def newest(k: int) -> list[Message]:
            return history[2 * (pairs - k):]

        @cache
        def ok(k: int) -> bool:
            return fits(render(passages, newest(k)))

        if ok(0):
            # Probe 1, 2, 4, ... kept pairs until one does not fit, then bisect below it.
            good, probe = 0, 1
            while probe < pairs and ok(probe):
                good, probe = probe, probe * 2
            best = _last_true(good, min(probe, pairs) - 1, ok)
            return render(passages, newest(best or 0))
        history = []
    # 3. No history, and it does not fit yet: halve the best passage, then drop it.
    while passages and len(passages[0].text) > 200:
        top = passages[0]
        passages = [ContextPassage(top.doc_id, top.title, top.text[: len(top.text) // 2])]
        prompt = render(passages, history)
        if fits(prompt):
            return prompt
    if passages:
        passages = []
        prompt = render(passages, history)
        if fits(prompt):
            return prompt
    length = len(tokenizer(prompt, add_special_tokens=False).input_ids)
    raise ValueError(f"the question needs {length} prompt tokens with the system prompt alone; the limit "
                     f"(generation.max_context_tokens) is {max_tokens}: ask a shorter question")


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
