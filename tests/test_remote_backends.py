"""The OpenAI-compatible generation backend and the LLM judge, against a fake server (httpx MockTransport)."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from core.errors import NotFoundError
from core.settings import load_settings
from eval.judge import Judge, parse_score
from inference.backends import BackendError, OpenAIBackend


def fake_completions(request: httpx.Request) -> httpx.Response:
    body = json.loads(request.content)
    if body["model"] == "broken":
        return httpx.Response(500, text="boom")
    if body["stream"]:
        chunks = [{"choices": [{"text": t}]} for t in ("Hi ", "there!")]
        text = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"
        return httpx.Response(200, text=text, headers={"content-type": "text/event-stream"})
    return httpx.Response(200, json={"choices": [{"text": f" answer from {body['model']} "}],
                                     "usage": {"prompt_tokens": 12, "completion_tokens": 3}})


def backend() -> OpenAIBackend:
    settings = load_settings()
    remote = OpenAIBackend("http://vllm.test", "secret", "base-model", settings.generation)
    remote._client = httpx.AsyncClient(base_url="http://vllm.test", transport=httpx.MockTransport(fake_completions))
    return remote


def test_openai_backend_generates_streams_and_names_adapters_as_models() -> None:
    async def run() -> None:
        remote = backend()
        result = await remote.generate("<prompt>", None, 5, None)
        assert (result.text, result.prompt_tokens, result.completion_tokens) == ("answer from base-model", 12, 3)
        with pytest.raises(NotFoundError, match="not loaded"):
            await remote.generate("<prompt>", "adapter-x", 5, 0.0)
        await remote.load_adapter("adapter-x", None)  # type: ignore[arg-type]
        await remote.load_adapter("broken", None)  # type: ignore[arg-type]
        assert (await remote.generate("<prompt>", "adapter-x", 5, 0.0)).text == "answer from adapter-x"
        assert [p async for p in remote.stream("<prompt>", None, 5, None)] == ["Hi ", "there!"]
        assert remote.loaded_adapters() == ["adapter-x", "broken"]
        with pytest.raises(BackendError, match="answered 500"):
            await remote.generate("<prompt>", "broken", 5, None)
        await remote.close()

    asyncio.run(run())


@pytest.mark.parametrize(("reply", "score"), [("Score: 5", 1.0), ("score=1", 0.0), ("SCORE: 3.", 0.5), ("great", None)])
def test_judge_scores_are_parsed_and_scaled(reply: str, score: float | None) -> None:
    assert parse_score(reply) == score


def test_judge_sends_question_reference_and_answer() -> None:
    seen: list[dict] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content))
        return httpx.Response(200, json={"choices": [{"message": {"content": "Score: 4"}}]})

    cfg = load_settings(eval={"judge_base_url": "http://judge.test", "judge_model": "big"}).eval
    judge = Judge(cfg, client=httpx.Client(base_url="http://judge.test", transport=httpx.MockTransport(handler)))
    assert judge.score_many(["Q?"], ["REF"], ["ANS"]) == [0.75]
    user = seen[0]["messages"][1]["content"]
    assert seen[0]["model"] == "big" and "Q?" in user and "REF" in user and "ANS" in user
    with pytest.raises(ValueError, match="judge_base_url"):
        Judge(load_settings().eval)


# --- a remote that is down or silent, over real sockets ------------------------------------------------------

def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the block ends: connections are refused


@pytest.mark.parametrize("silent", [False, True])
def test_a_remote_backend_that_is_down_or_silent_is_503_or_504_and_ready_says_so(settings, silent: bool) -> None:
    import socket
    import threading

    from litestar.testing import TestClient

    from service.app import create_app

    listener = None
    if silent:  # accepts connections, never answers
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        port = listener.getsockname()[1]
        accepted: list[socket.socket] = []
        threading.Thread(target=lambda: [accepted.append(listener.accept()[0]) for _ in range(16)], daemon=True).start()
    else:
        port = _closed_port()
    remote = settings.model_copy(update={"server": settings.server.model_copy(update={
        "generation_backend": "openai", "openai_base_url": f"http://127.0.0.1:{port}", "openai_timeout_s": 1.0})})
    expected = 504 if silent else 503
    try:
        with TestClient(app=create_app(remote)) as c:
            ready = c.get("/ready")
            assert ready.status_code == 503 and ready.json()["status"] == "unavailable", ready.text
            assert f"127.0.0.1:{port}" in ready.json()["problem"]
            for path, body in (("/v1/chat", {"question": "How do I void a label?"}),
                               ("/v1/chat", {"question": "How do I void a label?", "stream": True}),
                               ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Void a label?"}]}),
                               ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Void?"}], "stream": True})):
                r = c.post(path, json=body)
                if body.get("stream"):  # the stream has started: the failure is its last event
                    assert r.status_code == 200 and f"127.0.0.1:{port}" in r.text and str(expected) in r.text, r.text[:300]
                    continue
                assert r.status_code == expected, (path, body, r.status_code, r.text[:300])
                assert f"127.0.0.1:{port}" in r.json()["detail"]
    finally:
        if listener is not None:
            listener.close()


def test_a_failure_after_the_stream_started_becomes_a_last_error_item() -> None:
    from inference.backends import BackendUnavailableError
    from service.chat import stream_errors

    async def pieces():
        yield "Hi "
        raise BackendUnavailableError("the generation backend at http://x is unreachable (ReadError)")

    async def collect():
        return [p async for p in stream_errors(pieces())]

    out = asyncio.run(collect())
    assert out[0] == "Hi " and out[1] == {"status_code": 503, "error": "BackendUnavailableError",
                                          "detail": "the generation backend at http://x is unreachable (ReadError)"}
