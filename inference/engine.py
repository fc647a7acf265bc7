"""The generation engine: one base model in memory, LoRA adapters attached by name, serialized decoding.

Adapters are loaded onto the base with peft (``PeftModel.load_adapter``) and selected per call, so
switching adapters never reloads the base. Calls are serialized by a lock because selecting an adapter
changes model state; callers that want throughput pass batches (the service batches concurrent requests).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING

from core.errors import NotFoundError
from core.models import load_generator
from core.settings import GenerationSettings, Settings
from inference.generation import Generation, generate
from inference.refusal import RefusalGate, load_gate

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)


class GenerationEngine:
    """Base generator plus named adapters.

    Args:
        model: the base causal LM (the engine wraps it with peft on the first adapter; pass a private copy).
        tokenizer: its tokenizer.
        config: decoding defaults.
    """

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, config: GenerationSettings) -> None:
        self.model, self.tokenizer, self.config = model, tokenizer, config
        self._lock = threading.Lock()
        self._adapters: dict[str, str] = {}
        self._gates: dict[str, RefusalGate] = {}

    @classmethod
    def from_settings(cls, settings: Settings) -> GenerationEngine:
        model, tokenizer = load_generator(settings, fresh=True)
        return cls(model, tokenizer, settings.generation)

    @property
    def adapters(self) -> dict[str, str]:
        """Loaded adapter names and the folders they came from."""
        return dict(self._adapters)

    def load_adapter(self, name: str, path: Path | str) -> None:
        """Attach a peft adapter folder under ``name`` (no-op when already loaded from the same folder)."""
        from peft import PeftModel

        path = str(path)
        if self._adapters.get(name) == path:
            return
        with self._lock:
            if not self._adapters:
                self.model = PeftModel.from_pretrained(self.model, path, adapter_name=name)
            else:
                self.model.load_adapter(path, adapter_name=name)
            self.model.eval()
            self._adapters[name] = path
            if gate := load_gate(path, self.tokenizer, self.config.refusal_min_prob):
                self._gates[name] = gate
            else:
                self._gates.pop(name, None)
        logger.info("adapter %s loaded from %s", name, path)

    def unload_adapter(self, name: str) -> None:
        with self._lock:
            if name not in self._adapters:
                raise NotFoundError(f"adapter {name!r} is not loaded")
            self.model.delete_adapter(name)
            del self._adapters[name]
            self._gates.pop(name, None)

    def _selected(self, adapter: str | None):
        if adapter is not None:
            if adapter not in self._adapters:
                raise NotFoundError(f"adapter {adapter!r} is not loaded; loaded: {sorted(self._adapters) or 'none'}")
            self.model.set_adapter(adapter)
            return nullcontext()
        return self.model.disable_adapter() if self._adapters else nullcontext()

    def generate(self, prompts: Sequence[str], adapter: str | None = None, *, max_new_tokens: int | None = None,
                 temperature: float | None = None) -> list[Generation]:
        """Decode rendered prompts with the base model (``adapter=None``) or a loaded adapter."""
        with self._lock, self._selected(adapter):
            return generate(self.model, self.tokenizer, prompts, self.config, max_new_tokens=max_new_tokens,
                            temperature=temperature, refusal_gate=self._gates.get(adapter or ""))

    def stream(self, prompt: str, adapter: str | None = None, *, max_new_tokens: int | None = None,
               temperature: float | None = None) -> Iterator[str]:
        """Yield decoded text pieces as they are produced (holds the engine for the whole answer).

        Closing the iterator early (a client that went away) stops the decoding at the next step, and the
        engine is released only once the decoding thread has finished: two generations never share the model.
        """
        from transformers import TextIteratorStreamer

        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        errors: list[BaseException] = []
        stop = threading.Event()

        def run() -> None:
            try:
                generate(self.model, self.tokenizer, [prompt], self.config, max_new_tokens=max_new_tokens,
                         temperature=temperature, streamer=streamer, stop=stop, refusal_gate=self._gates.get(adapter or ""))
            except BaseException as exc:  # surfaced to the consumer below
                errors.append(exc)
                streamer.end()

        with self._lock, self._selected(adapter):
            worker = threading.Thread(target=run, daemon=True)
            worker.start()
            try:
                yield from streamer
            finally:
                stop.set()
                worker.join()
        if errors:
            raise errors[0]
