"""Drift monitoring in the running service: replayed held-out in-domain questions raise no alarm, questions of
another domain raise one, and nothing about a query but numbers leaves the admin endpoint."""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path

import numpy as np
import pytest
from litestar.testing import TestClient

from core.jsonl import read_jsonl
from core.settings import SAMPLE_DIR, ModelSettings, MonitoringSettings, Settings
from monitoring.drift import DriftTests, embedding_drift, novelty_drift, score_drift
from monitoring.monitor import DriftMonitor, Reference
from service.app import create_app

H_ADMIN = {"X-API-Key": "admin-key"}
H_CHAT = {"X-API-Key": "chat-key"}
# Another domain: cooking and astronomy questions, nothing a shipping-software help center covers.
FOODS = ["pasta", "rice", "lentils", "salmon", "broccoli", "eggs", "quinoa", "beef stew"]
SKY = ["Jupiter", "the Andromeda galaxy", "a lunar eclipse", "Saturn's rings", "the Orion nebula", "a comet"]
OTHER_DOMAIN = ([f"How long should I boil {f} at high altitude?" for f in FOODS]
                + [f"What spices go well with {f} in a curry?" for f in FOODS]
                + [f"Can I see {s} with a small telescope tonight?" for s in SKY]
                + [f"How far away is {s} from Earth in light years?" for s in SKY]
                + [f"Which wine pairs with roasted {f}?" for f in FOODS])


def test_the_tests_separate_shifted_samples_and_not_identical_ones() -> None:
    rng = np.random.default_rng(0)
    tests = DriftTests(alpha=0.05)
    same_a, same_b = rng.normal(size=(80, 16)), rng.normal(size=(60, 16))
    shifted = rng.normal(size=(60, 16)) + 0.8
    assert not embedding_drift(same_a, same_b, tests)["separable"]
    moved = embedding_drift(same_a, shifted, tests)
    assert moved["separable"] and moved["statistic"] > 0.9
    # Novelty: the reference covers topics (directions) 0-3; the window asks about topics 4-5.
    def topics(ids: list[int], n: int) -> np.ndarray:
        centres = np.eye(16)[rng.choice(ids, n)]
        return centres + rng.normal(size=(n, 16)) * 0.15

    reference = topics([0, 1, 2, 3], 120)
    assert not novelty_drift(reference, topics([0, 1, 2, 3], 60), tests)["drift"]
    assert not novelty_drift(reference, topics([1], 60), tests)["drift"]  # a narrower part: covered
    assert novelty_drift(reference, topics([4, 5], 60), tests)["drift"]
    assert not score_drift(rng.uniform(0.4, 0.8, 200), rng.uniform(0.4, 0.8, 60), tests)["drift"]
    assert not score_drift(rng.uniform(0.4, 0.8, 200), rng.uniform(0.6, 0.9, 60), tests)["drift"]  # better: fine
    assert score_drift(rng.uniform(0.4, 0.8, 200), rng.uniform(0.1, 0.4, 60), tests)["drift"]


def test_the_window_is_bounded_and_checks_run_on_schedule() -> None:
    rng = np.random.default_rng(1)
    reference = Reference(rng.normal(size=(50, 8)).astype(np.float32), rng.uniform(0.5, 0.9, 50), 0.1, {"x": 50},
                          "v000001", "e")
    config = MonitoringSettings(window_size=30, min_window=10, check_every=5, history_size=3)
    monitor = DriftMonitor(reference, config)
    checks = [monitor.observe(rng.normal(size=8), 0.7, False) for _ in range(40)]
    ran = [i + 1 for i, c in enumerate(checks) if c is not None]
    assert ran == [10, 15, 20, 25, 30, 35, 40]
    status = monitor.status()
    assert status["window"]["size"] == 30 and len(status["history"]) == 3 and status["window"]["observed_total"] == 40


