"""Continuous-batching generation on llama.cpp: one decode loop for every request, streaming or not.

The engine runs the packaged GGUF (a Q8_0 copy of it by default) with the ik_llama.cpp wheel (prebuilt,
CPU-optimised llama.cpp; no compile in ``make setup``). One thread owns the llama.cpp context, so two
generations can never run on the same model state at once; callers only submit requests and receive events.

Two llama.cpp contexts share the model weights: a decode context holding every running sequence, and a
small prefill context where one prompt at a time is decoded next to the cached shared prefixes. Each step:
  * frees the slots of cancelled requests, and starts prefilling the oldest waiting request when a slot and
    KV-cache room are free (room for prompt + answer is reserved up front, so a decode never runs out);
  * decodes the next chunk of the prompt being prefilled (``generation.prefill_chunk_tokens`` per call, 31 on
    Q4_0/Q4_1 files: :mod:`inference.llamacpp_weights`); when it is complete, its first token is sampled and its
    KV moves into the decode context (``llama_state_seq_get/set_data``), where it joins this step's decode;
  * for each adapter that has running sequences (adapters are applied per context, so rows of different
    adapters cannot share one ``llama_decode``): sets the adapter and decodes every such sequence's next token;
  * samples (greedy, or temperature/top-p, with the same repetition penalty as transformers), sends the new
    text to the request, and finishes requests at EOS or ``max_new_tokens``.

Prompts are token ids produced by the caller from :mod:`core.prompt` with the HF tokenizer (the one prompt
path). The longest prefix that consecutive prompts share (the system prompt) is kept decoded in a reserved
sequence of the prefill context per adapter and copied (``llama_kv_cache_seq_cp``) instead of re-prefilled.
"""

from __future__ import annotations

import ctypes
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from core.errors import ConfigError, InvalidInputError, ModelNotFoundError, NotFoundError, TuneragError
from inference.generation import Generation
from inference.llamacpp_bindings import LOG_CALLBACK, Api
from inference.refusal import RefusalGate, load_gate
from inference.sampling import sample_next

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from core.settings import Settings
    from inference.gguf_lora import LoraShapes

logger = logging.getLogger(__name__)

MIN_PREFIX_TOKENS = 32  # shorter shared prefixes are cheaper to re-prefill than to manage
MAX_RUNNING = 31  # running sequences decoded in one call: under the GEMM switch of every weight type
MAX_CALL_TOKENS = 512  # the contexts' n_batch: the most tokens one llama_decode call can carry
# ik_llama.cpp's fused ffn_up/ffn_gate op ignores LoRAs on both (see _context). True only to measure the bug.
FUSE_UP_GATE = False


def engine_from_settings(settings: Settings, on_step: Callable[[int], None] | None = None) -> LlamaCppEngine:
    """The llama.cpp engine on the settings' GGUF generator, with its HF tokenizer (one prompt path)."""
    from transformers import AutoConfig, AutoTokenizer

    from core.models import generator_gguf_path, resolve_generator
    from inference.gguf_lora import LoraShapes
    from inference.llamacpp_weights import engine_weights

    resolved = resolve_generator(settings)  # the converted folder: tokenizer, chat template and head counts
    tokenizer = AutoTokenizer.from_pretrained(resolved.location)
    config = AutoConfig.from_pretrained(resolved.location)
    gen = settings.generation
    weights = engine_weights(settings, generator_gguf_path(settings))  # type: ignore[arg-type]
    return LlamaCppEngine(weights.path, tokenizer, max_batch=gen.max_running_requests, kv_tokens=gen.kv_cache_tokens,
                          n_threads=gen.threads, lora_shapes=LoraShapes.from_config(config),
                          max_call_tokens=weights.max_call_tokens, refusal_min_prob=gen.refusal_min_prob,
                          on_step=on_step)


@dataclass
class EngineRequest:
    """One generation. Callbacks run on the engine thread and must not block."""

    prompt_ids: list[int]
    adapter: str | None
    max_new_tokens: int
    temperature: float
    top_p: float
    repetition_penalty: float
    on_text: Callable[[str], None]
    on_done: Callable[[Generation | BaseException], None]
    seed: int | None = None
    penalize_prompt: bool = False  # GenerationSettings.repetition_penalty_scope == "prompt_and_answer"
    cancelled: threading.Event = field(default_factory=threading.Event)
    submitted: float = field(default_factory=time.perf_counter)

    def cancel(self) -> None:
        """Free the request's slot at the next step; nothing is decoded for it afterwards."""
        self.cancelled.set()


