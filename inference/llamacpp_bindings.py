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
        self.kv_defrag = bind("llama_kv_cache_defrag", [void], None)
        self.kv_update = bind("llama_kv_cache_update", [void], None)
        self.kv_view_init = bind("llama_kv_cache_view_init", [void, i32], KvCacheView)
        self.kv_view_update = bind("llama_kv_cache_view_update", [void, ctypes.POINTER(KvCacheView)], None)
        self.kv_view_free = bind("llama_kv_cache_view_free", [ctypes.POINTER(KvCacheView)], None)

    def kv_cells(self, ctx: int) -> tuple[int, int]:
        """(used cells, 1 + the highest used cell) of a context's KV cache: equal when it has no holes."""
        view = self.kv_view_init(ctx, 1)
        try:
            self.kv_view_update(ctx, ctypes.byref(view))
            highest = max((i for i in range(view.n_cells) if view.cells[i].pos >= 0), default=-1)
            return view.used_cells, highest + 1
        finally:
            self.kv_view_free(ctypes.byref(view))


class KvCacheViewCell(ctypes.Structure):
    _fields_ = [("pos", ctypes.c_int32)]


class KvCacheView(ctypes.Structure):
    """llama.h's ``llama_kv_cache_view`` (a debugging snapshot of the KV cells)."""

    _fields_ = [("n_cells", ctypes.c_int32), ("n_seq_max", ctypes.c_int32), ("token_count", ctypes.c_int32),
                ("used_cells", ctypes.c_int32), ("max_contiguous", ctypes.c_int32),
                ("max_contiguous_idx", ctypes.c_int32), ("cells", ctypes.POINTER(KvCacheViewCell)),
                ("cells_sequences", ctypes.POINTER(ctypes.c_int32))]


_LOG_FN = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)


@_LOG_FN
def LOG_CALLBACK(level: int, text: bytes | None, _: Any) -> None:  # noqa: N802 - a C callback, kept alive here
    """llama.cpp prints hundreds of load-time lines; keep its warnings and errors, in our log."""
    # GGML_LOG_LEVEL_WARN, GGML_LOG_LEVEL_ERROR; the CPU build warns of "0 MiB free on device 0" (no GPU): noise.
    if level in (3, 4) and text and b"Free memory" not in text:
        logger.log(logging.WARNING if level == 3 else logging.ERROR, "llama.cpp: %s",
                   text.decode("utf-8", "replace").rstrip())
