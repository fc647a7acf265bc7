from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from core.errors import ModelNotFoundError
from core.models import load_embedder, load_generator, resolve_embedder, resolve_generator
from core.settings import Settings, load_settings


def test_packaged_embedder_resolves_to_its_model_folder() -> None:
    resolved = resolve_embedder(load_settings())
    assert resolved.source == "package"
    assert Path(resolved.location).name == "model"
    assert (Path(resolved.location) / "config.json").is_file()


def test_packaged_generator_resolves_to_gguf_without_converting(tmp_path: Path) -> None:
    resolved = resolve_generator(load_settings(cache_dir=tmp_path), convert=False)
    assert resolved.source == "package"
    assert resolved.gguf_file and resolved.gguf_file.endswith(".gguf")
    assert not (tmp_path / "generators").exists()


@pytest.mark.parametrize("role", ["generator", "embedder"])
def test_missing_package_names_the_install_command(role: str) -> None:
    settings = load_settings(models={role: "package:tunerag-no-such-model"})
    resolve = resolve_generator if role == "generator" else resolve_embedder
    with pytest.raises(ModelNotFoundError, match=r"pip install tunerag-no-such-model.*TUNERAG_MODELS__"):
        resolve(settings)


def test_missing_folder_is_a_clear_error(tmp_path: Path) -> None:
    settings = load_settings(models={"generator": str(tmp_path / "gone"), "embedder": str(tmp_path / "gone")})
    with pytest.raises(ModelNotFoundError, match="generator folder not found"):
        resolve_generator(settings)
    with pytest.raises(ModelNotFoundError, match="embedder folder not found"):
        resolve_embedder(settings)


def test_folder_without_model_files_is_refused(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match=r"neither a \.gguf file nor config\.json"):
        resolve_generator(load_settings(models={"generator": str(tmp_path / "empty")}))


def test_hub_ids_are_only_used_when_named() -> None:
    resolved = resolve_generator(load_settings(models={"generator": "HuggingFaceTB/SmolLM2-135M-Instruct"}),
                                 convert=False)
    assert (resolved.source, resolved.location) == ("hub", "HuggingFaceTB/SmolLM2-135M-Instruct")


def test_tiny_models_load_once_per_process(settings: Settings) -> None:
    model_a, tok_a = load_generator(settings)
    model_b, tok_b = load_generator(settings)
    assert model_a is model_b and tok_a is tok_b
    assert tok_a.padding_side == "left" and tok_a.pad_token is not None
    assert load_embedder(settings) is load_embedder(settings)


def test_gguf_in_a_local_folder_is_found(tmp_path: Path) -> None:
    package = resolve_generator(load_settings(cache_dir=tmp_path / "empty-cache"), convert=False)
    assert package.source == "package"
    gguf = Path(package.location)
    folder = tmp_path / "mine"
    folder.mkdir()
    name = next(gguf.glob("*.gguf")).name
    (folder / name).symlink_to(gguf / name)
    resolved = resolve_generator(load_settings(cache_dir=tmp_path, models={"generator": str(folder)}), convert=False)
    assert (resolved.source, resolved.gguf_file) == ("path", name)
    with pytest.raises(ModelNotFoundError, match="GGUF file 'other.gguf' not found"):
        resolve_generator(load_settings(models={"generator": str(folder), "generator_gguf_file": "other.gguf"}))
    shutil.rmtree(folder)
