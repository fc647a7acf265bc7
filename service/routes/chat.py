"""Support chat: ``POST /v1/chat`` (JSON or SSE), conversation history and feedback."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any

from litestar import Controller, Request, Response, get, post
from litestar.di import NamedDependency
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromPath, Parameter
from litestar.response import ServerSentEvent
from msgspec import to_builtins
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core.errors import InvalidInputError, NotFoundError
from core.prompt import CITATION
from core.prompt import Message as PromptMessage
from service.auth import is_admin, known_key, presented_key, requires
from service.chat import Answer, ChatService, stream_errors
from service.db import Conversation, Feedback, Message
from service.disconnect import unless_disconnected
from service.schemas import (
    AnswerabilityOut,
    ChatRequest,
    ChatResponse,
    FeedbackRequest,
    FeedbackResponse,
    Source,
    Usage,
)
from service.state import ServiceState

HISTORY_TURNS = 6  # earlier messages sent back to the model with a follow-up question


async def owned_conversation(session: AsyncSession, conversation_id: uuid.UUID, request: Request) -> Conversation:
    """The conversation if the caller's key created it (or the caller is an admin); else 404, not 403, so
    another key's conversation ids cannot even be confirmed to exist."""
    conversation = await session.get(Conversation, conversation_id)
    if conversation is None or not (is_admin(request) or (
            conversation.api_key_id is not None and conversation.api_key_id == known_key(request, presented_key(request)))):
        raise NotFoundError(f"conversation {conversation_id} not found")
    return conversation


async def load_history(session: AsyncSession, conversation_id: uuid.UUID | None, request: Request) -> list[PromptMessage]:
    """The conversation's last ``HISTORY_TURNS`` messages, oldest first (read with a limit, however long it is)."""
    if conversation_id is None:
        return []
    await owned_conversation(session, conversation_id, request)
    query = (select(Message).where(Message.conversation_id == conversation_id)
             .order_by(Message.created_at.desc(), Message.id.desc()).limit(HISTORY_TURNS))
    latest = (await session.execute(query)).scalars().all()
    return [{"role": m.role, "content": m.content} for m in reversed(latest)]


def check_correction(correction: str, rating: str, state: ServiceState) -> None:
    """A correction comes with a "down" rating, and cites only documents the index holds (4xx naming them)."""
    if rating != "down":
        raise InvalidInputError("a correction is what a bad answer should have been: send it with rating 'down'")
    if not correction.strip():
        raise InvalidInputError("correction is empty")
    known = set(state.retriever.version.manifest.documents) if state.retriever else set()
    unknown = sorted({m.group(1) for m in CITATION.finditer(correction)} - known)
    if unknown:
        raise InvalidInputError(f"correction cites documents the index does not hold: {unknown}")


async def store_turn(session: AsyncSession, conversation_id: uuid.UUID | None, question: str, answer: Answer,
                     owner: str | None) -> tuple[uuid.UUID, uuid.UUID]:
    """Add the question and the answer (with how it was produced) to the conversation, creating it if needed."""
    details = {"mode": answer.mode, "adapter": answer.adapter, "index_version": answer.index_version,
               "embedder": answer.embedder, "sources": answer.sources, "cited_doc_ids": answer.cited_doc_ids,
               "usage": {"prompt_tokens": answer.prompt_tokens, "completion_tokens": answer.completion_tokens},
               "timings_ms": answer.timings_ms, "notes": answer.notes, "finish_reason": answer.finish_reason,
               "refused": answer.refused, "answerability": answer.answerability, "context": answer.context}
    if conversation_id is None:
        conversation = Conversation(api_key_id=owner)
        session.add(conversation)
        await session.flush()
        conversation_id = conversation.id
    session.add(Message(conversation_id=conversation_id, role="user", content=question))
    reply = Message(conversation_id=conversation_id, role="assistant", content=answer.text, details=details)
    session.add(reply)
    await session.flush()
    return conversation_id, reply.id


def response_for(answer: Answer, conversation_id: uuid.UUID, message_id: uuid.UUID) -> ChatResponse:
    return ChatResponse(
        conversation_id=conversation_id, message_id=message_id, answer=answer.text, mode=answer.mode,
        adapter=answer.adapter, index_version=answer.index_version, embedder=answer.embedder,
        sources=[Source(**s) for s in answer.sources], cited_doc_ids=answer.cited_doc_ids,
        usage=Usage(answer.prompt_tokens, answer.completion_tokens), timings_ms=answer.timings_ms, notes=answer.notes,
        finish_reason=answer.finish_reason, refused=answer.refused,
        answerability=AnswerabilityOut(**answer.answerability) if answer.answerability else None,
    )


