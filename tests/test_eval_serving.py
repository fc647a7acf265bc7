"""Evaluation answers through the serving backend: what ``/v1/evals`` and ``tunerag eval`` report is what
``/v1/chat`` answers, on the same engine, weights and decoding (tiny random-weight models)."""

from __future__ import annotations

import json
from pathlib import Path

from helpers import wait_job
from litestar.testing import TestClient

from core.settings import Settings
from eval.runner import EvalOptions, run_evaluation
from service.app import create_app

ADMIN = "admin-key"
H = {"Authorization": f"Bearer {ADMIN}"}


def eval_ready(settings: Settings, generator: Path) -> Settings:
    return settings.model_copy(update={
        "models": settings.models.model_copy(update={"generator": str(generator)}),
        "generation": settings.generation.model_copy(update={"max_new_tokens": 10, "batch_wait_ms": 5}),
        "eval": settings.eval.model_copy(update={"max_new_tokens": 10, "batch_size": 1}),
        "server": settings.server.model_copy(update={"api_keys": {ADMIN: ["chat", "admin"]},
                                                     "rate_limit_per_minute": 1000}),
    })


def test_eval_answers_are_the_answers_chat_gives(settings: Settings, talkative_generator: Path, tmp_path: Path) -> None:
    settings = eval_ready(settings, talkative_generator)
    with TestClient(app=create_app(settings)) as client:
        r = client.post("/v1/evals", json={"limit": 5, "systems": ["prompt", "rag"]}, headers=H)
        assert r.status_code == 202, r.text
        job = wait_job(client, r.json()["id"], H, timeout=120)
        assert job["status"] == "succeeded", job
        report = client.get(f"/v1/evals/{job['id']}", headers=H).json()
        assert report["engine"]["engine"] == "transformers" and report["engine"]["weights_sha256"]
        assert report["engine"]["decoding"]["repetition_penalty"] == settings.generation.repetition_penalty
        served = {}
        for q in report["questions"]:
            chat = client.post("/v1/chat", json={"question": q["question"], "mode": "rag"}, headers=H)
            assert chat.status_code == 200, chat.text
            served[q["id"]] = chat.json()["answer"]
    assert len(served) == 5
    for q in report["questions"]:
        assert q["systems"]["rag"]["answer"] == served[q["id"]], q["question"]
    # prompt-only and rag answers differ somewhere: the comparison is not vacuous
    # Not vacuous: answers are text, differ between questions and between systems.
    assert len({served[q["id"]] for q in report["questions"]}) >= 3 and all(served.values())
    assert any(q["systems"]["rag"]["answer"] != q["systems"]["prompt"]["answer"] for q in report["questions"])

    # The CLI path builds the same backend itself (inference.loader.load_engine) and answers the same.
    cli = run_evaluation(settings, EvalOptions(limit=5, systems=("rag",), out_dir=tmp_path / "cli"))
    assert cli["engine"]["engine"] == "transformers"
    assert cli["engine"]["weights_sha256"] == report["engine"]["weights_sha256"]
    assert [q["systems"]["rag"]["answer"] for q in cli["questions"]] == [served[q["id"]] for q in report["questions"]]
    assert json.loads((tmp_path / "cli" / "report.json").read_text())["engine"] == cli["engine"]