@dataclass
class _Seq:
    request: EngineRequest
    slot: int
    pending: list[int]  # prompt tokens not decoded yet
    pos: int  # next position
    seen: np.ndarray  # vocab mask for the repetition penalty
    rng: np.random.Generator
    generated: list[int] = field(default_factory=list)
    sent: str = ""
    reserved: int = 0
    logits_row: int = -1


@dataclass
class _Prefix:
    seq: int
    tokens: list[int] = field(default_factory=list)
    last_prompt: list[int] = field(default_factory=list)


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    arr_a, arr_b = np.asarray(a[:n]), np.asarray(b[:n])
    diff = np.nonzero(arr_a != arr_b)[0]
    return int(diff[0]) if diff.size else n


class LlamaCppEngine:
    """A GGUF model on llama.cpp with LoRA adapters and continuous batching.

    Args:
        gguf_path: the base model file.
        tokenizer: the HF tokenizer of the same model (prompts and answers are (de)tokenized with it).
        max_batch: sequence slots decoded together.
        kv_tokens: KV-cache cells shared by all sequences (prompt + answer of every running request).
        n_threads: CPU threads for llama.cpp (default: all cores).
        max_call_tokens: prompt tokens per decode call (:mod:`inference.llamacpp_weights` says what the weights allow).
        refusal_min_prob: the refusal gate of adapters that record their refusal (:mod:`inference.refusal`; 0: off).
        on_step: called after every decode with the number of sequences in it (metrics).
    """

    def __init__(self, gguf_path: Path, tokenizer: PreTrainedTokenizerBase, *, max_batch: int = 8,
                 kv_tokens: int = 16384, n_threads: int | None = None, lora_shapes: LoraShapes | None = None,
                 max_call_tokens: int = 31, refusal_min_prob: float = 0.0,
                 on_step: Callable[[int], None] | None = None) -> None:
        if not gguf_path.is_file():
            raise ModelNotFoundError(f"GGUF model not found: {gguf_path}")
        self.api = Api()
        C = self.api.C
        self.api.log_set(ctypes.cast(LOG_CALLBACK, ctypes.c_void_p), None)
        C.llama_backend_init()
        params = C.llama_model_default_params()
        self.model = C.llama_model_load_from_file(str(gguf_path).encode(), params)
        if not self.model:
            raise ModelNotFoundError(f"llama.cpp could not load {gguf_path}")
        self.n_vocab = C.llama_vocab_n_tokens(C.llama_model_get_vocab(self.model))
        self.max_batch, self.n_prefix_slots = max_batch, 4
        if not 0 < max_batch <= MAX_RUNNING:
            raise ValueError(f"max_batch must be in 1..{MAX_RUNNING}, got {max_batch}")
        if not 0 < max_call_tokens <= MAX_CALL_TOKENS:
            raise ValueError(f"max_call_tokens must be in 1..{MAX_CALL_TOKENS}, got {max_call_tokens}")
        self.max_call_tokens, self.gguf_path, self.gguf_name = max_call_tokens, gguf_path, gguf_path.name
        threads = n_threads or os.cpu_count() or 1
        # Decode context: every running sequence. Prefill context: one prompt at a time next to the cached
        # prefixes. Without flash attention (which this build refuses with LoRA, and which asserts on
        # multi-sequence batches) attention spans every used cell of a context, so prefilling in a small
        # context and moving the finished sequence's KV over costs a fraction of prefilling among all others.
        self.ctx = self._context(kv_tokens, max_batch, threads)
        self.prefill_tokens = min(kv_tokens // 2, 8192)
        self.pctx = self._context(self.prefill_tokens, 1 + self.n_prefix_slots, threads)
        self.kv_tokens = kv_tokens
        self.batch = C.llama_batch_init(MAX_CALL_TOKENS, 0, 1)
        self.tokenizer = tokenizer
        self.eos_ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
        self.lora_shapes = lora_shapes
        self.on_step = on_step
        self._adapters: dict[str, tuple[str, int]] = {}  # name -> (peft folder, llama adapter pointer)
        self._ranks: dict[str, int] = {}  # name -> LoRA rank (one rank per engine: see load_adapter)
        self.refusal_min_prob = refusal_min_prob
        self._gates: dict[str, RefusalGate] = {}
        self._applied: dict[int, str | None] = {self.ctx: None, self.pctx: None}
        self._prefill: _Seq | None = None  # the prompt being prefilled in the prefill context
        self._inbox: queue.Queue[EngineRequest | Callable[[], None] | None] = queue.Queue()
        self._waiting: list[EngineRequest] = []
        self._running: dict[int, _Seq] = {}
        self._prefixes: dict[str | None, _Prefix] = {}
        self._after_step: list[Callable[[], None]] = []  # engine-thread work waiting for the prefill context
        self._decoding = 0  # concurrent llama_decode calls: never above 1 (checked by the tests)
        self.max_concurrent_decodes = 0
        self.decode_calls = 0
        self._thread = threading.Thread(target=self._loop, name="tunerag-llamacpp", daemon=True)
        self._closed = False
        self._thread.start()
        logger.info("llama.cpp engine: %s, %d slots, %d KV tokens, %d threads, %d-token prompt calls",
                    gguf_path.name, max_batch, kv_tokens, threads, max_call_tokens)

    # --- public API (any thread) ----------------------------------------------------------------------

    @property
    def adapters(self) -> dict[str, str]:
        return {name: folder for name, (folder, _) in self._adapters.items()}

    def kv_cells(self) -> tuple[int, int]:
        """(used cells, 1 + the highest used cell) of the decode context's KV cache; engine thread only (e.g.
        from ``on_step``)."""
        return self.api.kv_cells(self.ctx)

    def stats(self) -> dict[str, int]:
        prefilling = 1 if self._prefill is not None else 0
        return {"running": len(self._running) + prefilling, "waiting": len(self._waiting) + self._inbox.qsize(),
                "slots": self.max_batch, "kv_reserved": sum(s.reserved for s in self._running.values())}

    def submit(self, request: EngineRequest) -> EngineRequest:
        if self._closed:
            raise TuneragError("the generation engine is shut down")
        if request.adapter is not None and request.adapter not in self._adapters:
            raise NotFoundError(f"adapter {request.adapter!r} is not loaded; loaded: {sorted(self._adapters) or 'none'}")
        budget = min(self.kv_tokens // 2, self.prefill_tokens - 1024)
        if len(request.prompt_ids) + request.max_new_tokens > budget:
            raise TuneragError(f"prompt of {len(request.prompt_ids)} tokens + {request.max_new_tokens} new tokens "
                               f"exceeds the engine's per-request budget ({budget} tokens; generation.kv_cache_tokens)")
        self._inbox.put(request)
        return request

    def load_adapter(self, name: str, peft_dir: Path | str) -> None:
        """Export (once) the peft adapter to GGUF and load it; runs on the engine thread between steps."""
        from inference.gguf_lora import adapter_rank, export_lora_gguf

        folder = str(peft_dir)
        if self._adapters.get(name, ("", 0))[0] == folder:
            return
        if self.lora_shapes is None:
            raise ConfigError("this engine was built without the model's shapes (lora_shapes): it cannot load LoRAs")
        gguf_file = export_lora_gguf(Path(folder), self.lora_shapes)
        rank = adapter_rank(Path(folder))
        others = {n: r for n, r in self._ranks.items() if n != name}
        if any(r != rank for r in others.values()):
            # Two ranks make two graph shapes, and this wheel reuses one's memory plan for the other (a crash).
            raise InvalidInputError(f"adapter {name!r} has LoRA rank {rank}, the loaded adapters {others}: the llama.cpp "
                                    "engine serves one LoRA rank per process (restart it to change rank), or retrain "
                                    f"with r={next(iter(others.values()))}")
        gate = load_gate(folder, self.tokenizer, self.refusal_min_prob)
        done: queue.Queue[BaseException | None] = queue.Queue()

        def attach() -> None:
            try:
                pointer = self.api.lora_init(self.model, str(gguf_file).encode())
                if not pointer:
                    raise TuneragError(f"llama.cpp could not load the LoRA {gguf_file}")
                self._adapters[name] = (folder, pointer)
                self._ranks[name] = rank
                if gate is not None:
                    self._gates[name] = gate
                else:
                    self._gates.pop(name, None)
                done.put(None)
            except BaseException as exc:
                done.put(exc)

        self._inbox.put(attach)
        error = done.get()
        if error is not None:
            raise error
        logger.info("adapter %s loaded into llama.cpp from %s", name, gguf_file)

    def prompt_logits(self, prompt_ids: Sequence[int], adapter: str | None = None) -> np.ndarray:
        """The next-token logits after ``prompt_ids`` under ``adapter`` (a copy), computed on the engine thread
        in the prefill context between steps: what parity checks and benchmarks compare with transformers."""
        if adapter is not None and adapter not in self._adapters:
            raise NotFoundError(f"adapter {adapter!r} is not loaded; loaded: {sorted(self._adapters) or 'none'}")
        if not 0 < len(prompt_ids) < self.prefill_tokens - 1024:
            raise TuneragError(f"prompt of {len(prompt_ids)} tokens does not fit the prefill context")
        done: queue.Queue[np.ndarray | BaseException] = queue.Queue()

        def compute() -> None:
            try:
                if self._prefill is not None:  # a prompt is half-prefilled in sequence 0: come back after a step
                    self._after_step.append(compute)
                    return
                self._set_adapter(self.pctx, adapter)
                row = self._decode_tokens(list(prompt_ids), 0, self.pctx, logits_last=True)
                done.put(self._logits(self.pctx, row).copy())
            except BaseException as exc:
                done.put(exc)
            finally:
                if self._prefill is None:
                    self.api.seq_rm(self.pctx, 0, -1, -1)

        self._inbox.put(compute)
        result = done.get()
        if isinstance(result, BaseException):
            raise result
        return result

    def close(self) -> None:
        self._closed = True
        self._inbox.put(None)
        self._thread.join(timeout=30)

    def _context(self, n_ctx: int, n_seq: int, threads: int) -> int:
        C = self.api.C
        cparams = C.llama_context_default_params()
        cparams.n_ctx, cparams.n_seq_max = n_ctx, n_seq
        cparams.n_batch = cparams.n_ubatch = MAX_CALL_TOKENS
        cparams.n_threads = cparams.n_threads_batch = threads
        cparams.flash_attn = False  # ik_llama.cpp refuses LoRA adapters on a flash-attention context
        # Adapters switch between steps; a reused compute graph is not documented to follow them, and turning
        # reuse off cost nothing measurable (108 vs 110 tokens/s single-stream).
        cparams.graph_reuse = False
        # ik_llama.cpp fuses ffn_up and ffn_gate into one op that ignores LoRA tensors on either: with it on, an
        # all-linear adapter's up/gate deltas are silently dropped (measured: logit change 0.0 for an up-only
        # LoRA; tests/test_llamacpp_engine.py checks every module). Off costs nothing measurable (bench/RESULTS.md).
        cparams.fused_up_gate = FUSE_UP_GATE
        ctx = C.llama_init_from_model(self.model, cparams)
        if not ctx:
            raise TuneragError("llama.cpp could not create a context (out of memory for the KV cache?)")
        return ctx

    # --- the loop (engine thread only) ----------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            block = not self._running and not self._waiting and self._prefill is None
            try:
                item = self._inbox.get(block=block)
            except queue.Empty:
                item = False  # type: ignore[assignment]
            while item is not False:
                if item is None:
                    self._fail_all(TuneragError("the generation engine shut down"))
                    for work in self._after_step:  # the prefill context is free now: nobody is left waiting
                        work()
                    return
                if callable(item) and not isinstance(item, EngineRequest):
                    item()
                else:
                    self._waiting.append(item)
                try:
                    item = self._inbox.get_nowait()
                except queue.Empty:
                    item = False  # type: ignore[assignment]
            try:
                self._step()
            except BaseException as exc:  # a llama.cpp failure fails the requests in flight, not the loop
                logger.exception("generation step failed")
                self._fail_all(exc)
            waiting, self._after_step = self._after_step, []
            for work in waiting:
                work()

    def _fail_all(self, exc: BaseException) -> None:
        if self._prefill is not None:
            self._finish(self._prefill, exc)
        for seq in list(self._running.values()):
            self._finish(seq, exc)
        for request in self._waiting:
            request.on_done(exc)
        self._waiting.clear()

    def _free_slots(self) -> list[int]:
        busy = set(self._running) | ({self._prefill.slot} if self._prefill is not None else set())
        return [s for s in range(self.max_batch) if s not in busy]

    def _admit(self) -> None:
        """Start prefilling the oldest waiting request when no prompt is being prefilled and a slot and KV
        room (prompt + answer, reserved up front) are free."""
        self._waiting = [r for r in self._waiting if not self._drop_if_cancelled(r)]
        if self._prefill is not None or not self._waiting or not self._free_slots():
            return
        request = self._waiting[0]
        need = len(request.prompt_ids) + request.max_new_tokens
        if sum(s.reserved for s in self._running.values()) + need > self.kv_tokens and self._running:
            return  # wait for room
        self._waiting.pop(0)
        seen = np.zeros(self.n_vocab, dtype=bool)
        if request.penalize_prompt:
            seen[np.asarray(request.prompt_ids, dtype=np.int64)] = True
        seq = _Seq(request, self._free_slots()[0], list(request.prompt_ids), 0, seen,
                   np.random.default_rng(request.seed), reserved=need)
        self._prefill = seq  # before anything can fail: a failure then finishes it instead of losing it
        self._reuse_prefix(seq)

    def _drop_if_cancelled(self, request: EngineRequest) -> bool:
        if request.cancelled.is_set():
            request.on_done(_cancelled())
            return True
        return False

    def _set_adapter(self, ctx: int, adapter: str | None) -> None:
        if adapter == self._applied[ctx]:
            return
        self.api.lora_clear(ctx)
        if adapter is not None and self.api.lora_set(ctx, self._adapters[adapter][1], 1.0) != 0:
            raise TuneragError(f"llama.cpp refused to apply adapter {adapter!r}")
        self._applied[ctx] = adapter

    def _decode(self, items: list[tuple[int, int, int, bool]], ctx: int | None = None) -> None:
        C, batch = self.api.C, self.batch
        batch.n_tokens = len(items)
        for i, (token, pos, seq_id, want) in enumerate(items):
            batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, pos, 1
            batch.seq_id[i][0], batch.logits[i] = seq_id, 1 if want else 0
        self._decoding += 1
        self.max_concurrent_decodes = max(self.max_concurrent_decodes, self._decoding)
        try:
            rc = C.llama_decode(self.ctx if ctx is None else ctx, batch)
        finally:
            self._decoding -= 1
        self.decode_calls += 1
        if rc != 0:
            raise TuneragError(f"llama_decode failed (code {rc})")

    def _reuse_prefix(self, seq: _Seq) -> None:
        """Copy the cached shared prefix of this adapter into the new sequence, building it when two
        consecutive prompts share a long enough prefix."""
        adapter, prompt = seq.request.adapter, seq.request.prompt_ids
        prefix = self._prefixes.get(adapter)
        if prefix is None:
            if len(self._prefixes) >= self.n_prefix_slots:
                victim = next(iter(self._prefixes))
                self.api.seq_rm(self.pctx, self._prefixes.pop(victim).seq, -1, -1)
            used = {p.seq for p in self._prefixes.values()}
            free = next(s for s in range(1, 1 + self.n_prefix_slots) if s not in used)
            prefix = self._prefixes[adapter] = _Prefix(free)
        n = min(_common_prefix(prefix.tokens, prompt), len(prompt) - 1)
        if n < MIN_PREFIX_TOKENS:
            shared = min(_common_prefix(prefix.last_prompt, prompt), len(prompt) - 1)
            if shared >= MIN_PREFIX_TOKENS:
                self._build_prefix(prefix, adapter, prompt[:shared])
                n = shared
        prefix.last_prompt = list(prompt)
        if n >= MIN_PREFIX_TOKENS:
            self.api.seq_cp(self.pctx, prefix.seq, 0, 0, n)
            seq.pending, seq.pos = list(prompt[n:]), n

    def _decode_tokens(self, tokens: Sequence[int], seq_id: int, ctx: int | None = None, *, call: int | None = None,
                       logits_last: bool = False) -> int:
        """Decode ``tokens`` at positions 0.. into sequence ``seq_id`` in calls of ``call`` tokens (default
        ``max_call_tokens``); returns the logits row of the last token in its call (see :meth:`_logits`)."""
        call = call or self.max_call_tokens
        for start in range(0, len(tokens), call):
            chunk = tokens[start : start + call]
            self._decode([(t, start + i, seq_id, logits_last and start + i == len(tokens) - 1)
                          for i, t in enumerate(chunk)], ctx)
        return (len(tokens) - 1) % call

    def _logits(self, ctx: int, row: int) -> np.ndarray:
        """The last decode call's logits for ``row`` (a view into llama.cpp's buffer, valid until the next call)."""
        return np.ctypeslib.as_array(self.api.C.llama_get_logits_ith(ctx, row), shape=(self.n_vocab,))

    def _build_prefix(self, prefix: _Prefix, adapter: str | None, tokens: list[int]) -> None:
        self.api.seq_rm(self.pctx, prefix.seq, -1, -1)
        self._set_adapter(self.pctx, adapter)
        self._decode_tokens(tokens, prefix.seq, self.pctx)
        prefix.tokens = list(tokens)

    def _step(self) -> None:
        for seq in [s for s in self._running.values() if s.request.cancelled.is_set()]:
            self._finish(seq, _cancelled())
        if self._prefill is not None and self._prefill.request.cancelled.is_set():
            self._finish(self._prefill, _cancelled())
        self._admit()
        if self._prefill is not None:  # the prompt being prefilled advances one call first: time to first token
            self._prefill_chunk(self._prefill)
        groups: dict[str | None, list[_Seq]] = {}
        for seq in self._running.values():
            groups.setdefault(seq.request.adapter, []).append(seq)
        for adapter, seqs in groups.items():  # every decoding sequence advances one token
            items = []
            for row, seq in enumerate(seqs):
                items.append((seq.generated[-1], seq.pos, seq.slot, True))
                seq.pos += 1
                seq.logits_row = row
            self._set_adapter(self.ctx, adapter)
            self._decode(items)
            if self.on_step is not None:
                self.on_step(len(seqs))
            for seq in seqs:
                self._advance(seq, self.ctx)

    def _prefill_chunk(self, seq: _Seq) -> None:
        chunk = seq.pending[: self.max_call_tokens]
        last = len(chunk) == len(seq.pending)
        self._set_adapter(self.pctx, seq.request.adapter)
        self._decode([(t, seq.pos + i, 0, last and i == len(chunk) - 1) for i, t in enumerate(chunk)], self.pctx)
        seq.pending, seq.pos = seq.pending[len(chunk):], seq.pos + len(chunk)
        if not last:
            return
        # Move the prompt's KV from the prefill context into the sequence's slot of the decode context.
        size = self.api.state_size(self.pctx, 0, 0)
        buffer = (ctypes.c_uint8 * size)()
        copied = self.api.state_get(self.pctx, buffer, size, 0, 0)
        self.api.seq_rm(self.pctx, 0, -1, -1)
        self._prefill = None
        if not copied or not self.api.state_set(self.ctx, buffer, copied, seq.slot, 0):
            raise TuneragError("llama.cpp could not move a prefilled sequence into the decode context")
        self._running[seq.slot] = seq
        seq.logits_row = len(chunk) - 1
        self._advance(seq, self.pctx)

    def _advance(self, seq: _Seq, ctx: int) -> None:
        request = seq.request
        logits = self._logits(ctx, seq.logits_row)
        gate = self._gates.get(request.adapter) if request.adapter is not None else None
        if gate is not None and (blocked := gate.blocked(seq.generated, logits)) is not None:
            logits = np.array(logits, dtype=np.float32)
            logits[blocked] = -np.inf
        token = sample_next(logits, seq.seen, request.repetition_penalty, request.temperature, request.top_p, seq.rng)
        seq.generated.append(token)
        seq.seen[token] = True
        stop = token in self.eos_ids or bool(self.api.is_eog(self.model, token))
        if not stop:
            text = self.tokenizer.decode(seq.generated, skip_special_tokens=True)
            if not text.endswith("\ufffd") and len(text) > len(seq.sent):
                request.on_text(text[len(seq.sent):])
                seq.sent = text
        if stop or len(seq.generated) >= request.max_new_tokens:
            text = self.tokenizer.decode(seq.generated, skip_special_tokens=True).strip()
            self._finish(seq, Generation(text, len(request.prompt_ids), len(seq.generated),
                                         time.perf_counter() - request.submitted, "stop" if stop else "length"))

    def _finish(self, seq: _Seq, result: Generation | BaseException) -> None:
        if self._prefill is seq:
            self._prefill = None
            self.api.seq_rm(self.pctx, 0, -1, -1)
        self._running.pop(seq.slot, None)
        self.api.seq_rm(self.ctx, seq.slot, -1, -1)
        if self._running:
            # Compact the cache now: left with a hole, llama.cpp places the others' next tokens in it, and on this
            # wheel sequences decoded over such holes went wrong together, 11-33 logits off, ~40 tokens after a
            # wave's first request finished (bench/RESULTS.md, "waves of 8"). Defragmented: identical to alone.
            self.api.kv_defrag(self.ctx)
            self.api.kv_update(self.ctx)
        seq.request.on_done(result)


class GenerationCancelled(TuneragError):
    """The request was cancelled (its client went away) before it finished."""

    status_code = 499


def _cancelled() -> GenerationCancelled:
    return GenerationCancelled("generation cancelled")
