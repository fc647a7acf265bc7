"""The one place a generation engine is chosen and built: the service, the CLI, evaluation and the benchmarks
all call :func:`load_engine`, so a report describes the engine, weights and decoding that ``/v1/chat`` uses.

    server.generation_backend=openai  -> OpenAIBackend (vLLM, llama.cpp's server: any OpenAI-compatible server)
    generation.engine=llamacpp / auto -> ContinuousBackend on the llama.cpp engine (when it can run here)
    generation.engine=transformers    -> LocalBackend on transformers + peft (GPU, or where llama.cpp cannot run)
"""

from __future__ import annotations

import copy
import functools
import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.errors import ConfigError
from core.settings import Settings
from inference.backends import GenerationBackend
from inference.llamacpp_bindings import llamacpp_available

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedEngine:
    """A built backend, the tokenizer prompts are rendered with, and what it runs (for reports and /ready)."""

    backend: GenerationBackend
    tokenizer: Any
    info: dict[str, Any]


def choose_engine(settings: Settings) -> tuple[str, str]:
    """``("llamacpp" | "transformers", reason)`` for ``generation.engine`` (``auto`` decides by what is here).

    Raises:
        ConfigError: ``llamacpp`` was asked for but cannot run (no wheel, no GGUF generator, not on CPU).
    """
    from core.models import generator_gguf_path, resolve_device

    choice = settings.generation.engine
    if choice == "transformers":
        return "transformers", "generation.engine=transformers"
    problems = []
    if not llamacpp_available():
        problems.append("the ik-llama-cpp-python wheel is not installed (make setup installs it)")
    if resolve_device(settings) != "cpu":
        problems.append("the device is not the CPU (the wheel is a CPU build)")
    if generator_gguf_path(settings) is None:
        problems.append(f"the generator {settings.models.generator!r} is not a GGUF model")
    if not problems:
        return "llamacpp", "llama.cpp with continuous batching"
    if choice == "llamacpp":
        raise ConfigError("generation.engine=llamacpp cannot run: " + "; ".join(problems))
    return "transformers", "; ".join(problems)


@functools.lru_cache(maxsize=16)
def _sha256(path: str, size: int, mtime: float) -> str:
    """sha256 of a file, memoized by path, size and mtime (hashing 270 MB takes a second)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _file_sha256(path: Path) -> str:
    stat = path.stat()
    return _sha256(str(path.resolve()), stat.st_size, stat.st_mtime)


def with_weights_hash(info: dict[str, Any]) -> dict[str, Any]:
    """``info`` (``LoadedEngine.info``) with ``weights_sha256`` of its ``weights_path`` (a file, or a model folder's
    weight files), for reports and answer caches. Not done at start-up: it reads the whole weights file."""
    location = info.get("weights_path")
    if location is None or "weights_sha256" in info:
        return info
    path = Path(location)
    if path.is_file():
        return info | {"weights_sha256": _file_sha256(path)}
    files = sorted(p for p in path.glob("*") if p.suffix in (".safetensors", ".bin", ".gguf")) if path.is_dir() else []
    if not files:
        return info | {"weights_sha256": None}
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.name.encode() + _file_sha256(file).encode())
    return info | {"weights_sha256": digest.hexdigest()}


def decoding_info(settings: Settings) -> dict[str, Any]:
    """The decoding settings that change an answer (the same for every engine)."""
    gen = settings.generation
    return {"temperature": gen.temperature, "top_p": gen.top_p, "repetition_penalty": gen.repetition_penalty,
            "repetition_penalty_scope": gen.repetition_penalty_scope, "refusal_min_prob": gen.refusal_min_prob,
            "max_context_tokens": gen.max_context_tokens}


def load_engine(settings: Settings, *, on_step: Callable[[int], None] | None = None) -> LoadedEngine:
    """Build the configured backend (see the module docstring), once per process.

    Args:
        on_step: the llama.cpp engine calls it after every decode step with the number of sequences (metrics).

    Raises:
        ConfigError: the configured engine cannot run here, or the remote backend has no URL.
    """
    from core.models import resolve_generator

    if settings.server.generation_backend == "openai":
        from transformers import AutoConfig, AutoTokenizer

        from inference.backends import OpenAIBackend
        from inference.gguf_lora import LoraShapes

        if not settings.server.openai_base_url:
            raise ConfigError("server.generation_backend=openai needs server.openai_base_url")

        location = resolve_generator(settings).location
        tokenizer = AutoTokenizer.from_pretrained(location)
        shapes = LoraShapes.from_config(AutoConfig.from_pretrained(location))
        backend = OpenAIBackend(settings.server.openai_base_url, settings.server.openai_api_key,
                                settings.models.generator, settings.generation, settings.server.openai_timeout_s,
                                settings.server.openai_dialect, shapes)
        info = {"engine": "openai", "dialect": settings.server.openai_dialect,
                "base_url": settings.server.openai_base_url, "model": settings.models.generator}
        return LoadedEngine(backend, tokenizer, info | {"decoding": decoding_info(settings)})
    choice, reason = choose_engine(settings)
    logger.warning("generation engine: %s (%s)", choice, reason)
    if choice == "llamacpp":
        import torch

        from inference.backends import ContinuousBackend
        from inference.llamacpp_engine import engine_from_settings

        # llama.cpp's worker threads wait on each other at every layer: a torch op (query embedding) taking
        # both cores at the same moment stalls the whole decode step, so torch gets one thread here.
        torch.set_num_threads(1)
        llama = engine_from_settings(settings, on_step=on_step)
        info = {"engine": "llamacpp", "reason": reason, "weights": llama.gguf_name, "weights_path": str(llama.gguf_path),
                "weights_kind": settings.generation.llamacpp_weights}
        return LoadedEngine(ContinuousBackend(llama, llama.tokenizer, settings.generation), llama.tokenizer,
                            info | {"decoding": decoding_info(settings)})
    from inference.backends import LocalBackend
    from inference.engine import GenerationEngine

    engine = GenerationEngine.from_settings(settings)
    resolved = resolve_generator(settings)
    info = {"engine": "transformers", "reason": reason, "weights": str(resolved.location),
            "weights_path": str(resolved.location)}
    # The engine's worker thread changes its tokenizer's padding/truncation state per batch; a Rust tokenizer
    # used meanwhile from the event loop fails with "Already borrowed", so prompts are rendered with a copy.
    return LoadedEngine(LocalBackend(engine, settings.generation), copy.deepcopy(engine.tokenizer),
                        info | {"decoding": decoding_info(settings)})


__all__ = ["LoadedEngine", "choose_engine", "decoding_info", "load_engine", "with_weights_hash"]
