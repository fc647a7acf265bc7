"""Request and response bodies of the API (msgspec structs: validated on input, documented in OpenAPI)."""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

from advanced_alchemy.extensions.litestar import SQLAlchemyDTO, SQLAlchemyDTOConfig
from msgspec import Meta, Struct

from core.prompt import DOC_ID_MAX_LENGTH, DOC_ID_RE, Mode
from service.db import Job

TopK = Annotated[int, Meta(ge=1, le=50)]
MaxTokens = Annotated[int, Meta(ge=1, le=2048)]
Temperature = Annotated[float, Meta(ge=0.0, le=2.0)]
Question = Annotated[str, Meta(min_length=1, max_length=4000)]


class ChatRequest(Struct, forbid_unknown_fields=True):
    question: Question
    conversation_id: uuid.UUID | None = None
    mode: Mode = "combined"
    top_k: TopK | None = None
    filters: dict[str, str | list[str]] | None = None
    stream: bool = False
    max_tokens: MaxTokens | None = None
    temperature: Temperature | None = None


class Source(Struct):
    doc_id: str
    title: str
    heading_path: list[str]
    snippet: str
    score: float
    chunk_id: int


class Usage(Struct):
    prompt_tokens: int
    completion_tokens: int


class AnswerabilityOut(Struct):
    """The verifier's judgement of the retrieved context: answered when ``score >= threshold``."""

    score: float
    threshold: float
    verifier: str


class ChatResponse(Struct):
    conversation_id: uuid.UUID
    message_id: uuid.UUID
    answer: str
    mode: Mode
    adapter: str | None
    index_version: str | None
    embedder: str | None
    sources: list[Source]
    cited_doc_ids: list[str]
    usage: Usage
    timings_ms: dict[str, float]
    notes: list[str]
    finish_reason: Literal["stop", "length"] = "stop"
    refused: bool = False
    answerability: AnswerabilityOut | None = None


class FeedbackRequest(Struct, forbid_unknown_fields=True):
    rating: Literal["up", "down"]
    message_id: uuid.UUID | None = None
    comment: Annotated[str, Meta(max_length=4000)] | None = None
    # The answer it should have been (with a "down" rating); its [doc-id] citations must name indexed documents.
    correction: Annotated[str, Meta(min_length=1, max_length=8000)] | None = None


class FeedbackResponse(Struct):
    id: uuid.UUID
    message_id: uuid.UUID
    rating: str


# --- OpenAI-compatible chat completions -------------------------------------------------------------------

class OpenAIMessage(Struct):
    role: Literal["system", "user", "assistant"]
    content: str


StopSequence = Annotated[str, Meta(max_length=200)]


class JsonSchemaFormat(Struct):
    """OpenAI's ``response_format.json_schema``: a name and the JSON schema the answer must match."""

    schema: dict[str, Any]
    name: str = "answer"
    strict: bool | None = None


class ResponseFormat(Struct):
    """OpenAI's ``response_format``: ``text`` (default), ``json_object`` or ``json_schema``."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class ChatCompletionRequest(Struct):
    """OpenAI's request body; fields tunerag does not know are accepted and ignored, as OpenAI servers do.

    Message counts and lengths are checked against the settings (``server.max_messages``, ...) in the handler,
    before anything is rendered or tokenized.
    """

    messages: Annotated[list[OpenAIMessage], Meta(min_length=1)]
    model: str = "tunerag"
    n: Annotated[int, Meta(ge=1)] = 1
    stop: StopSequence | Annotated[list[StopSequence], Meta(max_length=4)] | None = None
    stream: bool = False
    max_tokens: MaxTokens | None = None
    temperature: Temperature | None = None
    retrieval: bool = True
    top_k: TopK | None = None
    response_format: ResponseFormat | None = None


# --- documents, jobs, artifacts ---------------------------------------------------------------------------

class DocumentIn(Struct, forbid_unknown_fields=True):
    doc_id: Annotated[str, Meta(min_length=1, max_length=DOC_ID_MAX_LENGTH, pattern=DOC_ID_RE.pattern)]
    text: Annotated[str, Meta(min_length=1)]
    title: str | None = None
    format: Literal["markdown", "text", "html"] = "markdown"


class DocumentsIn(Struct, forbid_unknown_fields=True):
    documents: Annotated[list[DocumentIn], Meta(min_length=1, max_length=500)]
    refresh: bool = True


class JobDTO(SQLAlchemyDTO[Job]):
    """Jobs are returned straight from the database model."""

    config = SQLAlchemyDTOConfig()


class ArtifactOut(Struct):
    id: str
    kind: str
    active: bool
    loaded: bool
    manifest: dict[str, Any]


EvalSystem = Literal["prompt", "rag", "ft", "combined", "rag+verifier", "combined+verifier"]


class EvalRequest(Struct, forbid_unknown_fields=True):
    limit: Annotated[int, Meta(ge=1)] | None = None
    systems: list[EvalSystem] | None = None


