"""The OpenAI-compatible generation backend and the LLM judge, against a fake server (httpx MockTransport)."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from core.settings import load_settings
from eval.judge import Judge, parse_score
from service.backends import BackendError, OpenAIBackend


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
        assert (await remote.generate("<prompt>", "adapter-x", 5, 0.0)).text == "answer from adapter-x"
        assert [p async for p in remote.stream("<prompt>", None, 5, None)] == ["Hi ", "there!"]
        await remote.load_adapter("adapter-x", None)  # type: ignore[arg-type]
        assert remote.loaded_adapters() == ["adapter-x"]
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