class ChatController(Controller):
    path = "/v1"
    tags = ["chat"]
    guards = [requires("chat")]

    @post("/chat", summary="Answer a customer question (set stream=true for Server-Sent Events).", status_code=200,
          responses={200: ResponseSpec(data_container=ChatResponse, description="The answer, or with stream=true an "
                                       "event stream of `token` events and a final `done` event with this body.")})
    async def chat(self, data: ChatRequest, chat_service: NamedDependency[ChatService], db_session: AsyncSession,
                   sessions: NamedDependency[async_sessionmaker[AsyncSession]], request: Request) -> Response[Any]:
        history = await load_history(db_session, data.conversation_id, request)
        owner = known_key(request, presented_key(request))
        kwargs = {"mode": data.mode, "top_k": data.top_k, "filters": data.filters,
                  "max_new_tokens": data.max_tokens, "temperature": data.temperature}
        if not data.stream:
            answer = await unless_disconnected(request, chat_service.answer(data.question, history, **kwargs))
            conversation_id, message_id = await store_turn(db_session, data.conversation_id, data.question, answer, owner)
            return Response(response_for(answer, conversation_id, message_id))

        _, pieces = await chat_service.stream(data.question, history, **kwargs)

        async def events() -> AsyncIterator[dict[str, str]]:
            async for piece in stream_errors(pieces):
                if isinstance(piece, dict):  # the backend failed after the stream had started
                    yield {"event": "error", "data": json.dumps(piece)}
                    return
                if isinstance(piece, Answer):
                    # The request's session is committed when the response starts; the turn is stored after the
                    # stream ends, so it gets a session (and transaction) of its own.
                    async with sessions() as session, session.begin():
                        conversation_id, message_id = await store_turn(session, data.conversation_id, data.question,
                                                                       piece, owner)
                    final = response_for(piece, conversation_id, message_id)
                    yield {"event": "done", "data": json.dumps(to_builtins(final))}
                else:
                    yield {"event": "token", "data": json.dumps({"text": piece})}

        return ServerSentEvent(events())

    @get("/conversations/{conversation_id:uuid}", summary="A conversation's messages, a page at a time.")
    async def conversation(self, conversation_id: FromPath[uuid.UUID], request: Request, db_session: AsyncSession,
                           service_state: NamedDependency[ServiceState],
                           offset: Annotated[int, Parameter(ge=0)] = 0,
                           limit: Annotated[int | None, Parameter(ge=1)] = None) -> dict[str, Any]:
        """Messages oldest first from ``offset``; at most ``limit`` (default and cap:
        ``server.conversation_page_size``). ``next_offset`` is null on the last page."""
        conversation = await owned_conversation(db_session, conversation_id, request)
        page_size = service_state.settings.server.conversation_page_size
        limit = min(limit or page_size, page_size)
        of_it = Message.conversation_id == conversation_id
        total = (await db_session.execute(select(func.count()).select_from(Message).where(of_it))).scalar_one()
        rows = (await db_session.execute(select(Message).where(of_it).order_by(Message.created_at, Message.id)
                                         .offset(offset).limit(limit))).scalars().all()
        return {"id": str(conversation.id), "total": total, "offset": offset, "limit": limit,
                "next_offset": offset + len(rows) if offset + len(rows) < total else None,
                "messages": [{"id": str(m.id), "role": m.role, "content": m.content, "details": m.details,
                              "created_at": m.created_at.isoformat()} for m in rows]}

    @post("/chat/{conversation_id:uuid}/feedback", summary="Rate an answer (defaults to the latest one).", status_code=201)
    async def feedback(self, conversation_id: FromPath[uuid.UUID], data: FeedbackRequest, request: Request,
                       db_session: AsyncSession,
                       service_state: NamedDependency[ServiceState]) -> Response[FeedbackResponse]:
        await owned_conversation(db_session, conversation_id, request)
        query = select(Message).where(Message.conversation_id == conversation_id, Message.role == "assistant")
        if data.message_id is not None:
            query = query.where(Message.id == data.message_id)
        message = (await db_session.execute(query.order_by(Message.created_at.desc()).limit(1))).scalar_one_or_none()
        if message is None:
            what = f"message {data.message_id}" if data.message_id else "an answer"
            raise NotFoundError(f"{what} not found in conversation {conversation_id}")
        if data.correction is not None:
            check_correction(data.correction, data.rating, service_state)
        # One rating per answer: rating it again (a change of mind, a client retrying) replaces the rating.
        feedback = (await db_session.execute(select(Feedback).where(Feedback.message_id == message.id)
                                             .order_by(Feedback.created_at))).scalars().first()
        replaced = feedback is not None
        if feedback is None:
            feedback = Feedback(message_id=message.id, rating=data.rating, comment=data.comment,
                                correction=data.correction)
            db_session.add(feedback)
        else:
            feedback.rating, feedback.comment, feedback.correction = data.rating, data.comment, data.correction
        await db_session.flush()
        if service_state.monitoring is not None:
            service_state.monitoring.feedback(data.rating)
        return Response(FeedbackResponse(feedback.id, message.id, feedback.rating), status_code=200 if replaced else 201)
