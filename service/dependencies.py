"""What handlers can ask for by parameter name: the objects the app's lifespan put on ``app.state``.

The request-scoped database session (``db_session``) comes from advanced-alchemy's ``SQLAlchemyPlugin``.
"""

from __future__ import annotations

from litestar.datastructures import State
from litestar.di import Provide
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from service.chat import ChatService
from service.documents import DocumentService
from service.jobs import JobRunner
from service.state import ServiceState


def provide_service_state(state: State) -> ServiceState | None:
    """None until the lifespan has loaded the models and the index (``/ready`` answers 503 then)."""
    return state.get("service_state")


def provide_chat_service(state: State) -> ChatService:
    return state.chat_service


def provide_job_runner(state: State) -> JobRunner:
    return state.job_runner


def provide_document_service(state: State) -> DocumentService:
    return state.document_service


def provide_sessions(state: State) -> async_sessionmaker[AsyncSession]:
    """A session factory for work that outlives the request's own session (a stream's final turn)."""
    return state.sessions


DEPENDENCIES = {
    "service_state": Provide(provide_service_state, sync_to_thread=False),
    "chat_service": Provide(provide_chat_service, sync_to_thread=False),
    "job_runner": Provide(provide_job_runner, sync_to_thread=False),
    "document_service": Provide(provide_document_service, sync_to_thread=False),
    "sessions": Provide(provide_sessions, sync_to_thread=False),
}
