"""Users' ratings into the next training round: corrections through the API (validated), ``feedback export``
(the stated rule, lineage, the exact passages), and training with the exported examples."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from litestar.testing import TestClient

from core.errors import InvalidInputError
from core.jsonl import read_jsonl
from core.prompt import ContextPassage
from core.settings import SAMPLE_DIR, Settings
from service.app import create_app
from service.feedback_export import export_feedback
from training.generator_data import build_rows, load_chat_jsonl

H = {"X-API-Key": "chat-key"}


@pytest.fixture
def api_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={
        "generation": settings.generation.model_copy(update={"max_new_tokens": 4, "batch_wait_ms": 1}),
        "server": settings.server.model_copy(update={"api_keys": {"chat-key": ["chat"]}, "rate_limit_per_minute": 10_000}),
    })


def ask(client: TestClient, question: str) -> dict:
    answer = client.post("/v1/chat", json={"question": question, "mode": "rag"}, headers=H)
    assert answer.status_code == 200, answer.text
    return answer.json()


def rate(client: TestClient, answer: dict, rating: str, correction: str | None = None):
    body = {"rating": rating, "message_id": answer["message_id"], **({"correction": correction} if correction else {})}
    return client.post(f"/v1/chat/{answer['conversation_id']}/feedback", json=body, headers=H)


def test_feedback_export_applies_the_rule_keeps_lineage_and_the_exact_context(api_settings: Settings,
                                                                              tmp_path: Path) -> None:
    out = tmp_path / "feedback"
    with TestClient(app=create_app(api_settings)) as client:
        with pytest.raises(InvalidInputError, match="no usable feedback"):
            export_feedback(api_settings, out)
        assert not out.exists()  # nothing written
        good = ask(client, "How do I void a label?")
        bad = ask(client, "Where is my refund?")
        unhelpful = ask(client, "How do I add a team member?")
        again = ask(client, "how do I  void a label?")  # the same question: one winner
        correction = "Hi there!\n\nRefunds reach your card within 5 business days. [billing-refunds]\n\n— Parcelly Support"
        assert rate(client, good, "up").status_code == 201
        assert rate(client, unhelpful, "down").status_code == 201
        assert rate(client, again, "up").status_code == 201
        # Bad corrections are refused with the reason, and store nothing.
        unknown = rate(client, bad, "down", "See [no-such-doc] and [billing-refunds].")
        assert unknown.status_code == 422 and "no-such-doc" in unknown.json()["detail"]
        assert "billing-refunds" not in unknown.json()["detail"]
        upvoted = rate(client, bad, "up", correction)
        assert upvoted.status_code == 422 and "down" in upvoted.json()["detail"]
        too_long = rate(client, bad, "down", "x" * 8001)
        assert too_long.status_code == 400 and "correction" in too_long.text
        assert rate(client, bad, "down", correction).status_code == 201
        stored = client.get(f"/v1/conversations/{bad['conversation_id']}", headers=H).json()["messages"][1]
        given = stored["details"]["context"]

    card = export_feedback(api_settings, out)
    assert card["counts"] == {"rated": 4, "up": 1, "corrections": 1, "down_without_correction": 1, "superseded": 1,
                              "chat_examples": 2, "dpo_pairs": 1}
    chats = [row for _, row in read_jsonl(out / "feedback_chats.jsonl")]
    by_message = {c["lineage"]["message_id"]: c for c in chats}
    assert set(by_message) == {again["message_id"], bad["message_id"]}  # the most recent up-rating won
    corrected = by_message[bad["message_id"]]
    assert corrected["messages"][-1]["content"] == correction and corrected["doc_ids"] == ["billing-refunds"]
    assert corrected["lineage"]["conversation_id"] == bad["conversation_id"]
    assert corrected["context"] == given and given and all(p["text"] for p in given)
    pair = json.loads((out / "feedback_dpo.jsonl").read_text())
    assert pair["chosen"] == correction and pair["rejected"] == bad["answer"] and pair["context"] == given

    # The training data reads the exported passages verbatim into the serving prompt.
    from core.models import load_generator
    from core.prompt import load_template
    from retrieval.search import open_retriever
    from training.generator_data import RaftConfig

    examples = load_chat_jsonl(out / "feedback_chats.jsonl")
    _, tokenizer = load_generator(api_settings)
    rows = build_rows(examples, open_retriever(api_settings), load_template(api_settings), tokenizer,
                      RaftConfig(top_k=4, golden_fraction=1.0, no_context_fraction=0.0, seed=0,
                                 unanswerable_repeats=1, distractor_source="near"),
                      None, variant="gold")
    row = next(r for r in rows if r.id == corrected["id"])
    served = [p["doc_id"] for p in given]
    if "billing-refunds" in served:  # trained on exactly what was served
        assert all(p["text"][:60] in row.prompt for p in given)
        assert row.context_doc_ids == served
    else:  # the correction cites what the served passages missed: its best passage takes the last one's place
        assert sorted(row.context_doc_ids) == sorted([*served[:-1], "billing-refunds"])
        assert all(p["text"][:60] in row.prompt for p in given[:-1])
    # Both cases, forced: a served context without the cited document, and one with it.
    other = [p for p in given if p["doc_id"] != "billing-refunds"]
    assert other
    example = next(e for e in examples if e.id == corrected["id"])
    missing = replace(example, context=tuple(ContextPassage(p["doc_id"], p["title"], p["text"]) for p in other))
    rows = build_rows([missing], open_retriever(api_settings), load_template(api_settings), tokenizer,
                      RaftConfig(top_k=4, golden_fraction=1.0, no_context_fraction=0.0, seed=0), None, variant="gold")
    assert "billing-refunds" in rows[0].context_doc_ids and len(rows[0].context_doc_ids) == len(other)
    kept = replace(missing, context=(ContextPassage("billing-refunds", "Refunds", "Refunds take 5 days."), *missing.context))
    rows = build_rows([kept], open_retriever(api_settings), load_template(api_settings), tokenizer,
                      RaftConfig(top_k=4, golden_fraction=1.0, no_context_fraction=0.0, seed=0), None, variant="gold")
    assert rows[0].context_doc_ids == ["billing-refunds", *[p["doc_id"] for p in other]]


def test_training_with_feedback_trains_every_example_and_a_round_continues_the_adapter(
        api_settings: Settings, tmp_path: Path) -> None:
    import torch
    from safetensors.torch import load_file

    from training.generator_recipe import read_rows, train_generator

    out = tmp_path / "feedback"
    out.mkdir()
    lines = (SAMPLE_DIR / "chat_train.jsonl").read_text().splitlines()[:20]
    feedback = [json.loads(line) | {"id": f"feedback-{i}", "lineage": {"message_id": str(i)}} for i, line in enumerate(lines[:6])]
    (out / "feedback_chats.jsonl").write_text("".join(json.dumps(f) + "\n" for f in feedback))
    base = tmp_path / "chats.jsonl"
    base.write_text("\n".join(lines[6:]) + "\n")
    common = {"chat_files": [base], "max_steps": 1, "per_device_train_batch_size": 2, "feedback_repeats": 2}
    cfg = api_settings.train_generator.model_copy(update={**common, "feedback_files": [out / "feedback_chats.jsonl"]})
    fresh = train_generator(api_settings, cfg)
    data = fresh.manifest["data"]
    assert str(out / "feedback_chats.jsonl") in data["sources"]
    # Every feedback example is trained on, twice, as the gold variant; none is split off for validation/test.
    train = read_rows(fresh.path, "train")
    ids = [r["id"] for r in train if r["id"].startswith("feedback-")]
    assert sorted(ids) == sorted(f"feedback-{i}" for i in range(6) for _ in range(2))
    assert {r["variant"] for r in train if r["id"].startswith("feedback-")} == {"gold"}
    held = read_rows(fresh.path, "validation") + read_rows(fresh.path, "test")
    assert not [r for r in held if r["id"].startswith("feedback-")]
    assert data["feedback"]["rows"] == 12 and data["feedback"]["regular_rows"] == data["split_sizes"]["train"] - 12

    # A round on top of the first adapter: its weights go on training, on the feedback plus an equal replay share.
    # (another seed: a fresh LoRA would start from other random weights, so the check below can tell)
    round_ = train_generator(api_settings, cfg.model_copy(update={"init_adapter": "latest", "feedback_replay_ratio": 0.5,
                                                                  "seed": 7}))
    assert round_.manifest["init_adapter"] == fresh.id  # 'latest' is resolved to an id before training
    assert round_.manifest["data"]["feedback"]["regular_rows"] == 6
    assert len(read_rows(round_.path, "train")) == 12 + 6

    def lora_a(artifact) -> torch.Tensor:
        weights = load_file(str(artifact.path / "adapter" / "adapter_model.safetensors"))
        return torch.cat([w.flatten() for k, w in sorted(weights.items()) if "lora_A" in k])

    similarity = torch.nn.functional.cosine_similarity
    assert similarity(lora_a(round_), lora_a(fresh), dim=0) > 0.9  # one step away from where it started
    other_seed = train_generator(api_settings, cfg.model_copy(update={"seed": 7}))
    assert similarity(lora_a(other_seed), lora_a(fresh), dim=0) < 0.5  # a fresh adapter of that seed starts apart


def test_a_round_refuses_an_adapter_of_another_base(api_settings: Settings, tmp_path: Path) -> None:
    from core import artifacts
    from core.errors import ConfigError
    from training.generator_recipe import train_generator

    chats = tmp_path / "chats.jsonl"
    chats.write_text("\n".join((SAMPLE_DIR / "chat_train.jsonl").read_text().splitlines()[:14]) + "\n")
    cfg = api_settings.train_generator.model_copy(update={"chat_files": [chats], "max_steps": 1,
                                                          "per_device_train_batch_size": 2})
    first = train_generator(api_settings, cfg)
    manifest = first.path / "manifest.json"
    stored = json.loads(manifest.read_text())
    stored["base_model"]["spec"] = "someone/else-7b"
    manifest.write_text(json.dumps(stored))
    with pytest.raises(ConfigError, match="else-7b"):
        train_generator(api_settings, cfg.model_copy(update={"init_adapter": first.id}))
    assert artifacts.get_artifact(api_settings, "adapter", "latest").id == first.id
    assert not list((artifacts.kind_dir(api_settings, "adapter") / ".runs").glob("adapter-*"))  # no run was started
