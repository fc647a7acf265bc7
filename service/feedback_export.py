"""Users' ratings into the next training round: ``tunerag feedback export``.

Reads rated answers from the database and writes, into one folder (staged, then moved into place: never a
partial file):

    feedback_chats.jsonl   chat examples for ``tunerag train generator --with-feedback DIR``: answers rated up,
                           and corrections of answers rated down, each with the exact passages it was given
    feedback_dpo.jsonl     preference pairs for ``tunerag train generator --dpo``: correction preferred over
                           the answer it corrects
    card.json              counts, what was dropped and why, the rule applied

Rule for duplicates and conflicts: answers are grouped by their question (case and spacing ignored). In a group,
a correction beats an up-rating, and the most recent rating wins among equals; the others are counted as
superseded. A down rating without a correction teaches nothing and is counted. Every row keeps its
conversation and message ids (``lineage``).
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

from sqlalchemy import pool, select
from sqlalchemy.ext.asyncio import create_async_engine

from core.errors import InvalidInputError
from core.prompt import CITATION
from core.settings import Settings
from core.staging import staged_dir
from service.db import Feedback, Message, database_url

RULE = ("grouped by question (case and spacing ignored); a correction beats an up-rating; the most recent wins "
        "among equals; down ratings without a correction are dropped")


async def _rated(settings: Settings) -> list[dict[str, Any]]:
    engine = create_async_engine(database_url(settings), poolclass=pool.NullPool)
    try:
        async with engine.connect() as conn:
            rows = (await conn.execute(
                select(Feedback.rating, Feedback.correction, Feedback.updated_at, Message.id, Message.conversation_id,
                       Message.content, Message.details, Message.created_at)
                .join(Message, Message.id == Feedback.message_id).order_by(Feedback.updated_at))).all()
            rated = []
            for rating, correction, rated_at, message_id, conversation_id, answer, details, created_at in rows:
                question = (await conn.execute(
                    select(Message.content).where(Message.conversation_id == conversation_id, Message.role == "user",
                                                  Message.created_at <= created_at)
                    .order_by(Message.created_at.desc()).limit(1))).scalar()
                if question is None:
                    continue
                rated.append({"rating": rating, "correction": correction, "rated_at": rated_at, "question": question,
                              "answer": answer, "details": details or {}, "message_id": str(message_id),
                              "conversation_id": str(conversation_id)})
            return rated
    finally:
        await engine.dispose()


def _key(question: str) -> str:
    return re.sub(r"\s+", " ", question.strip().lower())


def select_examples(rated: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Apply :data:`RULE`: one winner per question, and the counts of what was dropped."""
    counts = {"rated": len(rated), "up": 0, "corrections": 0, "down_without_correction": 0, "superseded": 0}
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rated:
        if row["rating"] == "down" and not row["correction"]:
            counts["down_without_correction"] += 1
            continue
        groups.setdefault(_key(row["question"]), []).append(row)
    winners = []
    for rows in groups.values():
        best = max(rows, key=lambda r: (bool(r["correction"]), r["rated_at"]))
        counts["superseded"] += len(rows) - 1
        counts["corrections" if best["correction"] else "up"] += 1
        winners.append(best)
    return winners, counts


def _rows(winner: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    answer = winner["correction"] or winner["answer"]
    context = winner["details"].get("context")
    lineage = {"conversation_id": winner["conversation_id"], "message_id": winner["message_id"],
               "rating": winner["rating"], "corrected": bool(winner["correction"])}
    doc_ids = sorted({m.group(1) for m in CITATION.finditer(answer)})
    chat = {"id": f"feedback-{winner['message_id']}", "messages": [{"role": "user", "content": winner["question"]},
                                                                   {"role": "assistant", "content": answer}],
            "doc_ids": doc_ids, "context": context, "lineage": lineage}
    pair = None
    if winner["correction"]:
        pair = {"question": winner["question"], "chosen": winner["correction"], "rejected": winner["answer"],
                "context": context, "lineage": lineage}
    return chat, pair


def export_feedback(settings: Settings, out_dir: Path) -> dict[str, Any]:
    """Write the folder described in the module docstring; returns the card."""
    winners, counts = select_examples(asyncio.run(_rated(settings)))
    if not winners:
        raise InvalidInputError(f"no usable feedback yet ({counts['rated']} rated answers, "
                                f"{counts['down_without_correction']} down without a correction): nothing written")
    chats, pairs = [], []
    for winner in winners:
        chat, pair = _rows(winner)
        chats.append(chat)
        if pair:
            pairs.append(pair)
    card = {"counts": counts | {"chat_examples": len(chats), "dpo_pairs": len(pairs)}, "rule": RULE,
            "files": {"chats": "feedback_chats.jsonl", "dpo": "feedback_dpo.jsonl" if pairs else None},
            "next": [f"tunerag train generator --with-feedback {out_dir}"]
            + ([f"tunerag train generator --dpo {out_dir / 'feedback_dpo.jsonl'}"] if len(pairs) >= 2 else [])}
    with staged_dir(out_dir) as staging:
        (staging / "feedback_chats.jsonl").write_text("".join(json.dumps(c, ensure_ascii=False) + "\n" for c in chats))
        if pairs:
            (staging / "feedback_dpo.jsonl").write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in pairs))
        (staging / "card.json").write_text(json.dumps(card, indent=2))
    return card
