from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SUBCOMMANDS = ["serve", "index", "search", "ask", "train", "eval", "models", "data", "pipeline", "feedback", "monitor"]


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "COLUMNS": "200", **(env or {})}
    return subprocess.run([sys.executable, "-m", "service.cli", *args], capture_output=True, text=True,
                          env=full_env, cwd=Path(__file__).parent.parent, timeout=120)


def test_help_lists_every_subcommand() -> None:
    result = run_cli("--help")
    assert result.returncode == 0, result.stderr
    for name in SUBCOMMANDS:
        assert f" {name} " in result.stdout


@pytest.mark.parametrize(
    "args",
    [["serve"], ["index"], ["search"], ["ask"], ["train", "embedder"], ["train", "generator"], ["train", "verifier"],
     ["eval"],
     ["models", "prepare"]],
)
def test_each_subcommand_prints_help(args: list[str]) -> None:
    result = run_cli(*args, "--help")
    assert result.returncode == 0, result.stderr
    assert "Usage:" in result.stdout


def test_missing_model_package_is_one_actionable_line(tmp_path: Path) -> None:
    result = run_cli("ask", "hello", "--mode", "prompt",
                     env={"TUNERAG_MODELS__GENERATOR": "package:llm-not-installed", "TUNERAG_CACHE_DIR": str(tmp_path)})
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error: generator model package 'llm-not-installed' is not installed")
    assert "Traceback" not in result.stderr


def test_bad_option_value_is_a_usage_error() -> None:
    result = run_cli("ask", "hello", "--mode", "telepathy")
    assert result.returncode == 1
    assert "--mode must be one of prompt, rag, ft, combined" in result.stderr


def test_invalid_settings_are_reported_without_traceback() -> None:
    result = run_cli("search", "x", env={"TUNERAG_RETRIEVAL__TOP_K": "-3"})
    assert result.returncode == 1
    assert "retrieval.top_k" in result.stderr and "Traceback" not in result.stderr


def test_index_then_search_from_the_command_line(tmp_path: Path, tiny_embedder_dir: Path) -> None:
    env = {"TUNERAG_DATA_DIR": str(tmp_path / "var"), "TUNERAG_MODELS__EMBEDDER": str(tiny_embedder_dir)}
    kb = tmp_path / "kb"
    kb.mkdir()
    (kb / "returns.md").write_text("# Returns\n\n## Window\n\nReturns are accepted for 30 days.\n")
    (kb / "faq.jsonl").write_text('{"id": "faq-sunday", "question": "Do you ship on Sundays?", "answer": "No."}\n')
    first = run_cli("index", str(kb), env=env)
    assert first.returncode == 0, first.stderr
    report = json.loads(first.stdout.strip().splitlines()[-1])
    assert (report["version"], report["documents"], report["embedded_chunks"]) == ("v000001", 2, 2)
    found = run_cli("search", "ship on Sundays", "-k", "1", "--json", "--mode", "bm25", env=env)
    assert found.returncode == 0, found.stderr
    payload = json.loads(found.stdout)
    assert payload["index_version"] == "v000001" and payload["results"][0]["doc_id"] == "faq-sunday"
    text = run_cli("search", "returns window", "-k", "1", "--mode", "bm25", env=env)
    assert text.stdout.startswith("1. [returns] Returns > Window")
    (kb / "broken.md").write_bytes(b"")
    bad = run_cli("index", str(kb), env=env)
    assert bad.returncode == 1 and "broken.md: file is empty" in bad.stderr


def test_search_without_an_index_says_what_to_run(tmp_path: Path, tiny_embedder_dir: Path) -> None:
    result = run_cli("search", "x", env={"TUNERAG_DATA_DIR": str(tmp_path), "TUNERAG_MODELS__EMBEDDER": str(tiny_embedder_dir)})
    assert result.returncode == 1 and "run `tunerag index` first" in result.stderr


def test_monitor_names_a_server_it_cannot_reach(tmp_path: Path) -> None:
    result = run_cli("--data-dir", str(tmp_path / "var"), "monitor", "--url", "http://127.0.0.1:9", "--out",
                     str(tmp_path / "m.html"))
    assert result.returncode == 1 and "cannot reach http://127.0.0.1:9" in result.stderr, result.stderr
    assert not (tmp_path / "m.html").exists()
