"""The answerability verifier: its recipe on the sample chats (tiny model), its checks at load, and the API
gating generation with it (real app over HTTP, real FAISS index, real SQLite)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from litestar.testing import TestClient

from core import artifacts
from core.errors import ConfigError, InvalidInputError
from core.settings import SAMPLE_DIR, Settings, VerifierTrainingSettings
from retrieval.answerability import Verifier
from service.app import create_app
from training.verifier_recipe import choose_threshold, threshold_metrics, train_verifier


def _cfg(**update: object) -> VerifierTrainingSettings:
    return VerifierTrainingSettings(max_steps=2, folds=2, per_device_train_batch_size=8, max_length=64).model_copy(
        update=update)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, tiny_generator_dir: Path, tiny_embedder_dir: Path):
    from core.settings import load_settings

    root = tmp_path_factory.mktemp("verifier")
    settings = load_settings(data_dir=root / "var", cache_dir=root / "cache",
                             models={"generator": str(tiny_generator_dir), "embedder": str(tiny_embedder_dir)})
    return settings, train_verifier(settings, _cfg())


def test_a_time_budget_is_shared_by_the_fold_runs_and_the_final_one(tmp_path: Path, tiny_generator_dir: Path,
                                                                  tiny_embedder_dir: Path) -> None:
    """A budget below one step each: the two fold runs and the final one each stop after their 3 calibration
    steps, in proportion to their pairs, and the manifest lists all three. (Its own data dir: the module's
    other tests expect exactly one verifier artifact.)"""
    from core.settings import load_settings

    settings = load_settings(data_dir=tmp_path / "var", cache_dir=tmp_path / "cache",
                             models={"generator": str(tiny_generator_dir), "embedder": str(tiny_embedder_dir)})
    m = train_verifier(settings, _cfg().model_copy(update={"max_train_seconds": 0.04, "max_steps": -1})).manifest
    runs = m["time_budget"]
    assert len(runs) == 3 and all(r["steps"] == 3 and r["stopped_early"] for r in runs), runs
    assert runs[2]["budget_s"] > 0 and runs[2]["budget_s"] == pytest.approx(runs[0]["budget_s"] + runs[1]["budget_s"], rel=0.2)
    assert m["global_steps"] == 3


def test_recipe_builds_gold_gold_removed_and_unanswerable_contexts_and_records_a_threshold(trained) -> None:
    settings, artifact = trained
    manifest = artifact.manifest
    assert (artifact.path / "model").is_dir() and (artifact.path / "manifest.json").is_file()
    contexts = manifest["data"]["contexts"]
    # Every answerable chat gives a context with its gold passage and one with every gold document removed.
    assert contexts["gold"] == contexts["gold_removed"] > 200 and contexts["unanswerable"] >= 20
    # One positive pair per gold context (the same question asked in several chats counts once).
    assert 0.8 * contexts["gold"] <= manifest["data"]["pairs"]["positive"] <= contexts["gold"]
    assert 0.0 <= manifest["threshold"] <= 1.0
    oof = manifest["metrics_out_of_fold"]
    assert oof["false_refusal_rate"] <= settings.train_verifier.max_false_refusal_rate + 1e-9
    assert {"roc_auc", "correct_refusal_rate", "answer_precision", "answer_recall"} <= set(oof)
    assert manifest["refusal_answer"].startswith("Hi there!") and "couldn't find" in manifest["refusal_answer"]
    assert manifest["index"]["version"] == "v000001" and len(manifest["data_hash"]) == 64
    assert not (settings.paths.artifacts_dir / "verifier" / ".runs" / artifact.id).exists()


def test_threshold_is_the_highest_within_the_false_refusal_budget() -> None:
    scores = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05] + [0.55, 0.2, 0.1, 0.01]
    answerable = [True] * 10 + [False] * 4
    t = choose_threshold(scores, answerable, 0.2)  # two of ten answerable contexts may be refused
    assert t == 0.2
    m = threshold_metrics(scores, answerable, t)
    assert m["false_refusal_rate"] == 0.2 and m["correct_refusal_rate"] == 0.5  # 0.1 and 0.01 refused; 0.55, 0.2 not
    assert choose_threshold(scores, answerable, 0.05) == 0.05


def test_too_few_examples_are_refused_naming_the_counts(settings: Settings, tmp_path: Path) -> None:
    rows = [json.loads(line) for line in (SAMPLE_DIR / "chat_train.jsonl").read_text().splitlines()[:6]]
    small = tmp_path / "few.jsonl"
    small.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(InvalidInputError, match=r"at least 20 positive and 20 negative .* gave \d+ positive and \d+ negative"):
        train_verifier(settings, _cfg(chat_files=[small], refusal_answer="Sorry, not in our help center."))
    assert not (settings.paths.artifacts_dir / "verifier").exists() or not any(
        p for p in (settings.paths.artifacts_dir / "verifier").iterdir() if not p.name.startswith("."))


def test_a_verifier_whose_tokenizer_changed_is_refused_at_load(trained, tmp_path: Path) -> None:
    _, artifact = trained
    manifest = {**artifact.manifest, "tokenizer_fingerprint": "0" * 64}
    with pytest.raises(ConfigError, match="tokenizer .* is not the one it was trained with"):
        Verifier.load(artifact.path, manifest)
    with pytest.raises(ConfigError, match="lacks 'threshold'"):
        Verifier.load(artifact.path, {k: v for k, v in artifact.manifest.items() if k != "threshold"})
    assert Verifier.load(artifact.path, artifact.manifest).threshold == artifact.manifest["threshold"]


# --- serving: after retrieval, before generation ---------------------------------------------------------------

@pytest.fixture
def served(trained, settings: Settings) -> Iterator[tuple[TestClient, artifacts.Artifact, list[str]]]:
    """The app on the trained verifier's data dir, with the generator's calls recorded."""
    verifier_settings, artifact = trained
    app_settings = verifier_settings.model_copy(update={"generation": settings.generation.model_copy(
        update={"max_new_tokens": 4})})
    with TestClient(app=create_app(app_settings)) as client:
        calls: list[str] = []
        backend = client.app.state.service_state.backend
        real_generate, real_stream = backend.generate, backend.stream

        async def generate(prompt, *args, **kwargs):
            calls.append("generate")
            return await real_generate(prompt, *args, **kwargs)

        def stream(prompt, *args, **kwargs):
            calls.append("stream")
            return real_stream(prompt, *args, **kwargs)

        backend.generate, backend.stream = generate, stream
        yield client, artifact, calls
        client.post("/v1/verifiers/none/activate")


def _force(client: TestClient, threshold: float) -> None:
    """Keep the loaded verifier but move its threshold: above 1 it refuses everything, below 0 nothing."""
    client.app.state.service_state.verifier.threshold = threshold


def test_an_active_verifier_refuses_before_generating_and_says_so(served) -> None:
    client, artifact, calls = served
    listed = client.get("/v1/verifiers").json()
    assert [v["id"] for v in listed] == [artifact.id] and listed[0]["active"] is False
    r = client.post(f"/v1/verifiers/{artifact.id}/activate")
    assert r.status_code == 200 and r.json()["active_verifier"] == artifact.id
    assert client.get("/ready").json()["verifier"] == artifact.id

    _force(client, 2.0)
    for mode in ("rag", "combined"):  # rag works without any adapter
        body = client.post("/v1/chat", json={"question": "How do I void a label?", "mode": mode}).json()
        assert body["refused"] is True and body["answer"] == artifact.manifest["refusal_answer"]
        assert body["answerability"]["verifier"] == artifact.id and body["answerability"]["threshold"] == 2.0
        assert body["usage"]["completion_tokens"] == 0 and body["cited_doc_ids"] == []
    assert calls == []  # no generation at all
    with client.stream("POST", "/v1/chat", json={"question": "How do I void a label?", "stream": True}) as s:
        events = [line for line in s.iter_lines() if line.startswith("data: ")]
    done = json.loads(events[-1][6:])
    assert done["refused"] is True and calls == []
    completion = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "Void a label?"}]}).json()
    assert completion["tunerag"]["refused"] is True and calls == []

    _force(client, -1.0)
    body = client.post("/v1/chat", json={"question": "How do I void a label?", "mode": "rag"}).json()
    assert body["refused"] is False and body["answerability"]["score"] >= 0 and calls == ["generate"]
    # Without retrieval there is no context to judge: the verifier does not run.
    plain = client.post("/v1/chat", json={"question": "How do I void a label?", "mode": "prompt"}).json()
    assert plain["answerability"] is None

    assert client.post("/v1/verifiers/none/activate").json()["active_verifier"] is None
    body = client.post("/v1/chat", json={"question": "How do I void a label?", "mode": "rag"}).json()
    assert body["answerability"] is None
    assert client.post("/v1/verifiers/no-such-verifier/activate").status_code == 404


def test_the_active_verifier_is_loaded_again_at_start(served, trained) -> None:
    client, artifact, _ = served
    client.post(f"/v1/verifiers/{artifact.id}/activate")
    settings, _ = trained
    with TestClient(app=create_app(settings)) as again:
        assert again.get("/ready").json()["verifier"] == artifact.id


def test_eval_runs_the_verifier_systems_and_reports_their_refusal_decisions(trained, tmp_path: Path) -> None:
    from eval.runner import EvalOptions, run_evaluation

    settings, artifact = trained
    small = settings.model_copy(update={"eval": settings.eval.model_copy(update={"max_new_tokens": 4})})
    report = run_evaluation(small, EvalOptions(limit=6, systems=("rag", "rag+verifier"), out_dir=tmp_path / "r"))
    gated = report["systems"]["rag+verifier"]
    assert gated["status"] == "ok" and report["models"]["verifier"]["id"] == artifact.id
    counts = gated["refusals"]
    assert sum(counts.values()) == 6 and set(counts) == {"refused_unanswerable", "answered_unanswerable",
                                                         "refused_answerable", "answered_answerable"}
    rows = [q["systems"]["rag+verifier"] for q in report["questions"]]
    assert all(r["answerability"]["verifier"] == artifact.id for r in rows)
    for r in rows:  # a refused context got the verifier's refusal, not a generation
        if r["answerability"]["refused"]:
            assert r["answer"] == artifact.manifest["refusal_answer"]
    assert all(q["systems"]["rag"]["answerability"] is None for q in report["questions"])
    # What the verifier lets through is rag's prompt exactly: rag's answer is reused, never generated twice.
    passed = [q for q in report["questions"] if not q["systems"]["rag+verifier"]["answerability"]["refused"]]
    assert passed, "the tiny verifier must let something through for this check to mean anything"
    assert all(q["systems"]["rag+verifier"]["answer"] == q["systems"]["rag"]["answer"] for q in passed)
    generated = tmp_path / "r" / "answers" / "rag+verifier.jsonl"
    assert not generated.is_file() or not generated.read_text().strip(), "rag+verifier generated nothing of its own"
    assert "Refusal decisions" in (tmp_path / "r" / "report.md").read_text()
    # Without a system list, the verifier systems join the four when a verifier exists.
    from eval.runner import plan_evaluation

    assert {"rag+verifier", "combined+verifier"} <= set(plan_evaluation(small, EvalOptions(limit=1, out_dir=tmp_path / "p")).runs)
