"""Persistence for the API: conversations, messages, jobs, feedback and the request log.

SQLAlchemy models on advanced-alchemy's audit bases; SQLite in the data dir by default, any SQLAlchemy
async URL (``postgresql+asyncpg://...``) through ``server.database_url``.
"""

from __future__ import annotations

from typing import Any

from advanced_alchemy.base import UUIDAuditBase
from advanced_alchemy.extensions.litestar import AsyncSessionConfig, SQLAlchemyAsyncConfig
from sqlalchemy import JSON, Float, ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from core.settings import Settings


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
    """A background job (reindex, embedder switch, evaluation). Status: queued, running, succeeded, failed."""

    __tablename__ = "job"

    kind: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16), default="queued")
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

    Tables are created by the app's lifespan through ``create_all_metadata`` (not by the plugin's own
    lifespan, which runs after the app's: jobs left over by a previous process are recovered first thing).
    """
    settings.paths.data_dir.mkdir(parents=True, exist_ok=True)
    return SQLAlchemyAsyncConfig(
        connection_string=database_url(settings),
        session_config=AsyncSessionConfig(expire_on_commit=False),
        session_dependency_key="db_session",
        before_send_handler="autocommit",
        create_all=False,
    )
