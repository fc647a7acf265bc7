"""Export a peft LoRA adapter (trained on the transformers model) as a GGUF LoRA for the llama.cpp engine.

What llama.cpp's own ``convert_lora_to_gguf.py`` does for Llama-architecture models, with the ``gguf``
package: tensors renamed to GGUF names (``blk.N.attn_q.weight.lora_a``), ``lora_alpha`` stored so the
runtime scale is ``alpha / r`` as in peft, and the B matrices of ``q_proj``/``k_proj`` permuted the way the
GGUF converter permutes the base Q/K weights for rotary embeddings (transformers un-permutes them when it
loads a GGUF, so the adapter was trained in the un-permuted layout).

Every export carries all seven linear modules of every block at the adapter's rank, zeros where the adapter
has none (a LoRA of B = 0 changes nothing). ik_llama.cpp keeps the compute graph's memory plan between calls
when the graph has as many nodes as before: switching between two adapters on different modules or layers
(say, v_proj-only and o_proj-only) reused a plan sized for the other and crashed the process. Same modules,
same rank: same graph; the engine refuses an adapter of another rank than the ones it holds.

The export is cached next to the adapter (``adapter/adapter.gguf``) and redone when the adapter or the export
format changes.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.errors import InvalidInputError

logger = logging.getLogger(__name__)

GGUF_NAME = "adapter.gguf"
# peft module name -> GGUF tensor name inside a block (Llama family).
_MODULES = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output",
            "gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down"}
_KEY = re.compile(r"layers\.(\d+)\.(?:self_attn|mlp)\.(\w+)\.lora_([AB])\.weight$")
EXPORT_VERSION = 2  # 2: every module of every block, zero-padded (older exports are redone)


@dataclass(frozen=True)
class LoraShapes:
    """The base model's dimensions that fix every LoRA tensor's shape (Llama family)."""

    n_layer: int
    hidden: int
    intermediate: int
    n_head: int
    n_head_kv: int

    @classmethod
    def from_config(cls, config: object) -> LoraShapes:
        """From a transformers ``LlamaConfig``-like object."""
        n_head = int(config.num_attention_heads)  # type: ignore[attr-defined]
        return cls(int(config.num_hidden_layers), int(config.hidden_size),  # type: ignore[attr-defined]
                   int(config.intermediate_size), n_head,  # type: ignore[attr-defined]
                   int(getattr(config, "num_key_value_heads", None) or n_head))

    def in_out(self, module: str) -> tuple[int, int]:
        """(input, output) features of ``module``."""
        kv = self.hidden // self.n_head * self.n_head_kv
        return {"q_proj": (self.hidden, self.hidden), "k_proj": (self.hidden, kv), "v_proj": (self.hidden, kv),
                "o_proj": (self.hidden, self.hidden), "gate_proj": (self.hidden, self.intermediate),
                "up_proj": (self.hidden, self.intermediate), "down_proj": (self.intermediate, self.hidden)}[module]


def adapter_rank(adapter_dir: Path) -> int:
    """The LoRA rank ``r`` of a peft adapter folder."""
    return int(json.loads((adapter_dir / "adapter_config.json").read_text()).get("r", 0))


def _permute(weights: np.ndarray, n_head: int) -> np.ndarray:
    """convert_hf_to_gguf's rotary permutation of the output rows (heads interleaved -> halves)."""
    rows = weights.shape[0]
    return weights.reshape(n_head, 2, rows // n_head // 2, *weights.shape[1:]).swapaxes(1, 2).reshape(weights.shape)


def export_lora_gguf(adapter_dir: Path, shapes: LoraShapes, *, out: Path | None = None) -> Path:
    """Write ``adapter_dir``'s LoRA as GGUF, every module of every block (zeros where the adapter has none;
    skipped when an up-to-date export exists); returns its path.

    Args:
        adapter_dir: a peft adapter folder (``adapter_config.json`` + ``adapter_model.safetensors``).
        shapes: the base model's dimensions (layer count, Q/K permutation heads, padding shapes).

    Raises:
        InvalidInputError: the adapter is not a plain LoRA on Llama-style linear layers.
    """
    import gguf
    from safetensors.numpy import load_file

    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    weights_file = adapter_dir / "adapter_model.safetensors"
    out = out or adapter_dir / GGUF_NAME
    if out.is_file() and out.stat().st_mtime >= weights_file.stat().st_mtime and _export_version(out) == EXPORT_VERSION:
        return out
    if config.get("peft_type", "LORA") != "LORA" or config.get("use_rslora") or config.get("use_dora"):
        raise InvalidInputError(f"{adapter_dir}: only plain LoRA adapters can be served by llama.cpp "
                                "(not rsLoRA/DoRA); serve it with the transformers engine")
    rank = int(config.get("r", 0))
    if rank % 8:
        # Measured: the wheel's LoRA kernels answer garbage (EOS at once) for r=4 and match peft for r=8.
        raise InvalidInputError(f"{adapter_dir}: the llama.cpp engine serves LoRA ranks that are multiples of 8, "
                                f"this adapter has r={rank}; retrain with r=8/16/32 or set generation.engine=transformers")
    tensors = load_file(str(weights_file))
    writer = gguf.GGUFWriter(str(out.with_suffix(".tmp")), "llama")
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(config["lora_alpha"]))
    writer.add_uint32("tunerag.export_version", EXPORT_VERSION)
    found: dict[tuple[int, str, str], np.ndarray] = {}
    for key in sorted(tensors):
        match = _KEY.search(key)
        if match is None or match.group(2) not in _MODULES or int(match.group(1)) >= shapes.n_layer:
            raise InvalidInputError(f"{adapter_dir}: tensor {key!r} is not a LoRA on a Llama linear layer of this model")
        found[(int(match.group(1)), match.group(2), match.group(3))] = tensors[key].astype(np.float32)
    count = 0
    for layer in range(shapes.n_layer):
        for module, gguf_name in _MODULES.items():
            fan_in, fan_out = shapes.in_out(module)
            a = found.get((layer, module, "A"), np.zeros((rank, fan_in), dtype=np.float32))
            b = found.get((layer, module, "B"), np.zeros((fan_out, rank), dtype=np.float32))
            if a.shape != (rank, fan_in) or b.shape != (fan_out, rank):
                raise InvalidInputError(f"{adapter_dir}: layer {layer} {module} has LoRA shapes {a.shape}/{b.shape}, "
                                        f"this model needs {(rank, fan_in)}/{(fan_out, rank)}")
            if module in ("q_proj", "k_proj"):
                b = _permute(b, shapes.n_head if module == "q_proj" else shapes.n_head_kv)
            count += (layer, module, "A") in found
            writer.add_tensor(f"blk.{layer}.{gguf_name}.weight.lora_a", np.ascontiguousarray(a))
            writer.add_tensor(f"blk.{layer}.{gguf_name}.weight.lora_b", np.ascontiguousarray(b))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    os.replace(out.with_suffix(".tmp"), out)
    logger.info("exported %d LoRA modules of %s to %s (padded to %d)", count, adapter_dir, out, 7 * shapes.n_layer)
    return out


def _export_version(path: Path) -> int | None:
    from gguf import GGUFReader

    try:
        field = GGUFReader(str(path)).fields.get("tunerag.export_version")
    except (ValueError, OSError):
        return None
    return int(field.parts[field.data[0]][0]) if field is not None else None
