"""Alembic environment for tunerag's database, run through advanced-alchemy's ``AlembicCommands``.

Migrations run on their own engine (``NullPool``) in a fresh event loop: the caller runs them in a worker
thread, never on the server's loop. On PostgreSQL an advisory lock makes replicas that start together
migrate one after the other.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, cast

from alembic import context
from sqlalchemy import pool, text
from sqlalchemy.ext.asyncio import create_async_engine

from service.db import MIGRATION_LOCK, metadata

if TYPE_CHECKING:
    from advanced_alchemy.alembic.commands import AlembicCommandConfig
    from sqlalchemy.engine import Connection

config = cast("AlembicCommandConfig", context.config)


def _configure(**kwargs: object) -> None:
    context.configure(target_metadata=metadata, version_table=config.version_table_name,
                      render_as_batch=config.render_as_batch, compare_type=config.compare_type,
                      user_module_prefix=config.user_module_prefix, **kwargs)


def _run(connection: Connection) -> None:
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
    _configure(connection=connection)
    with context.begin_transaction():
        context.run_migrations()


async def _online() -> None:
    engine = create_async_engine(config.db_url, poolclass=pool.NullPool)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run)
            await connection.commit()
    finally:
        await engine.dispose()


if context.is_offline_mode():
    _configure(url=config.db_url, literal_binds=True, dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()
else:
    asyncio.run(_online())
