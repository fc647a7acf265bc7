"""The schema is made by alembic migrations (through advanced-alchemy), on SQLite and a real PostgreSQL: an
upgrade keeps existing data, a database made before migrations existed is adopted, and the models match
the migrations."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timedelta, timezone

import pytest
from advanced_alchemy.alembic.commands import AlembicCommands
from litestar.testing import TestClient
from sqlalchemy import MetaData, Table, pool, text
from sqlalchemy.ext.asyncio import create_async_engine

from core.settings import Settings
from service.app import create_app
from service.db import (
    BASELINE,
    Conversation,
    Feedback,
    Job,
    Message,
    alchemy_config,
    database_url,
    migrate,
    schema_revision,
)

ADMIN = "admin-key"
H_ADMIN = {"X-API-Key": ADMIN}
#: The job table's columns at the baseline revision (0002 added lane, owner, lease_expires_at, attempts).
BASELINE_JOB_COLUMNS = ("id", "kind", "status", "params", "progress", "result", "error", "resumable",
                        "sa_orm_sentinel", "created_at", "updated_at")


@pytest.fixture(params=["sqlite", "postgres"])
def db_settings(settings: Settings, request: pytest.FixtureRequest) -> Settings:
    url = request.getfixturevalue("postgres_url") if request.param == "postgres" else None
    return settings.model_copy(update={"server": settings.server.model_copy(update={
        "database_url": url, "api_keys": {ADMIN: ["chat", "admin"]}})})


def head() -> str:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from service.db import MIGRATIONS_DIR

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return ScriptDirectory.from_config(config).get_current_head()


async def _write_baseline_rows(settings: Settings) -> dict[str, str]:
    """Rows as a tunerag of the baseline schema wrote them: a rated conversation and two finished jobs."""
    engine = create_async_engine(database_url(settings), poolclass=pool.NullPool)
    old_job = Table("job", MetaData(), *[c._copy() for c in Job.__table__.columns if c.name in BASELINE_JOB_COLUMNS])
    now = datetime.now(timezone.utc)
    later = now + timedelta(seconds=1)
    conversation_id, message_id, job_id, eval_id = (uuid.uuid4() for _ in range(4))
    async with engine.begin() as conn:
        await conn.execute(Conversation.__table__.insert().values(id=conversation_id, api_key_id=None,
                                                                  created_at=now, updated_at=now))
        await conn.execute(Message.__table__.insert(), [
            dict(id=uuid.uuid4(), conversation_id=conversation_id, role="user", content="How do I void a label?",
                 details=None, created_at=now, updated_at=now),
            dict(id=message_id, conversation_id=conversation_id, role="assistant", content="Open the label [labels].",
                 details={"mode": "rag"}, created_at=later, updated_at=later)])
        await conn.execute(Feedback.__table__.insert().values(id=uuid.uuid4(), message_id=message_id, rating="up",
                                                              comment="kept", created_at=now, updated_at=now))
        await conn.execute(old_job.insert(), [
            dict(id=job_id, kind="index.rebuild", status="succeeded", params={"rebuild": True}, progress={},
                 result={"mode": "rebuild"}, error=None, resumable=False, created_at=now, updated_at=now),
            dict(id=eval_id, kind="eval", status="succeeded", params={}, progress={}, result=None, error=None,
                 resumable=False, created_at=now, updated_at=now)])
    await engine.dispose()
    return {"conversation": str(conversation_id), "job": str(job_id), "eval": str(eval_id)}


async def _drop_version_table(settings: Settings) -> None:
    engine = create_async_engine(database_url(settings), poolclass=pool.NullPool)
    async with engine.begin() as conn:
        await conn.execute(text("DROP TABLE alembic_version"))
    await engine.dispose()


@pytest.mark.parametrize("made_by", ["baseline migration", "create_all before migrations existed"])
def test_upgrade_keeps_the_data_a_previous_schema_holds(db_settings: Settings, made_by: str) -> None:
    assert migrate(db_settings, BASELINE) is None
    assert schema_revision(db_settings) == BASELINE
    ids = asyncio.run(_write_baseline_rows(db_settings))
    if made_by != "baseline migration":
        asyncio.run(_drop_version_table(db_settings))
        assert schema_revision(db_settings) is None

    with TestClient(app=create_app(db_settings)) as client:  # the app migrates at start-up
        assert schema_revision(db_settings) == head()
        conversation = client.get(f"/v1/conversations/{ids['conversation']}", headers=H_ADMIN)
        assert conversation.status_code == 200, conversation.text
        assert [m["content"] for m in conversation.json()["messages"]] == ["How do I void a label?",
                                                                           "Open the label [labels]."]
        jobs = {j["id"]: j for j in client.get("/v1/jobs", headers=H_ADMIN).json()}
        assert jobs[ids["job"]]["status"] == "succeeded" and jobs[ids["job"]]["lane"] == "index"
        assert jobs[ids["eval"]]["lane"] == "eval" and jobs[ids["eval"]]["attempts"] == 0
        # New rows work on the upgraded schema.
        new = client.post("/v1/index/refresh", headers=H_ADMIN)
        assert new.status_code == 202 and new.json()["lane"] == "index"


def test_models_match_the_migrations(db_settings: Settings) -> None:
    migrate(db_settings)
    AlembicCommands(alchemy_config(db_settings)).check()  # raises when autogenerate would write a migration
    assert migrate(db_settings) == head()  # a second start is a no-op
