from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SUBCOMMANDS = ["serve", "index", "search", "ask", "train", "eval", "models"]


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
    [["serve"], ["index"], ["search"], ["ask"], ["train", "embedder"], ["train", "generator"], ["eval"],
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
    assert "--mode must be one of combined, rag, ft, prompt" in result.stderr


def test_invalid_settings_are_reported_without_traceback() -> None:
    result = run_cli("search", "x", env={"TUNERAG_RETRIEVAL__TOP_K": "-3"})
    assert result.returncode == 1
    assert "retrieval.top_k" in result.stderr and "Traceback" not in result.stderr
