"""Background jobs (reindex, embedder switch, evaluation) persisted in the database.

A job row is written before work starts and updated on every state change; live progress is kept in
memory and flushed to the row at most once a second. Heavy work runs in a worker thread. On start-up,
jobs left ``queued``/``running`` by a previous process are marked ``failed`` with ``resumable`` set,
never silently dropped; on shutdown, running jobs are marked the same way.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core import artifacts
from core.errors import NotFoundError, TuneragError
from retrieval.indexer import update_index
from service.db import Job
from service.state import ServiceState

logger = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]
#: A job's work: called in a worker thread with the job's id and a progress callback; returns the result row.
JobWork = Callable[[uuid.UUID, Progress], dict[str, Any]]
INTERRUPTED = "interrupted by a restart or shutdown of the API; start it again"


class JobRunner:
    """Runs jobs one kind at a time per ``lane`` (e.g. all index jobs share the ``index`` lane)."""

    def __init__(self, session_maker: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = session_maker
        self._tasks: dict[uuid.UUID, asyncio.Task[None]] = {}
        self._live: dict[uuid.UUID, dict[str, Any]] = {}
        self._lanes: dict[str, asyncio.Lock] = {}

    async def recover(self) -> int:
        """Mark jobs a previous process left unfinished as failed and resumable; returns how many."""
        async with self._sessions() as session, session.begin():
            result = await session.execute(
                update(Job).where(Job.status.in_(("queued", "running")))
                .values(status="failed", error=INTERRUPTED, resumable=True)
            )
        return result.rowcount or 0

    async def submit(self, kind: str, params: dict[str, Any], work: JobWork, *, lane: str,
                     on_success: Callable[[dict[str, Any]], Awaitable[None]] | None = None) -> Job:
        async with self._sessions() as session, session.begin():
            job = Job(kind=kind, params=params, status="queued", progress={})
            session.add(job)
        self._tasks[job.id] = asyncio.create_task(self._run(job.id, work, lane, on_success), name=f"job-{job.id}")
        return job

    async def _set(self, job_id: uuid.UUID, **values: Any) -> None:
        async with self._sessions() as session, session.begin():
            await session.execute(update(Job).where(Job.id == job_id).values(**values))

    async def _run(self, job_id: uuid.UUID, work: JobWork, lane: str,
                   on_success: Callable[[dict[str, Any]], Awaitable[None]] | None) -> None:
        lock = self._lanes.setdefault(lane, asyncio.Lock())
        async with lock:
            began = time.monotonic()
            self._live[job_id] = {"stage": "starting", "done": 0, "total": 0}
            await self._set(job_id, status="running", progress=self._live[job_id])
            last_flush = [0.0]
            loop = asyncio.get_running_loop()

            def progress(stage: str, done: int, total: int) -> None:
                elapsed = time.monotonic() - began
                eta = (elapsed / done * (total - done)) if done and total else None
                self._live[job_id] = {"stage": stage, "done": done, "total": total,
                                      "elapsed_s": round(elapsed, 1), "eta_s": eta and round(eta, 1)}
                if time.monotonic() - last_flush[0] > 1.0:
                    last_flush[0] = time.monotonic()
                    asyncio.run_coroutine_threadsafe(self._set(job_id, progress=self._live[job_id]), loop)

            try:
                # Abandoned on cancel (shutdown): the work is crash-safe (indexes and artifacts are written to
                # staging directories and switched atomically), so the process need not wait for it.
                result = await anyio.to_thread.run_sync(work, job_id, progress, abandon_on_cancel=True)
                if on_success is not None:
                    await on_success(result)
                await self._set(job_id, status="succeeded", result=result, progress=self._live[job_id])
            except TuneragError as exc:
                await self._set(job_id, status="failed", error=str(exc), progress=self._live[job_id])
            except asyncio.CancelledError:
                await asyncio.shield(self._set(job_id, status="failed", error=INTERRUPTED, resumable=True))
                raise
            except Exception as exc:
                logger.exception("job %s failed", job_id)
                await self._set(job_id, status="failed", error=f"{type(exc).__name__}: {exc}")
            finally:
                self._live.pop(job_id, None)
                self._tasks.pop(job_id, None)

    async def get(self, job_id: uuid.UUID) -> Job:
        async with self._sessions() as session:
            job = await session.get(Job, job_id)
        if job is None:
            raise NotFoundError(f"job {job_id} not found")
        if job_id in self._live:
            job.progress = self._live[job_id]
        return job

    async def list(self, limit: int = 50) -> list[Job]:
        async with self._sessions() as session:
            rows = await session.execute(select(Job).order_by(Job.created_at.desc()).limit(limit))
            return list(rows.scalars())

    async def wait(self, job_id: uuid.UUID) -> None:
        task = self._tasks.get(job_id)
        if task is not None:
            await asyncio.shield(task)

    async def shutdown(self) -> None:
        """Cancel running jobs; each marks itself failed and resumable."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def start_index_job(runner: JobRunner, state: ServiceState, kind: str, *, rebuild: bool,
                    embedder_location: str | None = None, params: dict[str, Any] | None = None,
                    after: Callable[[], Awaitable[None]] | None = None) -> Awaitable[Job]:
    """Submit a reindex job on the ``index`` lane; on success the new version is swapped in, then ``after`` runs."""
    settings = state.settings

    def work(_: uuid.UUID, progress: Progress) -> dict[str, Any]:
        location = embedder_location or artifacts.active_embedder_location(settings)
        report = update_index(settings, rebuild=rebuild, embedder_location=location, on_progress=progress)
        return {k: getattr(report, k) for k in report.__dataclass_fields__}

    async def swap(_: dict[str, Any]) -> None:
        await anyio.to_thread.run_sync(state.open_current_index)
        if after is not None:
            await after()

    return runner.submit(kind, params or {"rebuild": rebuild}, work, lane="index", on_success=swap)
