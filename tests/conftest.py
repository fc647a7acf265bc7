"""Shared fixtures: isolated settings per test and tiny random-weight models built once per session."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

# No test may reach a model hub.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).parent))

from postgres import PostgresServer, start_server  # noqa: E402
from tiny_models import build_tiny_causal_lm, build_tiny_sentence_transformer  # noqa: E402

from core.settings import Settings, load_settings  # noqa: E402


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No TUNERAG_* variable of the developer's shell leaks into a test; cwd has no tunerag.yaml."""
    for key in list(os.environ):
        if key.startswith("TUNERAG_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="session")
def tiny_generator_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_causal_lm(tmp_path_factory.mktemp("tiny-lm") / "model")


@pytest.fixture(scope="session")
def tiny_embedder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_sentence_transformer(tmp_path_factory.mktemp("tiny-st") / "model")


@pytest.fixture(scope="session")
def talkative_generator(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny generator whose greedy answers are text that depends on the prompt (the default one answers
    newlines only, which would make answer comparisons pass vacuously)."""
    return build_tiny_causal_lm(tmp_path_factory.mktemp("talkative"), initializer_range=0.3)


@pytest.fixture
def settings(tmp_path: Path, tiny_generator_dir: Path, tiny_embedder_dir: Path) -> Settings:
    """Settings for an isolated instance in a temp dir, on the tiny models."""
    return load_settings(
        data_dir=tmp_path / "var",
        cache_dir=tmp_path / "cache",
        models={"generator": str(tiny_generator_dir), "embedder": str(tiny_embedder_dir)},
    )


@pytest.fixture(scope="session")
def real_cache_dir() -> Path:
    """The converted real generator is shared across slow tests (conversion takes ~15 s)."""
    return Path(os.environ.get("TUNERAG_TEST_CACHE_DIR", Path.home() / ".cache" / "tunerag"))


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One throwaway PostgreSQL server for the session (skipped, with the reason, where the binaries are missing)."""
    # Not under pytest's tmp dir: that is private to root, and the server runs as the postgres user.
    root = Path(tempfile.mkdtemp(prefix="tunerag-pg-"))
    server = start_server(root)
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """A fresh, empty database on the session's server."""
    return postgres_server.create_database()
