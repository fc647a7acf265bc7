"""OpenAI-compatible ``POST /v1/chat/completions`` and ``GET /v1/models``, so existing clients work unchanged.

``model`` picks the generator: ``tunerag`` (the active adapter, or the base when none is active),
``base``, or an adapter id. Retrieval is on unless the request sets ``"retrieval": false``. Client system
messages follow the house system prompt (``server.client_system_messages: append``, the house rules first)
or are refused with 400 (``refuse``). ``stop`` is honoured on every engine (:mod:`service.stop`); ``n``
must be 1.

A request's size is checked before any rendering or tokenizing: at most ``server.max_messages`` messages,
``server.max_message_chars`` characters each and ``server.max_request_chars`` in all (413 naming the limit).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from litestar import Controller, Request, Response, get, post
from litestar.di import NamedDependency
from litestar.exceptions.http_exceptions import RequestEntityTooLarge
from litestar.response import ServerSentEvent

from core import artifacts
from core.errors import InvalidInputError, NotFoundError, UnsupportedRequestError
from core.settings import ServerSettings
from inference.backends import check_constraint
from service.auth import requires
from service.chat import Answer, ChatService, stream_errors
from service.disconnect import unless_disconnected
from service.schemas import ChatCompletionRequest, OpenAIMessage
from service.state import ServiceState


async def resolve_model(state: ServiceState, model: str) -> str | None:
    """The adapter to use for ``model`` (None: base), loading a known adapter on first use."""
    if model == "base":
        return None
    if model == "tunerag":
        return state.active_adapter
    try:
        artifact = artifacts.get_artifact(state.settings, "adapter", model)
    except NotFoundError:
        known = ["tunerag", "base", *(a.id for a in artifacts.list_artifacts(state.settings, "adapter"))]
        raise NotFoundError(f"unknown model {model!r}; available: {', '.join(known)}") from None
    if artifact.id not in state.backend.loaded_adapters():
        await state.backend.load_adapter(artifact.id, artifact.path / "adapter")
    return artifact.id


def response_constraint(data: ChatCompletionRequest, backend: Any) -> dict[str, Any] | None:
    """The JSON schema ``response_format`` asks the answer to match (None: free text).

    Raises:
        InvalidInputError: ``json_schema`` without a schema.
        UnsupportedRequestError: the serving engine cannot constrain its output (400 naming the setting).
    """
    fmt = data.response_format
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_schema" and fmt.json_schema is None:
        raise InvalidInputError("response_format.type json_schema needs response_format.json_schema.schema")
    constraint = {"type": "object"} if fmt.type == "json_object" else fmt.json_schema.schema  # type: ignore[union-attr]
    check_constraint(backend, constraint, f"response_format {fmt.type}")  # before retrieval, not after it
    return constraint


def check_size(messages: list[OpenAIMessage], limits: ServerSettings) -> None:
    """413 naming the limit when the messages are more or longer than the server takes (counts only)."""
    if len(messages) > limits.max_messages:
        raise RequestEntityTooLarge(detail=f"{len(messages)} messages; at most {limits.max_messages} are accepted "
                                           "(server.max_messages)")
    total = 0
    for i, message in enumerate(messages):
        if len(message.content) > limits.max_message_chars:
            raise RequestEntityTooLarge(detail=f"messages[{i}] has {len(message.content)} characters; at most "
                                               f"{limits.max_message_chars} are accepted (server.max_message_chars)")
        total += len(message.content)
    if total > limits.max_request_chars:
        raise RequestEntityTooLarge(detail=f"the messages hold {total} characters; at most {limits.max_request_chars} "
                                           "are accepted in one request (server.max_request_chars)")


def _usage(answer: Answer) -> dict[str, int]:
    return {"prompt_tokens": answer.prompt_tokens, "completion_tokens": answer.completion_tokens,
            "total_tokens": answer.prompt_tokens + answer.completion_tokens}


class OpenAIController(Controller):
    path = "/v1"
    tags = ["openai"]
    guards = [requires("chat")]

    @get("/models", summary="Models usable in chat completions.")
    async def models(self, service_state: NamedDependency[ServiceState]) -> dict[str, Any]:
        ids = ["tunerag", "base", *(a.id for a in artifacts.list_artifacts(service_state.settings, "adapter"))]
        return {"object": "list", "data": [{"id": i, "object": "model", "owned_by": "tunerag"} for i in ids]}

    @post("/chat/completions", summary="OpenAI-compatible chat completion with retrieval.", status_code=200)
    async def completions(self, data: ChatCompletionRequest, chat_service: NamedDependency[ChatService],
                          service_state: NamedDependency[ServiceState], request: Request) -> Response[Any]:
        check_size(data.messages, service_state.settings.server)
        if data.n != 1:
            raise UnsupportedRequestError(f"n must be 1: tunerag returns one choice per request; got n={data.n}")
        turns = [m for m in data.messages if m.role != "system"]
        system = [m.content for m in data.messages if m.role == "system" and m.content.strip()]
        if system and service_state.settings.server.client_system_messages == "refuse":
            raise UnsupportedRequestError("system messages are not accepted by this server "
                                          "(server.client_system_messages is 'refuse'); drop them or set it to 'append'")
        if not turns or turns[-1].role != "user":
            raise InvalidInputError("messages must end with a user message")
        history = [{"role": m.role, "content": m.content} for m in turns[:-1]]
        constraint = response_constraint(data, service_state.backend)
        adapter = await resolve_model(service_state, data.model)
        mode = ("combined" if adapter else "rag") if data.retrieval else ("ft" if adapter else "prompt")
        stop = [data.stop] if isinstance(data.stop, str) else list(data.stop or ())
        kwargs = {"mode": mode, "top_k": data.top_k, "adapter": adapter, "max_new_tokens": data.max_tokens,
                  "temperature": data.temperature, "stop": stop, "instructions": "\n\n".join(system) or None,
                  "constraint": constraint}
        completion_id, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        if not data.stream:
            answer = await unless_disconnected(request, chat_service.answer(turns[-1].content, history, **kwargs))
            return Response({
                "id": completion_id, "object": "chat.completion", "created": created, "model": data.model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": answer.text}, "finish_reason": answer.finish_reason}],
                "usage": _usage(answer),
                "tunerag": {"mode": answer.mode, "adapter": answer.adapter, "index_version": answer.index_version,
                            "sources": answer.sources, "cited_doc_ids": answer.cited_doc_ids, "notes": answer.notes,
                            "refused": answer.refused, "answerability": answer.answerability},
            })
        _, pieces = await chat_service.stream(turns[-1].content, history, **kwargs)

        def chunk(delta: dict[str, str], finish: str | None = None, **extra: Any) -> str:
            return json.dumps({"id": completion_id, "object": "chat.completion.chunk", "created": created,
                               "model": data.model, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra})

        async def events() -> AsyncIterator[str]:
            yield chunk({"role": "assistant"})
            async for piece in stream_errors(pieces):
                if isinstance(piece, dict):  # OpenAI's servers send a mid-stream failure as an error object
                    yield json.dumps({"error": {"message": piece["detail"], "type": piece["error"],
                                                "code": piece["status_code"]}})
                    return
                if isinstance(piece, Answer):
                    yield chunk({}, piece.finish_reason, usage=_usage(piece), tunerag={
                        "sources": piece.sources, "refused": piece.refused, "answerability": piece.answerability})
                else:
                    yield chunk({"content": piece})
            yield "[DONE]"

        return ServerSentEvent(events())
