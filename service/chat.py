"""Answering a customer: choose the mode's pieces, retrieve, build the prompt, generate, cite.

Modes (the same four the evaluation compares):
  prompt    base generator, style system prompt with few-shot examples, no retrieval
  rag       base generator + retrieved context
  ft        active adapter, no retrieval
  combined  active adapter + retrieved context (the default)

When no adapter is active, ``ft`` and ``combined`` fall back to the base generator and say so in
``notes``; the response always reports the adapter and index versions actually used.

With an answerability verifier active (:mod:`retrieval.answerability`), the retrieval modes judge the
retrieved context before generating: below the verifier's threshold the answer is its house-style refusal,
with no generation at all. ``refused`` says an answer is a refusal (the verifier's or the model's own,
recognised by ``eval.refusal_phrase``); ``answerability`` carries the verifier's score when it ran.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from contextlib import aclosing
from dataclasses import asdict, dataclass, field
from typing import Any

import anyio

from core.errors import InvalidInputError, TuneragError
from core.prompt import CITATION, MODES, Message, Mode, build_prompt, load_template
from retrieval.answerability import Answerability, Verifier, pair_text
from retrieval.search import Retriever, SearchResult
from service.state import ServiceState
from service.stop import StopScanner


@dataclass
class Plan:
    """The pieces one answer will use, fixed when the request starts."""

    mode: Mode
    adapter: str | None
    retriever: Retriever | None
    notes: list[str] = field(default_factory=list)
    verifier: Verifier | None = None


@dataclass
class Answer:
    text: str
    mode: Mode
    adapter: str | None
    index_version: str | None
    embedder: str | None
    sources: list[dict[str, Any]]
    cited_doc_ids: list[str]
    prompt_tokens: int
    completion_tokens: int
    timings_ms: dict[str, float]
    notes: list[str]
    prompt: str
    finish_reason: str = "stop"
    refused: bool = False
    answerability: dict[str, Any] | None = None
    # The passages exactly as the prompt showed them (stored with the turn: feedback export trains on them).
    context: list[dict[str, str]] | None = None


@dataclass
class Prepared:
    """A turn ready to generate: its plan, retrieved results, prompt, timings so far and the verifier's
    judgement (None when no verifier ran). ``refuses``: the verifier said the context cannot answer."""

    plan: Plan
    results: list[SearchResult] | None
    prompt: str
    timings: dict[str, float]
    judged: Answerability | None = None
    question: str = ""

    @property
    def refuses(self) -> bool:
        return self.judged is not None and not self.judged.answerable


def plan(state: ServiceState, mode: str, adapter: str | None = None) -> Plan:
    """Resolve a mode (and optionally an explicit adapter) against what is loaded right now."""
    if mode not in MODES:
        raise InvalidInputError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
    notes: list[str] = []
    use_adapter = mode in ("ft", "combined")
    chosen = adapter if adapter is not None else (state.active_adapter if use_adapter else None)
    if use_adapter and chosen is None:
        notes.append(f"mode {mode}: no fine-tuned adapter is active, answering with the base generator")
    retriever = state.retriever if mode in ("rag", "combined") else None
    if mode in ("rag", "combined") and retriever is None:
        raise InvalidInputError("retrieval is not available: no index is loaded")
    if mode == "combined" and not state.embedder_is_finetuned():
        notes.append("mode combined: the index uses the base embedder (no fine-tuned embedder is active)")
    return Plan(mode, chosen, retriever, notes, state.verifier if retriever is not None else None)  # type: ignore[arg-type]


def cited_ids(text: str, allowed: Sequence[str]) -> list[str]:
    """Doc ids cited as ``[doc-id]`` in ``text`` that were in the context, in order of first citation."""
    allowed_set = set(allowed)
    seen: dict[str, None] = {}
    for match in CITATION.finditer(text):
        if match.group(1) in allowed_set:
            seen.setdefault(match.group(1), None)
    return list(seen)


def _source(r: SearchResult) -> dict[str, Any]:
    return {"doc_id": r.doc_id, "title": r.title, "heading_path": list(r.heading_path),
            "snippet": " ".join(r.text.split())[:240], "score": round(r.score, 4), "chunk_id": r.chunk_id}


async def stream_errors(pieces: AsyncIterator[str | Answer]) -> AsyncIterator[str | Answer | dict[str, Any]]:
    """``pieces``, and if the backend fails mid-stream a last item ``{"status_code", "error", "detail"}``
    (a streaming response cannot change its status any more: the client gets the error as an event)."""
    try:
        async for piece in pieces:
            yield piece
    except TuneragError as exc:
        yield {"status_code": exc.status_code, "error": type(exc).__name__, "detail": str(exc)}


class ChatService:
    """Retrieval + prompt + generation for one turn. Stateless; the controller stores the conversation."""

    def __init__(self, state: ServiceState) -> None:
        self.state = state
        self.template = load_template(state.settings)

    async def _retrieve(self, retriever: Retriever | None, question: str, top_k: int | None,
                        filters: dict[str, Any] | None) -> list[SearchResult] | None:
        if retriever is None:
            return None
        return await anyio.to_thread.run_sync(lambda: retriever.search(question, k=top_k, filters=filters))

    def _prompt(self, p: Plan, question: str, results: list[SearchResult] | None, history: Sequence[Message],
                instructions: str | None = None) -> str:
        passages = [r.to_passage() for r in results] if results is not None else None
        try:
            return build_prompt(self.template, self.state.tokenizer, question, passages, history,
                                with_examples=p.mode == "prompt", instructions=instructions,
                                max_tokens=self.state.settings.generation.max_context_tokens)
        except ValueError as exc:
            raise InvalidInputError(str(exc)) from None

    async def prepare(self, question: str, history: Sequence[Message], mode: str, top_k: int | None,
                      filters: dict[str, Any] | None, adapter: str | None = None,
                      instructions: str | None = None) -> Prepared:
        """Plan, retrieve, judge answerability (when a verifier is active) and build the prompt."""
        if not question or not question.strip():
            raise InvalidInputError("question must not be empty")
        p = plan(self.state, mode, adapter)
        began = time.perf_counter()
        results = await self._retrieve(p.retriever, question, top_k, filters)
        timings = {"retrieval": (time.perf_counter() - began) * 1000}
        judged = None
        if p.verifier is not None and results is not None:
            verifier, passages = p.verifier, [pair_text(r.title, r.text) for r in results]
            began = time.perf_counter()
            judged = await anyio.to_thread.run_sync(lambda: verifier.judge(question, passages))
            timings["verifier"] = (time.perf_counter() - began) * 1000
            if not judged.answerable:
                return Prepared(p, results, "", timings, judged, question)
        # Rendering and tokenizing cost grows with the history a client sends: never on the event loop.
        prompt = await anyio.to_thread.run_sync(self._prompt, p, question, results, history, instructions)
        return Prepared(p, results, prompt, timings, judged, question)

    def _refusal(self, ready: Prepared, began: float) -> Answer:
        """The verifier's refusal: no generation, nothing cited."""
        assert ready.judged is not None and ready.plan.verifier is not None
        return self._answer(ready, ready.plan.verifier.refusal, 0, 0,
                            {**ready.timings, "generation": 0.0, "total": (time.perf_counter() - began) * 1000}, "stop",
                            refused=True)

    def _count_tokens(self, *texts: str) -> list[int]:
        return [len(self.state.tokenizer(t, add_special_tokens=False).input_ids) for t in texts]

    def _answer(self, ready: Prepared, text: str, prompt_tokens: int, completion_tokens: int,
                timings: dict[str, float], finish_reason: str, refused: bool | None = None) -> Answer:
        p, results = ready.plan, ready.results
        context_ids = [r.doc_id for r in results or []]
        cited = cited_ids(text, context_ids)
        # Cited documents first, then the rest of what was retrieved.
        ordered = sorted(results or [], key=lambda r: (r.doc_id not in cited, cited.index(r.doc_id) if r.doc_id in cited else 0))
        version = p.retriever.version if p.retriever else None
        phrase = self.state.settings.eval.refusal_phrase.lower()
        if refused is None:
            refused = bool(phrase) and phrase in text.lower()
        if self.state.monitoring is not None:  # numbers only, computed after the answer, off the loop
            self.state.monitoring.observe(ready.question, refused)
        return Answer(text, p.mode, p.adapter, version.name if version else None,
                      version.manifest.embedder_id if version else None, [_source(r) for r in ordered], cited,
                      prompt_tokens, completion_tokens, {k: round(v, 1) for k, v in timings.items()},
                      p.notes, ready.prompt, finish_reason, refused=refused,
                      answerability=ready.judged.to_json() if ready.judged else None,
                      context=None if results is None else [asdict(r.to_passage()) for r in results])

    async def answer(self, question: str, history: Sequence[Message] = (), mode: str = "combined",
                     top_k: int | None = None, filters: dict[str, Any] | None = None, *,
                     adapter: str | None = None, max_new_tokens: int | None = None,
                     temperature: float | None = None, stop: Sequence[str] = (),
                     instructions: str | None = None, constraint: dict | None = None) -> Answer:
        if stop:  # the stream stops the generation at the stop sequence, on every backend
            _, pieces = await self.stream(question, history, mode, top_k, filters, adapter=adapter,
                                          max_new_tokens=max_new_tokens, temperature=temperature, stop=stop,
                                          instructions=instructions, constraint=constraint)
            async with aclosing(pieces):
                async for piece in pieces:
                    if isinstance(piece, Answer):
                        return piece
            raise RuntimeError("the answer stream ended without an answer")  # pragma: no cover
        began = time.perf_counter()
        ready = await self.prepare(question, history, mode, top_k, filters, adapter, instructions)
        if ready.refuses:
            return self._refusal(ready, began)
        gen_began = time.perf_counter()
        out = await self.state.backend.generate(ready.prompt, ready.plan.adapter, max_new_tokens, temperature,
                                                **({"constraint": constraint} if constraint is not None else {}))
        generation_ms = (time.perf_counter() - gen_began) * 1000
        return self._answer(ready, out.text, out.prompt_tokens, out.completion_tokens,
                            {**ready.timings, "generation": generation_ms, "total": (time.perf_counter() - began) * 1000},
                            out.finish_reason)

    async def stream(self, question: str, history: Sequence[Message] = (), mode: str = "combined",
                     top_k: int | None = None, filters: dict[str, Any] | None = None, *,
                     adapter: str | None = None, max_new_tokens: int | None = None,
                     temperature: float | None = None, stop: Sequence[str] = (),
                     instructions: str | None = None, constraint: dict | None = None,
                     ) -> tuple[Plan, AsyncIterator[str | Answer]]:
        """Plan and retrieve now (so errors surface before streaming starts); yield text pieces, then the Answer.

        With ``stop``, the answer ends before the first stop sequence and the generation is cancelled there.
        """
        began = time.perf_counter()
        ready = await self.prepare(question, history, mode, top_k, filters, adapter, instructions)
        p, prompt = ready.plan, ready.prompt

        async def refusal() -> AsyncIterator[str | Answer]:
            answer = self._refusal(ready, began)
            yield answer.text
            yield answer

        async def pieces() -> AsyncIterator[str | Answer]:
            parts: list[str] = []
            first_token_ms = None
            gen_began = time.perf_counter()
            scanner = StopScanner(stop)
            generated = self.state.backend.stream(prompt, p.adapter, max_new_tokens, temperature,
                                                  **({"constraint": constraint} if constraint is not None else {}))
            async with aclosing(generated):  # leaving early (a stop) cancels the generation now
                async for raw in generated:
                    piece = scanner.feed(raw)
                    if piece:
                        if first_token_ms is None:
                            first_token_ms = (time.perf_counter() - began) * 1000
                        parts.append(piece)
                        yield piece
                    if scanner.stopped:
                        break
            if tail := scanner.flush():
                parts.append(tail)
                yield tail
            text = "".join(parts).strip()
            prompt_tokens, completion_tokens = await anyio.to_thread.run_sync(self._count_tokens, prompt, text)
            # The stream does not carry the EOS; an answer that used the whole budget was cut by it.
            budget = max_new_tokens or self.state.settings.generation.max_new_tokens
            finish = "stop" if scanner.stopped or completion_tokens < budget else "length"
            yield self._answer(ready, text, prompt_tokens, completion_tokens, {
                **ready.timings, "first_token": first_token_ms or 0.0,
                "generation": (time.perf_counter() - gen_began) * 1000, "total": (time.perf_counter() - began) * 1000},
                finish)

        return p, (refusal() if ready.refuses else pieces())