@pytest.fixture
def monitored(settings: Settings, tmp_path: Path) -> tuple[Settings, list[str]]:
    """Reference: the training chats and half of the eval set; the other half is held out for replay.

    On the packaged embedder (all-MiniLM-L6-v2): a random-weight one has no notion of topic to drift from."""
    items = [row for _, row in read_jsonl(SAMPLE_DIR / "eval.jsonl")]
    answerable = [i for i in items if i["answerable"]]
    kept, heldout = answerable[::2], [i["question"] for i in answerable[1::2]]
    eval_file = tmp_path / "reference-eval.jsonl"
    eval_file.write_text("".join(json.dumps(i) + "\n" for i in kept))
    configured = settings.model_copy(update={
        "models": settings.models.model_copy(update={"embedder": ModelSettings().embedder}),
        "generation": settings.generation.model_copy(update={"max_new_tokens": 2, "batch_wait_ms": 1}),
        "eval": settings.eval.model_copy(update={"eval_file": eval_file}),
        "monitoring": MonitoringSettings(window_size=40, min_window=20, check_every=10),
        "server": settings.server.model_copy(update={
            "api_keys": {"admin-key": ["chat", "admin"], "chat-key": ["chat"]}, "rate_limit_per_minute": 10_000}),
    })
    return configured, heldout


def replay(client: TestClient, questions: list[str], start: int) -> list[dict]:
    """Ask each question through /v1/chat; the status after each check (None between checks)."""
    statuses = []
    for n, question in enumerate(questions, start=start + 1):
        assert client.post("/v1/chat", json={"question": question, "mode": "rag"}, headers=H_CHAT).status_code == 200
        deadline = time.monotonic() + 30
        while (status := client.get("/v1/monitoring", headers=H_ADMIN).json())["window"]["observed_total"] < n:
            assert time.monotonic() < deadline, status
            time.sleep(0.02)
        statuses.append(status)
    return statuses


@pytest.mark.slow
def test_in_domain_replay_raises_no_alarm_and_another_domain_raises_one(monitored: tuple[Settings, list[str]]) -> None:
    settings, heldout = monitored
    with TestClient(app=create_app(settings)) as client:
        assert client.get("/v1/monitoring", headers=H_CHAT).status_code == 403
        in_domain = replay(client, heldout[:40], 0)
        checks = list({s["last_check"]["observed"]: s["last_check"] for s in in_domain if s["last_check"]}.values())
        summary = [{n: (t["statistic"], t["p_value"]) for n, t in c["tests"].items()} for c in checks]
        assert len(checks) == 3 and not any(c["drift"] for c in checks), summary
        assert set(checks[-1]["tests"]) == {"embedding_novelty", "embedding_classifier", "top_score_ks", "refusal_rate"}

        other = replay(client, list(itertools.islice(itertools.cycle(OTHER_DOMAIN), 40)), 40)
        alarmed = [i + 1 for i, s in enumerate(other) if s["drift_detected"]]
        assert alarmed, [{n: (t["statistic"], t["p_value"]) for n, t in s["last_check"]["tests"].items()} for s in other]
        assert alarmed[0] <= 20  # within 20 queries of the switch (the window is 40, checks every 10)
        final = client.get("/v1/monitoring", headers=H_ADMIN)
        assert final.json()["drift_detected"] is True
        # Numbers only: no query text in what the admin endpoint returns.
        body = final.text
        assert not any(q in body for q in heldout[:40] + OTHER_DOMAIN)
        from monitoring.page import render_page

        page = render_page(final.json())  # what `tunerag monitor` writes
        assert "tunerag monitoring: drift detected" in page and page.count('<img alt="drift chart"') == 2
        metrics = client.get("/metrics").text
        assert "tunerag_drift_detected 1.0" in metrics and 'tunerag_drift_p_value{test="embedding_novelty"}' in metrics


def test_the_reference_follows_the_active_adapters_training_files(settings: Settings, tmp_path: Path) -> None:
    """An adapter's manifest names its chat files as strings: the reference reads them (a server with an
    active adapter once failed to start on them: ``'str' object has no attribute 'is_file'``)."""
    from core import artifacts
    from monitoring.monitor import reference_questions
    from service.monitoring import reference_chat_files

    chats = tmp_path / "team_chats.jsonl"
    chats.write_text(json.dumps({"doc_ids": ["billing-plans"], "messages": [
        {"role": "user", "content": "Is there a discount for yearly billing?"},
        {"role": "assistant", "content": "Yes."}]}) + "\n")
    artifact_id = artifacts.new_artifact_id("adapter")
    artifacts.run_dir(settings, "adapter", artifact_id).mkdir(parents=True)
    artifacts.finalize(settings, "adapter", artifact_id, {"data": {"sources": [str(chats)]}}, keep=[])
    artifacts.activate(settings, "adapter", artifact_id)
    files = reference_chat_files(settings)
    assert files == [chats]
    questions, _, sources = reference_questions(settings, files)
    assert "Is there a discount for yearly billing?" in questions and sources[str(chats)] == 1
