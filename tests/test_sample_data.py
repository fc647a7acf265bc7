"""The embedded sample domain meets the sizes and invariants the rest of tunerag relies on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.settings import SAMPLE_DIR


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.fixture(scope="module")
def doc_ids() -> set[str]:
    return {p.stem for p in (SAMPLE_DIR / "kb").iterdir() if p.suffix in (".md", ".html")}


def test_knowledge_base_is_large_and_mixed(doc_ids: set[str]) -> None:
    files = list((SAMPLE_DIR / "kb").iterdir())
    assert len(doc_ids) >= 40
    assert {p.suffix for p in files} == {".md", ".html"}
    sizes = sorted(p.stat().st_size for p in files)
    assert sizes[-1] > 2 * sizes[0], "documents should vary in length"
    for category in ("setup", "billing", "ts", "policy", "api"):
        assert any(d.startswith(category) for d in doc_ids)


def test_training_chats_are_well_formed_and_grounded(doc_ids: set[str]) -> None:
    chats = _jsonl(SAMPLE_DIR / "chat_train.jsonl")
    assert len(chats) >= 300
    assert len({c["id"] for c in chats}) == len(chats)
    for chat in chats:
        roles = [m["role"] for m in chat["messages"]]
        assert roles[0] == "system" and roles[1::2] == ["user"] * (len(roles) // 2)
        assert roles[2::2] == ["assistant"] * (len(roles) // 2)
        assert set(chat["doc_ids"]) <= doc_ids
        for doc_id in chat["doc_ids"]:
            assert f"[{doc_id}]" in chat["messages"][-1]["content"]
    assert sum(not c["doc_ids"] for c in chats) >= 10, "refusal examples"


def test_eval_set_is_labelled_and_disjoint_from_training(doc_ids: set[str]) -> None:
    evals = _jsonl(SAMPLE_DIR / "eval.jsonl")
    assert len(evals) >= 80
    for row in evals:
        assert set(row["gold_doc_ids"]) <= doc_ids
        assert row["answerable"] == bool(row["gold_doc_ids"])
        assert row["reference_answer"].strip()
    train_questions = {
        m["content"].strip().lower()
        for c in _jsonl(SAMPLE_DIR / "chat_train.jsonl") for m in c["messages"] if m["role"] == "user"
    }
    assert not [r["question"] for r in evals if r["question"].strip().lower() in train_questions]
    assert any(not r["answerable"] for r in evals)
