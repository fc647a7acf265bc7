"""Background jobs (reindex, embedder switch, evaluation) as database rows that any replica may run.

A job is written as a ``queued`` row by whichever replica was asked. Every replica's worker polls for queued
rows and claims one (``SELECT ... FOR UPDATE SKIP LOCKED`` under an advisory lock on PostgreSQL; a
compare-and-set ``UPDATE`` everywhere), at most one running job per lane across all replicas. The claimer
holds a lease that it renews while the work runs in a worker thread; live progress is flushed to the row at
most once a second, so every replica shows it.

A replica that dies stops renewing: once the lease has expired, any replica puts the job back in the queue
(at most ``server.job_max_attempts`` runs in all) and runs it again. The work is crash-safe (index versions
and artifacts are written to staging directories and switched atomically), so a re-run is safe. On shutdown
a replica hands its running jobs back to the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import anyio
from sqlalchemy import or_, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core.errors import InvalidInputError, NotFoundError, TuneragError
from core.settings import ServerSettings
from service.db import Job

logger = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]
#: A job's work: called in a worker thread with the job's id, its params and a progress callback; returns the
#: job's result row.
JobWork = Callable[[uuid.UUID, dict[str, Any], Progress], dict[str, Any]]
#: PostgreSQL advisory lock key held while a replica claims a job (claims are short and rare).
CLAIM_LOCK = 0x7475_6E66
HANDED_BACK = "handed back to the queue by a replica's shutdown"


@dataclass(frozen=True)
class JobKind:
    """What a job kind runs: its lane (one running job per lane), the work, and what follows on success on the
    replica that ran it (e.g. swap in the new index; the others follow the shared pointer)."""

    lane: str
    work: JobWork
    on_success: Callable[[dict[str, Any], dict[str, Any]], Awaitable[None]] | None = None


def _now() -> datetime:
    return datetime.now(timezone.utc)


def replica_name(settings: ServerSettings) -> str:
    return settings.replica_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class JobRunner:
    """Submits job rows, and runs the ones this replica claims."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], kinds: Mapping[str, JobKind],
                 settings: ServerSettings, owner: str | None = None) -> None:
        self._sessions = sessions
        self._kinds = dict(kinds)
        self._settings = settings
        self.owner = owner or replica_name(settings)
        self._lease = timedelta(seconds=settings.job_lease_s)
        self._tasks: dict[uuid.UUID, asyncio.Task[None]] = {}
        self._live: dict[uuid.UUID, dict[str, Any]] = {}
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._postgres: bool | None = None

    # -- the API's side ----------------------------------------------------------------------------------

    async def submit(self, kind: str, params: dict[str, Any]) -> Job:
        if kind not in self._kinds:
            raise InvalidInputError(f"unknown job kind {kind!r}; known: {sorted(self._kinds)}")
        async with self._sessions() as session, session.begin():
            job = Job(kind=kind, params=params, status="queued", progress={}, lane=self._kinds[kind].lane)
            session.add(job)
        self._wake.set()
        return job

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

    # -- the worker ----------------------------------------------------------------------------------------

    def start(self) -> None:
        self._loop_task = asyncio.create_task(self._work_loop(), name=f"jobs-{self.owner}")

    async def _work_loop(self) -> None:
        last_sweep = 0.0
        while True:
            try:
                # Expired leases are looked for every third of a lease (not every poll: it is a write).
                if time.monotonic() - last_sweep >= self._settings.job_lease_s / 3:
                    last_sweep = time.monotonic()
                    await self.requeue_expired()
                while (job := await self.claim()) is not None:
                    self._tasks[job.id] = asyncio.create_task(self._run(job), name=f"job-{job.id}")
            except asyncio.CancelledError:
                raise
            except Exception:  # the database is away for a moment: try again at the next poll
                logger.exception("job worker: polling failed; retrying in %.1f s", self._settings.job_poll_s)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._settings.job_poll_s)
            self._wake.clear()

    async def _is_postgres(self, session: AsyncSession) -> bool:
        if self._postgres is None:
            self._postgres = session.bind.dialect.name == "postgresql"
        return self._postgres

    async def requeue_expired(self) -> int:
        """Jobs whose owner stopped renewing the lease go back to the queue, or fail when out of attempts."""
        now = _now()
        expired = (Job.status == "running") & or_(Job.lease_expires_at.is_(None), Job.lease_expires_at < now)
        max_attempts = self._settings.job_max_attempts
        async with self._sessions() as session, session.begin():
            failed = await session.execute(
                update(Job).where(expired, Job.attempts >= max_attempts)
                .values(status="failed", owner=None, lease_expires_at=None, resumable=True,
                        error=f"interrupted {max_attempts} time(s) (its replica stopped or was killed); start it again"))
            requeued = await session.execute(
                update(Job).where(expired).values(status="queued", owner=None, lease_expires_at=None,
                                                  progress={"stage": "queued", "note": "its replica stopped; run again"}))
        if failed.rowcount:
            logger.warning("%d job(s) out of attempts after their replica stopped: marked failed", failed.rowcount)
        if requeued.rowcount:
            logger.warning("%d job(s) whose replica stopped renewing the lease: queued again", requeued.rowcount)
        return (failed.rowcount or 0) + (requeued.rowcount or 0)

    async def claim(self) -> Job | None:
        """Claim the oldest queued job of a kind this replica runs whose lane is free, or None."""
        async with self._sessions() as session, session.begin():
            postgres = await self._is_postgres(session)
            if postgres:
                await session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": CLAIM_LOCK})
            busy = select(Job.lane).where(Job.status == "running").scalar_subquery()
            query = (select(Job).where(Job.status == "queued", Job.kind.in_(self._kinds), Job.lane.not_in(busy))
                     .order_by(Job.created_at).limit(1))
            if postgres:
                query = query.with_for_update(skip_locked=True)
            job = (await session.execute(query)).scalar_one_or_none()
            if job is None:
                return None
            claimed = await session.execute(
                update(Job).where(Job.id == job.id, Job.status == "queued")
                .values(status="running", owner=self.owner, lease_expires_at=_now() + self._lease,
                        attempts=Job.attempts + 1, progress={"stage": "starting", "done": 0, "total": 0}))
            if claimed.rowcount != 1:
                return None
        return job

    async def _mine(self, job_id: uuid.UUID, **values: Any) -> bool:
        """Update a job this replica still owns; False when the lease was lost (another replica took it over)."""
        async with self._sessions() as session, session.begin():
            result = await session.execute(
                update(Job).where(Job.id == job_id, Job.owner == self.owner, Job.status == "running").values(**values))
        return result.rowcount == 1

    async def _renew(self, job_id: uuid.UUID) -> None:
        while True:
            await asyncio.sleep(self._settings.job_lease_s / 3)
            try:
                if not await self._mine(job_id, lease_expires_at=_now() + self._lease, progress=self._live.get(job_id, {})):
                    logger.error("job %s: lease lost to another replica; its result here will not be recorded", job_id)
                    return
            except Exception:
                logger.exception("job %s: renewing the lease failed; retrying", job_id)

    async def _run(self, job: Job) -> None:
        kind = self._kinds[job.kind]
        job_id = job.id
        began = time.monotonic()
        self._live[job_id] = {"stage": "starting", "done": 0, "total": 0}
        last_flush = [0.0]
        loop = asyncio.get_running_loop()

        def progress(stage: str, done: int, total: int) -> None:
            elapsed = time.monotonic() - began
            eta = (elapsed / done * (total - done)) if done and total else None
            self._live[job_id] = {"stage": stage, "done": done, "total": total,
                                  "elapsed_s": round(elapsed, 1), "eta_s": eta and round(eta, 1)}
            if time.monotonic() - last_flush[0] > 1.0:
                last_flush[0] = time.monotonic()
                asyncio.run_coroutine_threadsafe(self._mine(job_id, progress=self._live[job_id]), loop)

        renew = asyncio.create_task(self._renew(job_id), name=f"lease-{job_id}")
        finished = dict(lease_expires_at=None)  # owner stays: which replica ran it
        try:
            # Abandoned on cancel (shutdown): the work is crash-safe, so the process need not wait for it.
            result = await anyio.to_thread.run_sync(kind.work, job_id, dict(job.params), progress,
                                                    abandon_on_cancel=True)
            if kind.on_success is not None:
                await kind.on_success(dict(job.params), result)
            await self._mine(job_id, status="succeeded", result=result, progress=self._live[job_id], **finished)
        except TuneragError as exc:
            await self._mine(job_id, status="failed", error=str(exc), progress=self._live[job_id], **finished)
        except asyncio.CancelledError:
            if job.attempts + 1 >= self._settings.job_max_attempts:
                handed_back = dict(status="failed", resumable=True, error=f"{HANDED_BACK}, out of attempts; start it again")
            else:
                handed_back = dict(status="queued", progress={"stage": "queued", "note": HANDED_BACK})
            await asyncio.shield(self._mine(job_id, **handed_back, owner=None, **finished))
            raise
        except Exception as exc:
            logger.exception("job %s failed", job_id)
            await self._mine(job_id, status="failed", error=f"{type(exc).__name__}: {exc}", progress=self._live[job_id],
                             **finished)
        finally:
            renew.cancel()
            self._live.pop(job_id, None)
            self._tasks.pop(job_id, None)

    async def shutdown(self) -> None:
        """Stop claiming; running jobs are cancelled and handed back to the queue for any replica."""
        if self._loop_task is not None:
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
