"""Persistence for the API: conversations, messages, jobs, feedback and the request log.

SQLAlchemy models on advanced-alchemy's audit bases; SQLite in the data dir by default, any SQLAlchemy
async URL (``postgresql+asyncpg://...``) through ``server.database_url``. The schema is made and upgraded by
the alembic migrations in ``service/migrations`` (run through advanced-alchemy), never by ``create_all``.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from pathlib import Path
from typing import Any

from advanced_alchemy.alembic.commands import AlembicCommands
from advanced_alchemy.base import UUIDAuditBase
from advanced_alchemy.extensions.litestar import AlembicAsyncConfig, AsyncSessionConfig, SQLAlchemyAsyncConfig
from advanced_alchemy.types import DateTimeUTC
from sqlalchemy import JSON, Float, ForeignKey, Index, Integer, String, Text, inspect, pool
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.orm import Mapped, mapped_column, relationship

from core.settings import Settings

logger = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
VERSION_TABLE = "alembic_version"
#: The first revision: the schema every database made before migrations existed (by ``create_all``) has.
BASELINE = "0001"
#: PostgreSQL advisory lock key held while migrating, so replicas starting together migrate one at a time.
MIGRATION_LOCK = 0x7475_6E65
metadata = UUIDAuditBase.metadata


class Conversation(UUIDAuditBase):
    __tablename__ = "conversation"

    api_key_id: Mapped[str | None] = mapped_column(String(64), default=None)
    # Never loaded whole (a conversation can be long): handlers page through Message with queries.
    messages: Mapped[list[Message]] = relationship(
        back_populates="conversation", order_by="Message.created_at", lazy="raise", cascade="all, delete-orphan",
        passive_deletes=True,
    )


class Message(UUIDAuditBase):
    """One turn. Assistant turns keep how they were produced (mode, versions, sources, timings)."""

    __tablename__ = "message"

    conversation_id: Mapped[Any] = mapped_column(ForeignKey("conversation.id", ondelete="CASCADE"))
    role: Mapped[str] = mapped_column(String(16))
    content: Mapped[str] = mapped_column(Text)
    details: Mapped[dict | None] = mapped_column(JSON, default=None)
    conversation: Mapped[Conversation] = relationship(back_populates="messages")


class Job(UUIDAuditBase):
    """A background job (reindex, embedder switch, evaluation). Status: queued, running, succeeded, failed.

    Any replica may run it: a worker claims a queued row (``owner``, ``lease_expires_at``) and renews the
    lease while it runs; one job per ``lane`` runs at a time across all replicas.
    """

    __tablename__ = "job"
    __table_args__ = (Index("ix_job_status_lane", "status", "lane"),)

    kind: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16), default="queued")
    lane: Mapped[str] = mapped_column(String(32), default="default", server_default="default")
    owner: Mapped[str | None] = mapped_column(String(128), default=None)
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTimeUTC(timezone=True), default=None)
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    params: Mapped[dict] = mapped_column(JSON, default=dict)
    progress: Mapped[dict] = mapped_column(JSON, default=dict)
    result: Mapped[dict | None] = mapped_column(JSON, default=None)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    resumable: Mapped[bool] = mapped_column(default=False)


class Feedback(UUIDAuditBase):
    """A user's rating of one assistant answer; exported later as training data. One row per answer: a new
    rating of the same answer (only its conversation's key or an admin may rate it) replaces the old one."""

    __tablename__ = "feedback"

    message_id: Mapped[Any] = mapped_column(ForeignKey("message.id", ondelete="CASCADE"))
    rating: Mapped[str] = mapped_column(String(8))
    comment: Mapped[str | None] = mapped_column(Text, default=None)
    # What the answer should have been (a down rating only): a corrected training example and a DPO pair.
    correction: Mapped[str | None] = mapped_column(Text, default=None)


class RequestLog(UUIDAuditBase):
    __tablename__ = "request_log"

    method: Mapped[str] = mapped_column(String(8))
    path: Mapped[str] = mapped_column(String(256))
    status_code: Mapped[int] = mapped_column(Integer)
    duration_ms: Mapped[float] = mapped_column(Float)
    api_key_id: Mapped[str | None] = mapped_column(String(64), default=None)


def database_url(settings: Settings) -> str:
    if settings.server.database_url:
        return settings.server.database_url
    return f"sqlite+aiosqlite:///{settings.paths.database_path}"


def alchemy_config(settings: Settings) -> SQLAlchemyAsyncConfig:
    """advanced-alchemy's Litestar config for ``SQLAlchemyPlugin``: the engine, and a request-scoped
    ``db_session`` dependency committed when the response is a success (``autocommit``).

    The schema is brought up to date by the app's lifespan through :func:`migrate` (before anything reads it).
    """
    settings.paths.data_dir.mkdir(parents=True, exist_ok=True)
    return SQLAlchemyAsyncConfig(
        connection_string=database_url(settings),
        session_config=AsyncSessionConfig(expire_on_commit=False),
        session_dependency_key="db_session",
        before_send_handler="autocommit",
        create_all=False,
        alembic_config=AlembicAsyncConfig(script_location=str(MIGRATIONS_DIR), script_config="",
                                          version_table_name=VERSION_TABLE, render_as_batch=True),
    )


def _tables(url: str) -> set[str]:
    async def read() -> set[str]:
        engine = create_async_engine(url, poolclass=pool.NullPool)
        try:
            async with engine.connect() as connection:
                return set(await connection.run_sync(lambda c: inspect(c).get_table_names()))
        finally:
            await engine.dispose()

    return asyncio.run(read())


def migrate(settings: Settings, revision: str = "head") -> str | None:
    """Upgrade the database's schema to ``revision`` and return the revision it was at before (None: empty
    database). Blocking, with its own event loop: call it from a worker thread.

    A database made before migrations existed (tables but no version table) is stamped with the baseline
    first, so its rows are kept and only later revisions run.
    """
    commands = AlembicCommands(alchemy_config(settings))
    url = database_url(settings)
    tables = _tables(url)
    before: str | None = None
    if VERSION_TABLE not in tables and "job" in tables:
        logger.warning("database has tunerag's tables but no migration history: stamping revision %s", BASELINE)
        commands.stamp(BASELINE)
        before = BASELINE
    elif VERSION_TABLE in tables:
        before = schema_revision(settings)
    commands.upgrade(revision)
    return before


def schema_revision(settings: Settings) -> str | None:
    """The revision the database is at (None: never migrated)."""
    from sqlalchemy import text

    async def read() -> str | None:
        engine = create_async_engine(database_url(settings), poolclass=pool.NullPool)
        try:
            async with engine.connect() as connection:
                if VERSION_TABLE not in await connection.run_sync(lambda c: inspect(c).get_table_names()):
                    return None
                return (await connection.execute(text(f"SELECT version_num FROM {VERSION_TABLE}"))).scalar()
        finally:
            await engine.dispose()

    return asyncio.run(read())
