"""Export a peft LoRA adapter (trained on the transformers model) as a GGUF LoRA for the llama.cpp engine.

What llama.cpp's own ``convert_lora_to_gguf.py`` does for Llama-architecture models, with the ``gguf``
package: tensors renamed to GGUF names (``blk.N.attn_q.weight.lora_a``), ``lora_alpha`` stored so the
runtime scale is ``alpha / r`` as in peft, and the B matrices of ``q_proj``/``k_proj`` permuted the way the
GGUF converter permutes the base Q/K weights for rotary embeddings (transformers un-permutes them when it
loads a GGUF, so the adapter was trained in the un-permuted layout).

The export is cached next to the adapter (``adapter/adapter.gguf``) and redone when the adapter changes.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

import numpy as np

from core.errors import InvalidInputError

logger = logging.getLogger(__name__)

GGUF_NAME = "adapter.gguf"
# peft module name -> GGUF tensor name inside a block (Llama family).
_MODULES = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output",
            "gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down"}
_KEY = re.compile(r"layers\.(\d+)\.(?:self_attn|mlp)\.(\w+)\.lora_([AB])\.weight$")


def _permute(weights: np.ndarray, n_head: int) -> np.ndarray:
    """convert_hf_to_gguf's rotary permutation of the output rows (heads interleaved -> halves)."""
    rows = weights.shape[0]
    return weights.reshape(n_head, 2, rows // n_head // 2, *weights.shape[1:]).swapaxes(1, 2).reshape(weights.shape)


def export_lora_gguf(adapter_dir: Path, n_head: int, n_head_kv: int, *, out: Path | None = None) -> Path:
    """Write ``adapter_dir``'s LoRA as GGUF (skipped when an up-to-date export exists); returns its path.

    Args:
        adapter_dir: a peft adapter folder (``adapter_config.json`` + ``adapter_model.safetensors``).
        n_head, n_head_kv: the base model's attention heads (for the Q/K permutation).

    Raises:
        InvalidInputError: the adapter is not a plain LoRA on Llama-style linear layers.
    """
    import gguf
    from safetensors.numpy import load_file

    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    weights_file = adapter_dir / "adapter_model.safetensors"
    out = out or adapter_dir / GGUF_NAME
    if out.is_file() and out.stat().st_mtime >= weights_file.stat().st_mtime:
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
    count = 0
    for key in sorted(tensors):
        match = _KEY.search(key)
        if match is None or match.group(2) not in _MODULES:
            raise InvalidInputError(f"{adapter_dir}: tensor {key!r} is not a LoRA on a Llama linear layer")
        layer, module, which = int(match.group(1)), match.group(2), match.group(3)
        data = tensors[key].astype(np.float32)
        if which == "B" and module == "q_proj":
            data = _permute(data, n_head)
        elif which == "B" and module == "k_proj":
            data = _permute(data, n_head_kv)
        writer.add_tensor(f"blk.{layer}.{_MODULES[module]}.weight.lora_{which.lower()}", np.ascontiguousarray(data))
        count += 1
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    os.replace(out.with_suffix(".tmp"), out)
    logger.info("exported %d LoRA tensors of %s to %s", count, adapter_dir, out)
    return out
