"""The server's side of drift monitoring: feeds served queries to :class:`monitoring.monitor.DriftMonitor` off the
event loop, rebuilds the reference when the index changes, and exports the results as Prometheus gauges.

Observations are embedded and checked on one dedicated worker thread, after the answer was sent; when more
than ``MAX_PENDING`` wait, new ones are dropped (and counted) rather than slowing chat down.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from prometheus_client import Counter, Gauge

from core import artifacts
from core.settings import Settings
from monitoring.monitor import DriftMonitor, build_reference

logger = logging.getLogger(__name__)

MAX_PENDING = 256
DRIFT_DETECTED = Gauge("tunerag_drift_detected", "1 when the last drift check found drift, else 0")
DRIFT_P_VALUE = Gauge("tunerag_drift_p_value", "p-value of the last drift check, per test", ["test"])
DRIFT_STATISTIC = Gauge("tunerag_drift_statistic", "statistic of the last drift check, per test", ["test"])
WINDOW_SIZE = Gauge("tunerag_monitor_window_queries", "served queries in the drift window")
DROPPED = Counter("tunerag_monitor_dropped_total", "served queries not observed because the monitor was behind")


def reference_chat_files(settings: Settings) -> list[Path]:
    """The chat files the active adapter was trained on (its manifest), else the configured ones."""
    active = artifacts.active_id(settings, "adapter")
    if active:
        manifest = artifacts.get_artifact(settings, "adapter", active).manifest
        sources = (manifest.get("data") or {}).get("sources") or []
        existing = [Path(s) for s in sources if Path(s).is_file()]  # the manifest holds strings
        if existing:
            return existing
    return [p for p in settings.train_generator.chat_files if p.is_file()]


class MonitorService:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.monitor: DriftMonitor | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="drift-monitor")
        self._pending = 0
        self._retriever: Any = None

    def rebuild(self, retriever: Any) -> None:
        """A new reference for ``retriever``'s index (blocking); the window is kept while the embedder is the
        same (its vectors stay comparable), emptied otherwise."""
        config = self.settings.monitoring
        if not config.enabled or retriever is None:
            return
        reference = build_reference(self.settings, retriever, reference_chat_files(self.settings), config.reference_max)
        old = self.monitor
        monitor = DriftMonitor(reference, config)
        if old is not None and old.reference.embedder_id == reference.embedder_id:
            monitor.adopt_window(old)
        self.monitor, self._retriever = monitor, retriever
        logger.info("drift monitor: reference of %d questions on index %s", len(reference.vectors), reference.index_version)

    async def rebuild_async(self, retriever: Any) -> None:
        await asyncio.get_running_loop().run_in_executor(self._pool, self.rebuild, retriever)

    def observe(self, question: str, refused: bool) -> None:
        """Schedule one observation (call from the event loop; returns at once)."""
        if self.monitor is None or not question.strip():
            return
        if self._pending >= MAX_PENDING:
            DROPPED.inc()
            return
        self._pending += 1
        future = asyncio.get_running_loop().run_in_executor(self._pool, self._observe, question, refused)
        future.add_done_callback(self._done)

    def _done(self, future: asyncio.Future) -> None:
        self._pending -= 1
        if not future.cancelled() and future.exception() is not None:
            logger.error("drift monitor: an observation failed: %s", future.exception())

    def _observe(self, question: str, refused: bool) -> None:
        monitor, retriever = self.monitor, self._retriever
        if monitor is None or retriever is None:
            return
        vectors, scores = retriever.embed_and_top_score([question])
        checked = monitor.observe(vectors[0], float(scores[0]), refused)
        WINDOW_SIZE.set(monitor.status()["window"]["size"])
        if checked is not None:
            self._export(checked)
            if checked["drift"]:
                drifting = [name for name, t in checked["tests"].items() if t["drift"]]
                logger.warning("drift detected after %d queries: %s", checked["observed"], ", ".join(drifting))

    @staticmethod
    def _export(checked: dict[str, Any]) -> None:
        DRIFT_DETECTED.set(1 if checked["drift"] else 0)
        for name, test in checked["tests"].items():
            if test["p_value"] is not None:
                DRIFT_P_VALUE.labels(name).set(test["p_value"])
            DRIFT_STATISTIC.labels(name).set(test["statistic"])

    def feedback(self, rating: str) -> None:
        if self.monitor is not None:
            self.monitor.feedback(rating)

    def status(self) -> dict[str, Any]:
        if self.monitor is None:
            return {"enabled": self.settings.monitoring.enabled, "drift_detected": False,
                    "detail": "no reference yet" if self.settings.monitoring.enabled else "monitoring.enabled is false"}
        return {"enabled": True, "pending": self._pending, **self.monitor.status()}

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
