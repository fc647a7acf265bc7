"""What the API process holds in memory: the generation backend, the current retriever, the active adapter.

Everything is loaded once at start-up (in the app's lifespan) and replaced atomically: a chat request
takes a reference to the current retriever and adapter when it starts and keeps using them, so an
index swap or adapter switch never disturbs a request in flight.

Replicas share the data directory: what one of them switches (the index ``CURRENT`` pointer, the active
adapter and verifier) the others pick up by reading the same pointers every ``server.watch_interval_s``.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

import anyio

from core import artifacts
from core.errors import NotFoundError
from core.settings import Settings
from inference.backends import GenerationBackend
from retrieval import index_store
from retrieval.answerability import Verifier
from retrieval.indexer import update_index
from retrieval.search import Retriever, open_retriever

logger = logging.getLogger(__name__)

NO_ADAPTER_NOTE = ("no fine-tuned adapter is active: ft and combined modes use the base generator; train one with "
                   "`tunerag train generator` (or `make demo`: adapter + embedder on the sample domain in ~14 min)")
NO_EMBEDDER_NOTE = ("the index uses the base embedder: combined retrieval is not fine-tuned; train one with "
                    "`tunerag train embedder`, then `tunerag index --rebuild --embedder artifact:latest`")


@dataclass
class ServiceState:
    settings: Settings
    backend: GenerationBackend
    # The generator's tokenizer (a transformers PreTrainedTokenizerBase): prompts are rendered here for every
    # backend. Typed Any because Litestar resolves these hints at runtime for dependency injection.
    tokenizer: Any
    retriever: Retriever | None = None
    active_adapter: str | None = None
    # The answerability verifier gating generation in the retrieval modes (None: off).
    verifier: Verifier | None = None
    notes: list[str] = field(default_factory=list)
    # What the backend runs (inference.loader.LoadedEngine.info): engine, weights and their hash, decoding.
    engine_info: dict[str, Any] = field(default_factory=dict)
    # This process's name among replicas (job leases, /ready).
    replica: str = ""
    # Drift monitoring of served queries (service.monitoring.MonitorService; Any: resolved at runtime by DI).
    monitoring: Any = None
    # Serializes swaps (a job's, a route's, the pointer watcher's).
    _swap_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # Pointer values the watcher failed to load, not retried until they change.
    _unloadable: dict[str, str | None] = field(default_factory=dict)

    @property
    def index_version(self) -> str | None:
        return self.retriever.version.name if self.retriever else None

    @property
    def embedder_id(self) -> str | None:
        return self.retriever.version.manifest.embedder_id if self.retriever else None

    def embedder_is_finetuned(self) -> bool:
        if self.retriever is None:
            return False
        return artifacts.embedder_artifact_id(self.settings, self.retriever.version.manifest.embedder_location) is not None

    def open_current_index(self) -> None:
        """(Re)load the ``CURRENT`` index version and swap it in."""
        self.retriever = open_retriever(self.settings)
        version = self.retriever.version
        logger.info("serving index %s (%d chunks, embedder %s)", version.name, len(version.chunks),
                    version.manifest.embedder_id)

    async def swap_index(self) -> None:
        """Open the ``CURRENT`` index version (off the event loop) and serve it; the drift monitor's reference
        follows it."""
        async with self._swap_lock:
            await anyio.to_thread.run_sync(self.open_current_index)
        if self.monitoring is not None:
            await self.monitoring.rebuild_async(self.retriever)

    async def follow_pointers(self) -> list[str]:
        """Swap to what the shared pointers name when another replica (or the CLI) moved them; returns what
        changed. Called every ``server.watch_interval_s`` by :meth:`watch`."""
        changed: list[str] = []
        settings = self.settings
        current = index_store.current_version(settings.paths.index_dir)
        if current is not None and current != self.index_version:
            await self.swap_index()
            changed.append(f"index {current}")
        serving = {"adapter": self.active_adapter, "verifier": self.verifier.id if self.verifier else None}
        for kind, use in (("adapter", self._use_adapter), ("verifier", self._use_verifier)):
            wanted = artifacts.active_id(settings, kind)
            if wanted == serving[kind] or self._unloadable.get(kind, "") == wanted:
                continue
            try:
                async with self._swap_lock:
                    await use(wanted)
                changed.append(f"{kind} {wanted}")
            except Exception:
                self._unloadable[kind] = wanted
                logger.exception("the active %s pointer names %r, which does not load here; still serving %r",
                                 kind, wanted, serving[kind])
        return changed

    async def watch(self) -> None:
        """Follow the shared pointers until cancelled (the app's lifespan runs this as a task)."""
        while True:
            await asyncio.sleep(self.settings.server.watch_interval_s)
            try:
                changed = await self.follow_pointers()
            except Exception:
                logger.exception("reading the shared pointers failed; retrying")
                continue
            if changed:
                logger.warning("followed the shared pointers: now serving %s", ", ".join(changed))

    async def start(self) -> None:
        """Open the index (building the configured sources when none exists) and load the active adapter."""
        if index_store.current_version(self.settings.paths.index_dir) is None:
            logger.info("no index yet: building one from %s", [str(s) for s in self.settings.retrieval.sources])
            embedder = artifacts.active_embedder_location(self.settings)
            await anyio.to_thread.run_sync(lambda: update_index(self.settings, embedder_location=embedder))
        await anyio.to_thread.run_sync(self.open_current_index)
        if self.monitoring is not None:
            await self.monitoring.rebuild_async(self.retriever)
        adapter_id = artifacts.active_id(self.settings, "adapter")
        if adapter_id:
            await self.activate_adapter(adapter_id)
        else:
            self.notes.append(NO_ADAPTER_NOTE)
        if not self.embedder_is_finetuned():
            self.notes.append(NO_EMBEDDER_NOTE)
        verifier_id = artifacts.active_id(self.settings, "verifier")
        if verifier_id:
            await self.activate_verifier(verifier_id)
        logger.warning("serving: generator %s, adapter %s, embedder %s, index %s, verifier %s",
                       self.settings.models.generator, self.active_adapter or "none (base model)", self.embedder_id,
                       self.index_version, self.verifier.id if self.verifier else "none")
        for note in self.notes:
            logger.warning(note)

    async def activate_adapter(self, adapter_id: str | None) -> None:
        """Load (if needed) and switch to an adapter, or back to the base model with ``None``; the shared
        pointer moves once it serves here, and the other replicas follow it."""
        async with self._swap_lock:
            served = await self._use_adapter(adapter_id)
            artifacts.activate(self.settings, "adapter", served)

    async def _use_adapter(self, adapter_id: str | None) -> str | None:
        if adapter_id is None:
            self.active_adapter = None
            return None
        artifact = artifacts.get_artifact(self.settings, "adapter", adapter_id)
        if not (artifact.path / "adapter").is_dir():
            raise NotFoundError(f"adapter artifact {adapter_id!r} has no adapter files")
        await self.backend.load_adapter(artifact.id, artifact.path / "adapter")
        self.active_adapter = artifact.id
        self.notes = [n for n in self.notes if n != NO_ADAPTER_NOTE]
        return artifact.id

    async def activate_verifier(self, verifier_id: str | None) -> None:
        """Load and switch to a verifier artifact, or turn the verifier off with ``None``. The one in use keeps
        serving until the new one has loaded (and passed its checks); then the shared pointer moves."""
        async with self._swap_lock:
            served = await self._use_verifier(verifier_id)
            artifacts.activate(self.settings, "verifier", served)

    async def _use_verifier(self, verifier_id: str | None) -> str | None:
        if verifier_id is None:
            self.verifier = None
            return None
        artifact = artifacts.get_artifact(self.settings, "verifier", verifier_id)
        from core.models import resolve_device

        device = resolve_device(self.settings)
        verifier = await anyio.to_thread.run_sync(lambda: Verifier.load(artifact.path, artifact.manifest, device))
        self.verifier = verifier
        logger.info("verifier %s active (threshold %.4f)", verifier.id, verifier.threshold)
        trained_with = (artifact.manifest.get("index") or {}).get("embedder")
        if trained_with and self.embedder_id and trained_with != self.embedder_id:
            # Legal, but its threshold was chosen on what another embedder retrieved.
            logger.warning("verifier %s was trained on contexts retrieved with embedder %s; the index now uses %s: "
                           "retrain it (`tunerag train verifier`) if refusals drift", verifier.id, trained_with,
                           self.embedder_id)
        return artifact.id
