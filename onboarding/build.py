"""``tunerag data build``: a documents folder, an FAQ export and a style file into everything the recipes need.

Written into one folder (staged, then moved into place; nothing partial on any error):

    faq_docs/            FAQ answers that are not a document of the team's (no doc_id, or an unknown one) as
                         Markdown documents, so every gold id exists in the index. Ids are stable: the given
                         doc_id, else ``faq/<question slug>-<sha1 prefix>``
    system_prompt.txt    the house style from the style file
    chat_train.jsonl     training chats in the house style with [doc-id] citations (RAFT contexts are retrieved
                         from the real index at training time)
    train_pairs.jsonl    (question, doc_id) pairs for the embedder
    few_shot.jsonl       two training examples for prompt-only mode
    eval.jsonl           the held-out split by answer (seeded; the phrasings of one answer never straddle it):
                         answerable questions with gold ids and reference answers, and unanswerable ones made
                         honestly: FAQ documents left out of the knowledge base, and the held-out share of the
                         questions the team says its documents do not answer (``unanswered``), whose training
                         share becomes refusal chats
    tunerag.yaml         settings pointing every recipe, the index and the evaluation at these files (and a data
                         directory of its own, ``var/`` in the folder)
    card.json            counts, duplicates dropped, the split, and the commands to run next
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from pathlib import Path
from typing import Any

import yaml

from core.errors import InvalidInputError
from core.staging import staged_dir
from onboarding.faq import FaqEntry, read_faq, read_unanswered
from onboarding.style import StyleFile, load_style
from retrieval.loaders import load_documents


def faq_doc_id(question: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", question.lower()).strip("-")[:48].strip("-") or "entry"
    return f"faq/{slug}-{hashlib.sha1(question.strip().encode()).hexdigest()[:6]}"


def _jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def build_data(docs_dir: Path | None, faq_file: Path, style_file: Path, out: Path, *, seed: int = 0,
               heldout_fraction: float = 0.3, unanswerable_fraction: float = 0.1, max_faq_bytes: int = 50_000_000,
               force: bool = False, on_conflict: str = "error", unanswered_file: Path | None = None) -> dict[str, Any]:
    """Build the folder described in the module docstring; returns the data card.

    Raises:
        InvalidInputError: bad input (every problem named, with its file and line), or ``out`` exists.
    """
    if out.exists() and any(out.iterdir()) and not force:
        raise InvalidInputError(f"{out} exists and is not empty; choose another --out or pass --force")
    style = load_style(style_file)
    entries, duplicates, conflicts = read_faq(faq_file, max_faq_bytes, on_conflict)
    unanswered = read_unanswered(unanswered_file, max_faq_bytes, entries) if unanswered_file else []
    documents = {d.doc_id: d for d in load_documents([docs_dir])} if docs_dir else {}
    if docs_dir and not documents:
        raise InvalidInputError(f"{docs_dir}: no documents found (Markdown, HTML, PDF, text)")

    gold: dict[int, str] = {}
    faq_docs: dict[str, FaqEntry] = {}
    for e in entries:
        doc_id = e.doc_id if e.doc_id in documents else (e.doc_id or faq_doc_id(e.question))
        if doc_id not in documents:
            faq_docs.setdefault(doc_id, e)
        gold[e.line] = doc_id

    # Split by answer: the entries giving the same answer from the same document are one unit (several
    # phrasings of one question), so no held-out question has its answer trained under another wording.
    units: dict[tuple[str, str], list[FaqEntry]] = {}
    for e in entries:
        units.setdefault((gold[e.line], " ".join(e.answer.lower().split())), []).append(e)
    rng = random.Random(seed)
    order = list(units.values())
    rng.shuffle(order)
    cut = max(2, round(len(order) * heldout_fraction))
    if cut >= len(order):
        raise InvalidInputError(f"{faq_file}: {len(order)} distinct answers; a held-out split needs at least 3")
    held = [e for unit in order[:cut] for e in unit]
    train = [e for unit in order[cut:] for e in unit]
    shuffled = list(unanswered)
    rng.shuffle(shuffled)
    unanswered_held = sorted(shuffled[: round(len(shuffled) * heldout_fraction)])
    unanswered_train = sorted(shuffled[len(unanswered_held):])
    # Unanswerable: held-out entries whose (FAQ-made) document is left out of the knowledge base, and that no
    # training entry cites.
    train_docs = {gold[e.line] for e in train}
    candidates = [e for e in held if gold[e.line] in faq_docs and gold[e.line] not in train_docs]
    dropped = {gold[e.line] for e in candidates[: max(1, round(len(held) * unanswerable_fraction))]} if candidates else set()

    with staged_dir(out) as staging:
        _write(staging, out, style, docs_dir, train, held, gold, faq_docs, dropped, unanswered_train, unanswered_held)
        card = {
            "inputs": {"docs": str(docs_dir) if docs_dir else None, "faq": str(faq_file), "style": str(style_file),
                       "unanswered": str(unanswered_file) if unanswered_file else None,
                       "seed": seed, "heldout_fraction": heldout_fraction},
            "conflicts_dropped": conflicts,
            "counts": {"faq_entries": len(entries), "duplicates_dropped": duplicates, "conflicts_dropped": len(conflicts), "team_documents": len(documents),
                       "faq_documents": len(faq_docs) - len(dropped), "distinct_answers": len(order),
                       "train": len(train), "train_refusals": len(unanswered_train),
                       "heldout_answerable": len([e for e in held if gold[e.line] not in dropped]),
                       "heldout_unanswerable": len([e for e in held if gold[e.line] in dropped]) + len(unanswered_held)},
            "split_rule": "by answer: entries with the same answer and document are held out or trained together",
            "unanswerable_rule": "held-out FAQ entries whose own FAQ document is left out of the knowledge base, and "
                                 "the held-out share of the unanswered questions (the rest train refusals)",
            "next": [f"tunerag --config {out / 'tunerag.yaml'} index --rebuild",
                     f"tunerag --config {out / 'tunerag.yaml'} train embedder",
                     f"tunerag --config {out / 'tunerag.yaml'} train generator",
                     f"tunerag --config {out / 'tunerag.yaml'} eval"],
        }
        (staging / "card.json").write_text(json.dumps(card, indent=2))
    return card


def _write(staging: Path, out: Path, style: StyleFile, docs_dir: Path | None, train: list[FaqEntry],
           held: list[FaqEntry], gold: dict[int, str], faq_docs: dict[str, FaqEntry], dropped: set[str],
           unanswered_train: list[tuple[int, str]], unanswered_held: list[tuple[int, str]]) -> None:
    kb = staging / "faq_docs"
    kb.mkdir()
    for doc_id, entry in faq_docs.items():
        if doc_id in dropped:
            continue
        path = kb / f"{doc_id}.md"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"---\nid: {doc_id}\ntitle: {json.dumps(entry.question)}\n---\n\n{entry.answer}\n", encoding="utf-8")
    system = style.system_prompt()
    (staging / "system_prompt.txt").write_text(system, encoding="utf-8")
    _jsonl(staging / "chat_train.jsonl", [
        {"id": f"faq-{e.line}", "doc_ids": [gold[e.line]], "messages": [
            {"role": "system", "content": system}, {"role": "user", "content": e.question},
            {"role": "assistant", "content": style.answer(e.answer, [gold[e.line]])}]} for e in train]
        + [{"id": f"unanswered-{n}", "kind": "unanswerable", "doc_ids": [], "messages": [
            {"role": "system", "content": system}, {"role": "user", "content": q},
            {"role": "assistant", "content": style.refusal_answer()}]} for n, q in unanswered_train])
    _jsonl(staging / "train_pairs.jsonl", [{"question": e.question, "doc_id": gold[e.line]} for e in train])
    _jsonl(staging / "few_shot.jsonl", [{"question": e.question, "answer": style.answer(e.answer, [gold[e.line]])}
                                        for e in train[:2]])
    _jsonl(staging / "eval.jsonl", [
        {"id": f"faq-{e.line}", "question": e.question,
         "gold_doc_ids": [] if gold[e.line] in dropped else [gold[e.line]],
         "answerable": gold[e.line] not in dropped,
         "reference_answer": style.refusal_answer() if gold[e.line] in dropped else style.answer(e.answer, [gold[e.line]])}
        for e in held]
        + [{"id": f"unanswered-{n}", "question": q, "gold_doc_ids": [], "answerable": False,
            "reference_answer": style.refusal_answer()} for n, q in unanswered_held])
    sources = [str(docs_dir.resolve())] if docs_dir else []
    sources.append(str((out / "faq_docs").resolve()))
    config = {
        "paths": {"data_dir": str((out / "var").resolve())},  # this domain's index, artifacts and reports
        "retrieval": {"sources": sources},
        "prompt": {"system_prompt_file": str((out / "system_prompt.txt").resolve()),
                   "few_shot_file": str((out / "few_shot.jsonl").resolve())},
        "eval": {"eval_file": str((out / "eval.jsonl").resolve()), "style_greeting": style.greeting,
                 "style_sign_off": style.sign_off, "style_max_words": style.word_limit, "refusal_phrase": style.phrase},
        "train_embedder": {"labelled_files": [str((out / "train_pairs.jsonl").resolve())], "chat_files": [],
                           "sources": sources},
        "train_generator": {"chat_files": [str((out / "chat_train.jsonl").resolve())],
                            "refusal_answer": style.refusal_answer()},
        "train_verifier": {"chat_files": [str((out / "chat_train.jsonl").resolve())],
                           "refusal_answer": style.refusal_answer()},
    }
    (staging / "tunerag.yaml").write_text("# Written by `tunerag data build`; use with `tunerag --config THIS_FILE ...`\n"
                                          + yaml.safe_dump(config, sort_keys=False, allow_unicode=True), encoding="utf-8")
