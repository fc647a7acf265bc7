"""Generation backends behind one small interface, used by the chat service.

* ``LocalBackend``: the in-process transformers + peft engine. Concurrent requests are collected for up
  to ``generation.batch_wait_ms`` and decoded as one padded batch (decode on CPU is memory-bound, so a
  batch costs little more than one answer). Model work runs in a worker thread, never on the event loop.
* ``OpenAIBackend``: any OpenAI-compatible completions server (e.g. vLLM with LoRA adapters served as
  model names). Prompts are rendered here by :mod:`core.prompt`, so the template stays the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import anyio
from prometheus_client import Counter, Gauge, Histogram

from core.errors import NotFoundError, TuneragError, UnsupportedRequestError
from core.settings import GenerationSettings
from inference.engine import GenerationEngine
from inference.generation import Generation
from inference.llamacpp_engine import EngineRequest, LlamaCppEngine

logger = logging.getLogger(__name__)

TOKENS_GENERATED = Counter("tunerag_tokens_generated_total", "Tokens generated (rate() gives tokens/s)", ["adapter"])
QUEUE_DEPTH = Gauge("tunerag_generation_queue_depth", "Requests waiting for the generator")
BATCH_SIZE = Histogram("tunerag_generation_batch_size", "Prompts per generate call", buckets=(1, 2, 4, 8, 16, 32))
RUNNING = Gauge("tunerag_generation_running", "Requests being decoded (continuous batching slots in use)")
WAITING = Gauge("tunerag_generation_waiting", "Requests waiting for a decoding slot")
OCCUPANCY = Histogram("tunerag_generation_batch_occupancy", "Sequences in one decode step",
                      buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 31))
TIME_TO_FIRST_TOKEN = Histogram("tunerag_time_to_first_token_seconds", "Submit to first text of an answer",
                                buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32))
TIME_PER_TOKEN = Histogram("tunerag_time_per_output_token_seconds", "Gap between text pieces of one answer",
                           buckets=(0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28))
CANCELLED = Counter("tunerag_generation_cancelled_total", "Generations stopped because the client went away")


class BackendError(TuneragError):
    """The generation backend answered with an error (a remote server's 4xx/5xx)."""

    status_code = 502


class BackendUnavailableError(BackendError):
    """The generation backend cannot be reached (connection refused, DNS, reset)."""

    status_code = 503


class BackendTimeoutError(BackendError):
    """The generation backend did not answer in time."""

    status_code = 504


@contextlib.contextmanager
def _remote_errors(base_url: str):
    """httpx's transport errors as the backend errors the API maps to 503/504/502 JSON."""
    import httpx

    try:
        yield
    except httpx.TimeoutException:
        raise BackendTimeoutError(f"the generation backend at {base_url} did not answer in time") from None
    except httpx.TransportError as exc:
        raise BackendUnavailableError(f"the generation backend at {base_url} is unreachable "
                                      f"({type(exc).__name__})") from None


class GenerationBackend(Protocol):
    name: str  # "llamacpp", "transformers" or "openai": reported by /ready
    # Whether ``constraint`` (a JSON schema the answer must match: OpenAI's response_format) can be honoured.
    constrains_output: bool

    async def generate(self, prompt: str, adapter: str | None, max_new_tokens: int | None,
                       temperature: float | None, *, constraint: dict | None = None) -> Generation: ...

    def stream(self, prompt: str, adapter: str | None, max_new_tokens: int | None,
               temperature: float | None, *, constraint: dict | None = None) -> AsyncIterator[str]: ...

    async def load_adapter(self, name: str, path: Path) -> None: ...

    def loaded_adapters(self) -> list[str]: ...

    async def close(self) -> None: ...


def check_constraint(backend: Any, constraint: dict | None, what: str = "response_format") -> None:
    """Refuse ``constraint`` (a 400 naming the setting) when ``backend`` cannot constrain its output."""
    if constraint is not None and not getattr(backend, "constrains_output", False):
        raise UnsupportedRequestError(f"{what} needs an engine that constrains output; this server's {backend.name} "
                                      "engine does not: set server.generation_backend=openai with llama.cpp's server "
                                      "or vLLM")


@dataclass
class _Pending:
    prompt: str
    key: tuple[str | None, int | None, float | None]
    future: asyncio.Future[Generation] = field(repr=False)


class LocalBackend:
    """In-process engine with dynamic batching.

    Args:
        engine: the shared generation engine.
        config: ``batch_size`` caps a batch; ``batch_wait_ms`` is how long the first request waits for company.
        batching: False sends each request alone (the benchmark's baseline).
    """

    name = "transformers"
    constrains_output = False

    def __init__(self, engine: GenerationEngine, config: GenerationSettings, *, batching: bool = True) -> None:
        self.engine, self.config, self.batching = engine, config, batching
        self._queue: asyncio.Queue[_Pending] | None = None
        self._worker: asyncio.Task[None] | None = None

    def _ensure_worker(self) -> asyncio.Queue[_Pending]:
        if self._queue is None:
            self._queue = asyncio.Queue()
            self._worker = asyncio.create_task(self._run(), name="tunerag-batcher")
        return self._queue

    async def generate(self, prompt: str, adapter: str | None, max_new_tokens: int | None,
                       temperature: float | None, *, constraint: dict | None = None) -> Generation:
        check_constraint(self, constraint)
        if adapter is not None and adapter not in self.engine.adapters:
            raise NotFoundError(f"adapter {adapter!r} is not loaded")
        future: asyncio.Future[Generation] = asyncio.get_running_loop().create_future()
        self._ensure_worker().put_nowait(_Pending(prompt, (adapter, max_new_tokens, temperature), future))
        QUEUE_DEPTH.inc()
        return await future

    async def _run(self) -> None:
        assert self._queue is not None
        while True:
            first = await self._queue.get()
            batch = [first]
            if self.batching:
                deadline = time.monotonic() + self.config.batch_wait_ms / 1000
                while len(batch) < self.config.batch_size:
                    timeout = deadline - time.monotonic()
                    if timeout <= 0:
                        break
                    try:
                        batch.append(await asyncio.wait_for(self._queue.get(), timeout))
                    except asyncio.TimeoutError:
                        break
            QUEUE_DEPTH.dec(len(batch))
            # Requests with different adapters or decoding settings cannot share one generate call.
            groups: dict[tuple, list[_Pending]] = {}
            for item in batch:
                groups.setdefault(item.key, []).append(item)
            for (adapter, max_new, temperature), items in groups.items():
                live = [i for i in items if not i.future.cancelled()]
                if not live:
                    continue
                BATCH_SIZE.observe(len(live))
                try:
                    results = await anyio.to_thread.run_sync(functools.partial(
                        self.engine.generate, [i.prompt for i in live], adapter,
                        max_new_tokens=max_new, temperature=temperature))
                except Exception as exc:  # delivered to every waiting request
                    for item in live:
                        if not item.future.done():
                            item.future.set_exception(exc)
                    continue
                for item, result in zip(live, results, strict=True):
                    TOKENS_GENERATED.labels(adapter or "base").inc(result.completion_tokens)
                    if not item.future.done():
                        item.future.set_result(result)

    async def stream(self, prompt: str, adapter: str | None, max_new_tokens: int | None,
                     temperature: float | None, *, constraint: dict | None = None) -> AsyncIterator[str]:
        check_constraint(self, constraint)
        if adapter is not None and adapter not in self.engine.adapters:
            raise NotFoundError(f"adapter {adapter!r} is not loaded")
        send, receive = anyio.create_memory_object_stream[str | None](max_buffer_size=1024)

        def produce() -> None:
            count = 0
            try:
                for piece in self.engine.stream(prompt, adapter, max_new_tokens=max_new_tokens, temperature=temperature):
                    count += 1
                    anyio.from_thread.run(send.send, piece)
            finally:
                TOKENS_GENERATED.labels(adapter or "base").inc(count)
                anyio.from_thread.run(send.send, None)

        async with anyio.create_task_group() as tg:
            tg.start_soon(anyio.to_thread.run_sync, produce)
            async with receive:
                async for piece in receive:
                    if piece is None:
                        break
                    yield piece

    async def load_adapter(self, name: str, path: Path) -> None:
        await anyio.to_thread.run_sync(self.engine.load_adapter, name, path)

    def loaded_adapters(self) -> list[str]:
        return sorted(self.engine.adapters)

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker


class ContinuousBackend:
    """The llama.cpp engine: every request, streaming or not, joins one continuously batched decode loop.

    A request whose consumer goes away (client disconnect, cancelled task, closed stream) is cancelled in
    the engine and its slot is freed at the next decode step.
    """

    name = "llamacpp"
    constrains_output = False

    def __init__(self, engine: LlamaCppEngine, tokenizer: Any, config: GenerationSettings) -> None:
        self.engine, self.tokenizer, self.config = engine, tokenizer, config
        RUNNING.set_function(lambda: engine.stats()["running"])
        WAITING.set_function(lambda: engine.stats()["waiting"])

    async def _events(self, prompt: str, adapter: str | None, max_new_tokens: int | None,
                      temperature: float | None) -> AsyncIterator[tuple[str, Any]]:
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

        def put(kind: str, payload: Any) -> None:
            loop.call_soon_threadsafe(events.put_nowait, (kind, payload))

        prompt_ids = await anyio.to_thread.run_sync(lambda: self.tokenizer(prompt, add_special_tokens=False).input_ids)
        request = EngineRequest(
            prompt_ids=prompt_ids, adapter=adapter,
            max_new_tokens=max_new_tokens or self.config.max_new_tokens,
            temperature=self.config.temperature if temperature is None else temperature, top_p=self.config.top_p,
            repetition_penalty=self.config.repetition_penalty,
            penalize_prompt=self.config.repetition_penalty_scope == "prompt_and_answer",
            on_text=lambda text: put("text", text), on_done=lambda result: put("done", result))
        self.engine.submit(request)
        began, last = time.perf_counter(), None
        finished = False
        try:
            while True:
                kind, payload = await events.get()
                if kind == "text":
                    now = time.perf_counter()
                    if last is None:
                        TIME_TO_FIRST_TOKEN.observe(now - began)
                    else:
                        TIME_PER_TOKEN.observe(now - last)
                    last = now
                    yield kind, payload
                    continue
                finished = True
                if isinstance(payload, BaseException):
                    raise payload
                TOKENS_GENERATED.labels(adapter or "base").inc(payload.completion_tokens)
                yield kind, payload
                return
        finally:
            if not finished:
                request.cancel()
                CANCELLED.inc()

    async def generate(self, prompt: str, adapter: str | None, max_new_tokens: int | None,
                       temperature: float | None, *, constraint: dict | None = None) -> Generation:
        check_constraint(self, constraint)
        async for kind, payload in self._events(prompt, adapter, max_new_tokens, temperature):
            if kind == "done":
                return payload
        raise BackendError("generation ended without a result")

    async def stream(self, prompt: str, adapter: str | None, max_new_tokens: int | None,
                     temperature: float | None, *, constraint: dict | None = None) -> AsyncIterator[str]:
        check_constraint(self, constraint)
        async for kind, payload in self._events(prompt, adapter, max_new_tokens, temperature):
            if kind == "text":
                yield payload

    async def load_adapter(self, name: str, path: Path) -> None:
        await anyio.to_thread.run_sync(self.engine.load_adapter, name, path)

    def loaded_adapters(self) -> list[str]:
        return sorted(self.engine.adapters)

    async def close(self) -> None:
        await anyio.to_thread.run_sync(self.engine.close)


class OpenAIBackend:
    """An OpenAI-compatible ``/v1/completions`` server (vLLM, llama.cpp's server), prompts rendered here.

    ``dialect`` says how a request names its adapter (:class:`core.settings.ServerSettings.openai_dialect`):
    ``vllm`` by model name; ``llamacpp`` by a per-request ``lora`` list (the chosen adapter at scale 1, the
    others 0), the ids read from the server's ``GET /lora-adapters`` when the adapter is loaded.
    """

    name = "openai"
    constrains_output = True  # llama.cpp's server (grammars) and vLLM (guided decoding) both constrain

    def __init__(self, base_url: str, api_key: str | None, base_model: str, config: GenerationSettings,
                 timeout_s: float = 120.0, dialect: str = "vllm", lora_shapes: Any = None) -> None:
        import httpx

        self.base_model, self.config, self.base_url = base_model, config, base_url.rstrip("/")
        self.dialect, self.lora_shapes = dialect, lora_shapes
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.AsyncClient(base_url=base_url.rstrip("/"), headers=headers, timeout=timeout_s)
        self._adapters: set[str] = set()
        self._lora_ids: dict[str, int] = {}  # llamacpp dialect: adapter name -> the server's LoRA id
        self._server_loras: list[int] = []

    def _payload(self, prompt: str, adapter: str | None, max_new_tokens: int | None, temperature: float | None,
                 stream: bool, constraint: dict | None = None) -> dict:
        if adapter is not None and adapter not in self._adapters:
            raise NotFoundError(f"adapter {adapter!r} is not loaded")
        payload: dict[str, Any] = {"prompt": prompt, "stream": stream, "top_p": self.config.top_p,
                                   "max_tokens": max_new_tokens or self.config.max_new_tokens,
                                   "temperature": self.config.temperature if temperature is None else temperature}
        if self.dialect == "llamacpp":
            chosen = self._lora_ids.get(adapter) if adapter is not None else None
            payload |= {"model": self.base_model, "repeat_penalty": self.config.repetition_penalty,
                        "cache_prompt": True,
                        "lora": [{"id": i, "scale": 1.0 if i == chosen else 0.0} for i in self._server_loras]}
            if constraint is not None:  # llama.cpp's server turns a JSON schema into a grammar
                payload["json_schema"] = constraint
        else:
            payload |= {"model": adapter or self.base_model, "repetition_penalty": self.config.repetition_penalty}
            if constraint is not None:
                payload["response_format"] = {"type": "json_schema", "json_schema": {"name": "answer", "schema": constraint}}
        return payload

    async def generate(self, prompt: str, adapter: str | None, max_new_tokens: int | None,
                       temperature: float | None, *, constraint: dict | None = None) -> Generation:
        began = time.perf_counter()
        with _remote_errors(self.base_url):
            response = await self._client.post("/v1/completions", json=self._payload(
                prompt, adapter, max_new_tokens, temperature, False, constraint))
        if response.status_code >= 400:
            raise BackendError(f"generation backend answered {response.status_code}: {response.text[:200]}")
        body = response.json()
        usage = body.get("usage", {})
        choice = body["choices"][0]
        return Generation(choice["text"].strip(), int(usage.get("prompt_tokens", 0)),
                          int(usage.get("completion_tokens", 0)), time.perf_counter() - began,
                          choice.get("finish_reason") or "stop")

    async def stream(self, prompt: str, adapter: str | None, max_new_tokens: int | None,
                     temperature: float | None, *, constraint: dict | None = None) -> AsyncIterator[str]:
        payload = self._payload(prompt, adapter, max_new_tokens, temperature, True, constraint)
        with _remote_errors(self.base_url):
            async with self._client.stream("POST", "/v1/completions", json=payload) as response:
                if response.status_code >= 400:
                    raise BackendError(f"generation backend answered {response.status_code}")
                async for line in response.aiter_lines():
                    if line.startswith("data: ") and line != "data: [DONE]":
                        yield json.loads(line[6:])["choices"][0].get("text", "")

    async def health(self) -> str | None:
        """None when the remote answers ``GET /v1/models``, else what is wrong (for /ready)."""
        try:
            with _remote_errors(self.base_url):
                response = await self._client.get("/v1/models", timeout=3)
        except BackendError as exc:
            return str(exc)
        return None if response.status_code < 400 else f"the generation backend answered {response.status_code}"

    async def load_adapter(self, name: str, path: Path) -> None:
        """vllm: the server loads adapters itself (``--lora-modules name=path``), the name is recorded.
        llamacpp: the adapter is exported to GGUF next to it (a shared filesystem, or copy it over) and found by
        that path in the server's ``GET /lora-adapters``.

        Raises:
            BackendError: the llama.cpp server does not hold this adapter (the message says how to start it).
        """
        if self.dialect == "llamacpp":
            from inference.gguf_lora import export_lora_gguf

            if self.lora_shapes is None:
                raise BackendError("the llamacpp dialect needs the generator's shapes to export LoRAs")
            exported = (await anyio.to_thread.run_sync(export_lora_gguf, Path(path), self.lora_shapes)).resolve()
            with _remote_errors(self.base_url):
                response = await self._client.get("/lora-adapters", timeout=10)
            if response.status_code >= 400:
                raise BackendError(f"GET /lora-adapters answered {response.status_code}: {response.text[:200]}")
            loras = response.json()
            self._server_loras = [int(entry["id"]) for entry in loras]
            match = [int(e["id"]) for e in loras if Path(e.get("path", "")).resolve() == exported]
            if not match:
                raise BackendError(f"the llama.cpp server at {self.base_url} has no LoRA {exported}; start it with "
                                   f"--lora {exported} --lora-init-without-apply (it holds: "
                                   f"{[e.get('path') for e in loras] or 'none'})")
            self._lora_ids[name] = match[0]
        self._adapters.add(name)

    def loaded_adapters(self) -> list[str]:
        return sorted(self._adapters)

    async def close(self) -> None:
        await self._client.aclose()
