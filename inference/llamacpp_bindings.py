"""The llama.cpp C functions the engine calls (the ik_llama.cpp wheel's ctypes module, typed once), and the
log callback that keeps llama.cpp's warnings and errors in our log. Apart from the scheduler
(:mod:`inference.llamacpp_engine`), so the bindings can be checked and replaced on their own."""

from __future__ import annotations

import ctypes
import logging
from typing import Any

logger = logging.getLogger(__name__)


def llamacpp_available() -> bool:
    """Whether the ik_llama.cpp wheel is importable (the engine falls back to transformers otherwise)."""
    try:
        import ik_llama_cpp._ctypes_api  # noqa: F401
    except (ImportError, OSError, FileNotFoundError):
        return False
    return True


class Api:
    """The llama.cpp C functions the engine calls, typed once (the wheel's module covers the basics)."""

    def __init__(self) -> None:
        from ik_llama_cpp import _ctypes_api as C

        self.C = C
        lib = C._lib
        void, i32 = ctypes.c_void_p, ctypes.c_int32

        def bind(name: str, argtypes: list[Any], restype: Any) -> Any:
            fn = getattr(lib, name)
            fn.argtypes, fn.restype = argtypes, restype
            return fn

        self.seq_rm = bind("llama_kv_cache_seq_rm", [void, i32, i32, i32], ctypes.c_bool)
        self.seq_cp = bind("llama_kv_cache_seq_cp", [void, i32, i32, i32, i32], None)
        self.lora_init = bind("llama_lora_adapter_init", [void, ctypes.c_char_p], void)
        self.lora_set = bind("llama_lora_adapter_set", [void, void, ctypes.c_float], i32)
        self.lora_clear = bind("llama_lora_adapter_clear", [void], None)
        self.is_eog = bind("llama_token_is_eog", [void, i32], ctypes.c_bool)
        self.log_set = bind("llama_log_set", [void, void], None)
        size_t, u32 = ctypes.c_size_t, ctypes.c_uint32
        self.state_size = bind("llama_state_seq_get_size", [void, i32, u32], size_t)
        self.state_get = bind("llama_state_seq_get_data", [void, ctypes.c_void_p, size_t, i32, u32], size_t)
        self.state_set = bind("llama_state_seq_set_data", [void, ctypes.c_void_p, size_t, i32, u32], size_t)


_LOG_FN = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)


@_LOG_FN
def LOG_CALLBACK(level: int, text: bytes | None, _: Any) -> None:  # noqa: N802 - a C callback, kept alive here
    """llama.cpp prints hundreds of load-time lines; keep its warnings and errors, in our log."""
    # GGML_LOG_LEVEL_WARN, GGML_LOG_LEVEL_ERROR; the CPU build warns of "0 MiB free on device 0" (no GPU): noise.
    if level in (3, 4) and text and b"Free memory" not in text:
        logger.log(logging.WARNING if level == 3 else logging.ERROR, "llama.cpp: %s",
                   text.decode("utf-8", "replace").rstrip())
