"""Chat data for the LoRA generator: validation, cleaning, de-duplication, splitting, RAFT-style contexts.

Input is chat JSONL, one example per line::

    {"id": "...", "doc_ids": ["billing-plans"], "messages": [{"role": "system"|"user"|"assistant", "content": "..."}]}

The last message is the assistant answer to learn; earlier user/assistant turns become history. The
file's system message is replaced by the configured system prompt, so training sees what serving sends.

Each example becomes a (prompt, completion) pair whose prompt is built by :func:`core.prompt.build_prompt`
with passages from the real retriever (the RAFT recipe):
  * ``gold``        retrieved passages with the cited document guaranteed among them -> the answer;
  * ``distractors`` passages without the cited document -> the refusal answer: for an unanswerable question
    its own retrieved passages; for an answerable one either its own with the cited document removed
    (``near``, on-topic context that lacks the answer) or another question's (``other_questions``);
  * ``no_context``  retrieval off (the FT-only serving mode) -> the answer without citations.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from core.errors import InvalidInputError
from core.jsonl import read_jsonl
from core.prompt import CITATION, ContextPassage, Message, PromptTemplate, build_prompt, escape_control_tokens

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from retrieval.search import Retriever

Variant = Literal["gold", "distractors", "no_context"]
_WORD = re.compile(r"\w+")
_CITATION = re.compile(rf"\s*{CITATION.pattern}")


@dataclass(frozen=True)
class ChatExample:
    id: str
    history: tuple[tuple[str, str], ...]  # (role, content) turns before the final question
    question: str
    answer: str
    doc_ids: tuple[str, ...]
    line: int
    # The exact passages the answer was given (feedback examples): used verbatim instead of retrieval.
    context: tuple[ContextPassage, ...] | None = None

    @property
    def history_messages(self) -> list[Message]:
        return [{"role": role, "content": content} for role, content in self.history]


def load_chat_jsonl(path: Path) -> list[ChatExample]:
    """Parse and validate a chat JSONL file.

    Raises:
        InvalidInputError: naming ``path:line`` and what is wrong with it.
    """
    examples = []
    for n, row in read_jsonl(path):
        where = f"{path}:{n}"
        if not isinstance(row.get("messages"), list) or not row["messages"]:
            raise InvalidInputError(f"{where}: expected an object with a non-empty 'messages' list")
        turns = []
        for i, m in enumerate(row["messages"]):
            if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant"):
                raise InvalidInputError(f"{where}: messages[{i}].role must be system, user or assistant")
            if not isinstance(m.get("content"), str):
                raise InvalidInputError(f"{where}: messages[{i}].content must be a string")
            if m["role"] != "system":
                turns.append((m["role"], m["content"]))
        if not turns or turns[-1][0] != "assistant":
            raise InvalidInputError(f"{where}: the last message must be the assistant's answer")
        if len(turns) < 2 or turns[-2][0] != "user":
            raise InvalidInputError(f"{where}: the assistant answer must follow a user message")
        doc_ids = row.get("doc_ids", [])
        if not isinstance(doc_ids, list) or not all(isinstance(d, str) for d in doc_ids):
            raise InvalidInputError(f"{where}: 'doc_ids' must be a list of strings")
        context = row.get("context")
        if context is not None:
            if not isinstance(context, list) or not all(
                    isinstance(p, dict) and all(isinstance(p.get(k), str) for k in ("doc_id", "title", "text"))
                    for p in context):
                raise InvalidInputError(f"{where}: 'context' must be a list of {{doc_id, title, text}} strings")
            context = tuple(ContextPassage(p["doc_id"], p["title"], p["text"]) for p in context)
        examples.append(ChatExample(str(row.get("id") or f"{path.stem}-{n}"), tuple(turns[:-2]), turns[-2][1],
                                    turns[-1][1], tuple(doc_ids), n, context))
    return examples


@dataclass
class CleanReport:
    input: int = 0
    empty_turns: int = 0
    exact_duplicates: int = 0
    near_duplicates: int = 0
    too_long: int = 0
    kept: int = 0


def _words(text: str) -> set[str]:
    return {w.lower() for w in _WORD.findall(text)}


def clean(examples: Sequence[ChatExample], *, near_duplicate_jaccard: float = 0.9) -> tuple[list[ChatExample], CleanReport]:
    """Drop examples with empty turns, exact duplicates, and near-duplicates (same answer, question word
    sets with Jaccard similarity >= ``near_duplicate_jaccard``). Length is checked later, in tokens."""
    report = CleanReport(input=len(examples))
    kept: list[ChatExample] = []
    exact: set[tuple[str, str, str]] = set()
    by_answer: dict[str, list[set[str]]] = {}
    for ex in examples:
        if not ex.question.strip() or not ex.answer.strip() or any(not c.strip() for _, c in ex.history):
            report.empty_turns += 1
            continue
        # History is part of the identity: a follow-up question is a different example from the same
        # question asked cold.
        history = "\n".join(f"{role}:{content.strip()}" for role, content in ex.history)
        key = (history, " ".join(ex.question.lower().split()), ex.answer.strip())
        if key in exact:
            report.exact_duplicates += 1
            continue
        words = _words(ex.question)
        similar = by_answer.setdefault(f"{history}\n{key[2]}", [])
        if any(len(words & other) / max(1, len(words | other)) >= near_duplicate_jaccard for other in similar):
            report.near_duplicates += 1
            continue
        exact.add(key)
        similar.append(words)
        kept.append(ex)
    report.kept = len(kept)
    return kept, report


def split(examples: Sequence[ChatExample], fractions: tuple[float, float, float], seed: int) -> dict[str, list[ChatExample]]:
    """Seeded train/validation/test split; identical input and seed give identical splits."""
    if abs(sum(fractions) - 1.0) > 1e-6 or min(fractions) < 0:
        raise ValueError(f"split fractions must be >= 0 and sum to 1, got {fractions}")
    ordered = sorted(examples, key=lambda e: e.id)
    random.Random(seed).shuffle(ordered)
    n_val = round(len(ordered) * fractions[1])
    n_test = round(len(ordered) * fractions[2])
    return {"train": ordered[n_val + n_test :], "validation": ordered[:n_val], "test": ordered[n_val : n_val + n_test]}


def strip_citations(text: str) -> str:
    return _CITATION.sub("", text)


def infer_refusal(examples: Sequence[ChatExample]) -> str | None:
    """The answer the data gives when no document applies (the most common answer of uncited examples)."""
    answers = Counter(ex.answer for ex in examples if not ex.doc_ids)
    return answers.most_common(1)[0][0] if answers else None


@dataclass
class RaftConfig:
    top_k: int
    golden_fraction: float
    no_context_fraction: float
    seed: int
    unanswerable_repeats: int = 1  # rows per unanswerable example, each with other retrieved passages
    distractor_source: Literal["near", "other_questions"] = "near"  # answerable examples' distractor rows


@dataclass
class TrainingRow:
    id: str
    variant: Variant
    prompt: str
    completion: str
    doc_ids: list[str]
    context_doc_ids: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return asdict(self)


def _passages_for(ex: ChatExample, variant: Variant, retriever: Retriever, k: int, rng: random.Random,
                  offset: int = 0, other: ChatExample | None = None) -> list[ContextPassage] | None:
    """The context of one row; ``other`` (distractor rows only) is the question whose passages are used."""
    if variant == "no_context":
        return None
    gold = set(ex.doc_ids)
    if ex.context is not None and variant == "gold":
        passages = list(ex.context)  # what the answer was actually given (a user-rated turn)
    else:
        results = retriever.search((other or ex).question, k=k * (3 + offset))
        if variant == "distractors":
            return [r.to_passage() for r in results if r.doc_id not in gold][offset * k : (offset + 1) * k]
        passages = [r.to_passage() for r in results[:k]]
    # A corrected answer may cite a document the served passages missed: an answer citing what its context
    # lacks would teach invented citations, so the cited document's best passage replaces the last one.
    if gold and not any(p.doc_id in gold for p in passages):
        best = retriever.search(ex.question, k=1, filters={"doc_id": sorted(gold)})
        if best:
            passages = passages[: k - 1]
            passages.insert(rng.randrange(len(passages) + 1), best[0].to_passage())
    return passages


def build_rows(
    examples: Sequence[ChatExample],
    retriever: Retriever,
    template: PromptTemplate,
    tokenizer: PreTrainedTokenizerBase,
    cfg: RaftConfig,
    refusal: str | None,
    *,
    variant: Variant | None = None,
) -> list[TrainingRow]:
    """Prompt/completion rows in the serving format. ``variant`` forces one variant (evaluation splits).

    An unanswerable example (no cited document) gives ``cfg.unanswerable_repeats`` rows, the n-th with the
    n-th group of ``top_k`` retrieved passages: refusing on context that is merely on-topic is the rule a
    small model learns last, and real unanswerable questions are few.
    """
    rng = random.Random(cfg.seed)
    answerable = [e for e in examples if e.doc_ids]
    rows = []
    for ex in examples:
        chosen: Variant
        if variant is not None:
            chosen = variant
        elif not ex.doc_ids:
            chosen = "distractors"  # an unanswerable question: whatever is retrieved does not answer it
        else:
            r = rng.random()
            chosen = "gold" if r < cfg.golden_fraction else (
                "no_context" if r < cfg.golden_fraction + cfg.no_context_fraction else "distractors")
            if chosen == "distractors" and refusal is None:
                chosen = "gold"
        if chosen == "distractors" and ex.doc_ids:
            answer = refusal or ex.answer
        elif chosen == "no_context":
            answer = strip_citations(ex.answer)
        else:
            answer = ex.answer
        repeats = cfg.unanswerable_repeats if variant is None and not ex.doc_ids else 1
        other = None
        if chosen == "distractors" and ex.doc_ids and cfg.distractor_source == "other_questions":
            unrelated = [e for e in answerable if not set(e.doc_ids) & set(ex.doc_ids)]
            other = rng.choice(unrelated) if unrelated else None
        for offset in range(repeats):
            passages = _passages_for(ex, chosen, retriever, cfg.top_k, rng, offset, other)
            prompt = build_prompt(template, tokenizer, ex.question, passages, ex.history_messages)
            rows.append(TrainingRow(ex.id, chosen, prompt, escape_control_tokens(answer, tokenizer) + tokenizer.eos_token, list(ex.doc_ids),
                                    [p.doc_id for p in passages or []]))
    return rows


def drop_too_long(rows: Sequence[TrainingRow], tokenizer: PreTrainedTokenizerBase, max_length: int) -> tuple[list[TrainingRow], int]:
    """Rows whose prompt + completion fit in ``max_length`` tokens of the real tokenizer (never truncated:
    a cut answer would teach the model to stop mid-sentence)."""
    kept = [r for r in rows if len(tokenizer(r.prompt + r.completion, add_special_tokens=False).input_ids) <= max_length]
    return kept, len(rows) - len(kept)
