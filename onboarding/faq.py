"""FAQ exports (CSV or JSONL: question, answer, optional doc_id or url) read with a size budget and a
line-numbered report of every problem: missing columns, empty fields, undecodable bytes, the same question
with different answers. Exact duplicate entries are dropped and counted. Also: the questions the documents do
not answer (escalated tickets, say), one per line or JSONL, which become refusal examples and unanswerable
held-out questions."""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from pathlib import Path

from core.errors import InvalidInputError
from core.jsonl import read_jsonl
from core.prompt import validate_doc_id

MAX_REPORTED = 20


@dataclass(frozen=True)
class FaqEntry:
    line: int
    question: str
    answer: str
    doc_id: str | None


def _key(question: str) -> str:
    return re.sub(r"\s+", " ", question.strip().lower())


def _rows(path: Path, text: str) -> list[tuple[int, dict]]:
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        return list(read_jsonl(path, text))
    if path.suffix.lower() != ".csv":
        raise InvalidInputError(f"{path}: an FAQ file is .csv or .jsonl")
    reader = csv.DictReader(io.StringIO(text))
    missing = {"question", "answer"} - {(c or "").strip().lower() for c in reader.fieldnames or []}
    if missing:
        raise InvalidInputError(f"{path}:1: missing column(s) {sorted(missing)}; found {reader.fieldnames}")
    return [(reader.line_num, {(k or "").strip().lower(): v for k, v in row.items()}) for row in reader]


def _decode(path: Path, max_bytes: int, what: str) -> str:
    if not path.is_file():
        raise InvalidInputError(f"{path}: no such {what} file")
    size = path.stat().st_size
    if size > max_bytes:
        raise InvalidInputError(f"{path}: {size} bytes is over the {max_bytes}-byte limit (data_build.max_faq_bytes)")
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise InvalidInputError(f"{path}:{line}: not UTF-8 (byte {exc.start}); save the export as UTF-8") from None


def read_unanswered(path: Path, max_bytes: int, faq: list[FaqEntry]) -> list[tuple[int, str]]:
    """Questions the knowledge base does not answer: ``.txt`` (one per line; blank lines and ``#`` comments
    skipped) or ``.jsonl`` (a ``question`` field). Repeats are dropped; a question the FAQ answers is a problem.

    Raises:
        InvalidInputError: as :func:`read_faq`, every problem with its line.
    """
    text = _decode(path, max_bytes, "unanswered-questions")
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        rows = [(n, str(row.get("question") or "").strip()) for n, row in read_jsonl(path, text)]
    elif path.suffix.lower() == ".txt":
        rows = [(n, line.strip()) for n, line in enumerate(text.splitlines(), 1)
                if line.strip() and not line.lstrip().startswith("#")]
    else:
        raise InvalidInputError(f"{path}: an unanswered-questions file is .txt (one per line) or .jsonl")
    answered = {_key(e.question): e.line for e in faq}
    problems, seen, questions = [], set(), []
    for n, question in rows:
        key = _key(question)
        if not question:
            problems.append(f"{path}:{n}: empty question")
        elif key in answered:
            problems.append(f"{path}:{n}: the FAQ answers this question (FAQ line {answered[key]})")
        elif key not in seen:
            seen.add(key)
            questions.append((n, question))
    if problems:
        raise InvalidInputError(f"{len(problems)} bad unanswered question(s); nothing written:\n  "
                                + "\n  ".join(problems[:MAX_REPORTED]))
    return questions


def read_faq(path: Path, max_bytes: int, on_conflict: str = "error") -> tuple[list[FaqEntry], int, list[str]]:
    """The entries, how many exact duplicates were dropped, and the conflicts dropped (``on_conflict`` =
    ``keep-first``: the same question again with a different answer keeps the first and names the rest;
    ``error``, the default: such a row is a problem like any other).

    Raises:
        InvalidInputError: the file is too large, not UTF-8, or has bad rows (every problem, with its line).
    """
    text = _decode(path, max_bytes, "FAQ")
    problems: list[str] = []
    entries: list[FaqEntry] = []
    seen: dict[str, FaqEntry] = {}
    duplicates = 0
    conflicts: list[str] = []
    for n, row in _rows(path, text):
        question = str(row.get("question") or "").strip()
        answer = str(row.get("answer") or "").strip()
        doc_id = str(row.get("doc_id") or "").strip() or None
        if not question or not answer:
            problems.append(f"{path}:{n}: empty {'question' if not question else 'answer'}")
            continue
        if doc_id:
            try:
                validate_doc_id(doc_id, "doc_id")
            except InvalidInputError as exc:
                problems.append(f"{path}:{n}: {exc}")
                continue
        key = _key(question)
        if key in seen:
            if _key(seen[key].answer) == _key(answer):
                duplicates += 1
                continue
            conflict = f"{path}:{n}: the question of line {seen[key].line} again, with a different answer"
            (conflicts if on_conflict == "keep-first" else problems).append(conflict)
            continue
        entry = FaqEntry(n, question, answer, doc_id)
        seen[key] = entry
        entries.append(entry)
    if problems:
        more = f" (and {len(problems) - MAX_REPORTED} more)" if len(problems) > MAX_REPORTED else ""
        hint = (" (--on-conflict keep-first keeps the first of each conflicting question)"
                if any("different answer" in p for p in problems) else "")
        raise InvalidInputError(f"{len(problems)} bad FAQ row(s); nothing written{hint}:\n  "
                                + "\n  ".join(problems[:MAX_REPORTED]) + more)
    if len(entries) < 4:
        raise InvalidInputError(f"{path}: {len(entries)} usable entries; a held-out split needs at least 4")
    return entries, duplicates, conflicts
