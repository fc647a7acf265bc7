"""The remote generation backend against a real llama.cpp server: xllamacpp (llama.cpp's own C++ server,
in-process, on 127.0.0.1) serving the packaged SmolLM2 GGUF with a LoRA, driven through tunerag's API."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from helpers import free_port, random_lora
from litestar.testing import TestClient

from core import artifacts
from core.models import generator_gguf_path
from core.settings import Settings, load_settings

pytestmark = pytest.mark.slow
ADMIN = "admin-key"
H = {"Authorization": f"Bearer {ADMIN}"}


def xllamacpp():
    try:
        import xllamacpp as x
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("xllamacpp is missing in CI: make setup installs it")
        pytest.skip("xllamacpp is not installed (make setup installs it)")
    return x


def random_adapter(settings: Settings) -> artifacts.Artifact:
    """The fixed random all-linear LoRA (helpers.random_lora), stored as a finished adapter artifact."""
    random_lora(settings, artifacts.run_dir(settings, "adapter", "remote-lora") / "adapter")
    return artifacts.finalize(settings, "adapter", "remote-lora", {"created_at": artifacts.utc_now(), "stage": "sft"},
                              keep=["adapter"])


@pytest.fixture(scope="module")
def remote(tmp_path_factory: pytest.TempPathFactory, real_cache_dir: Path, tiny_embedder_dir: Path) -> Iterator[tuple]:
    """(settings pointing tunerag at the server, the server's URL, the adapter artifact)."""
    x = xllamacpp()
    from transformers import AutoConfig

    from core.models import resolve_generator
    from inference.gguf_lora import LoraShapes, export_lora_gguf

    local = load_settings(data_dir=tmp_path_factory.mktemp("remote") / "var", cache_dir=real_cache_dir)
    local = local.model_copy(update={"models": local.models.model_copy(update={"embedder": str(tiny_embedder_dir)})})
    adapter = random_adapter(local)
    shapes = LoraShapes.from_config(AutoConfig.from_pretrained(resolve_generator(local).location))
    lora_file = export_lora_gguf(adapter.path / "adapter", shapes)
    port = free_port()
    params = x.CommonParams()
    params.model.path = str(generator_gguf_path(local))
    params.n_ctx, params.n_parallel, params.port = 4096, 2, port
    params.cpuparams.n_threads = params.cpuparams_batch.n_threads = 2
    params.lora_adapters = [x.CommonAdapterLoraInfo(str(lora_file), 0.0)]
    params.lora_init_without_apply = True
    params.endpoint_slots = True
    server = x.Server(params)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.2)
    settings = local.model_copy(update={
        "generation": local.generation.model_copy(update={"max_new_tokens": 24}),
        "server": local.server.model_copy(update={
            "generation_backend": "openai", "openai_base_url": url, "openai_dialect": "llamacpp",
            "api_keys": {ADMIN: ["chat", "admin"]}, "rate_limit_per_minute": 1000})})
    yield settings, url, adapter
    del server


def raw_completion(url: str, prompt: str, lora_scale: float) -> str:
    body = {"prompt": prompt, "max_tokens": 24, "temperature": 0, "repeat_penalty": 1.1, "cache_prompt": True,
            "lora": [{"id": 0, "scale": lora_scale}]}
    return httpx.post(f"{url}/v1/completions", json=body, timeout=120).json()["choices"][0]["text"].strip()


def test_chat_stream_and_per_request_lora_through_a_real_llamacpp_server(remote: tuple) -> None:
    settings, url, adapter = remote
    from service.app import create_app

    with TestClient(app=create_app(settings)) as client:
        ready = client.get("/ready").json()
        assert ready["status"] == "ready", ready
        base = client.post("/v1/chat", json={"question": "How do I void a label?", "mode": "rag"}, headers=H)
        assert base.status_code == 200, base.text
        assert base.json()["answer"] and base.json()["usage"]["completion_tokens"] > 0
        with client.stream("POST", "/v1/chat", json={"question": "How do I void a label?", "mode": "rag",
                                                     "stream": True}, headers=H) as response:
            events = [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: ")]
        assert response.status_code == 200
        tokens = [e["text"] for e in events[:-1] if "text" in e]
        assert len(tokens) > 3 and "".join(tokens).strip() == events[-1]["answer"]
        # (not compared with the plain answer: llama.cpp's server reuses the cached prompt, whose different
        # prefill batches may flip a near tie even under greedy decoding)

        r = client.post(f"/v1/adapters/{adapter.id}/activate", headers=H)
        assert r.status_code == 200, r.text
        tuned = client.post("/v1/chat", json={"question": "How do I void a label?", "mode": "combined"}, headers=H)
        assert tuned.status_code == 200, tuned.text
        assert tuned.json()["adapter"] == adapter.id
        # The per-request lora list reached the server: the answer is the server's own with the LoRA at scale 1,
        # and not its answer without it.
        prompt = tuned.json().get("prompt")
        if prompt is None:  # the API does not echo prompts: rebuild the one the service rendered
            from transformers import AutoTokenizer

            from core.models import resolve_generator
            from core.prompt import build_prompt, load_template
            from retrieval.search import open_retriever

            tokenizer = AutoTokenizer.from_pretrained(resolve_generator(settings).location)
            results = open_retriever(settings, settings.paths.index_dir).search("How do I void a label?")
            prompt = build_prompt(load_template(settings), tokenizer, "How do I void a label?",
                                  [x.to_passage() for x in results], max_tokens=settings.generation.max_context_tokens)
        with_lora, without = raw_completion(url, prompt, 1.0), raw_completion(url, prompt, 0.0)
        assert with_lora != without, "the random LoRA changes the server's answer"
        # Cached-prompt prefills may flip near ties, so: much nearer the server's LoRA answer than its base one.
        from difflib import SequenceMatcher

        near = SequenceMatcher(None, tuned.json()["answer"], with_lora).ratio()
        far = SequenceMatcher(None, tuned.json()["answer"], without).ratio()
        assert near > 0.8 and near > far + 0.2, (tuned.json()["answer"], with_lora, without)


def test_a_dropped_stream_cancels_the_remote_generation(remote: tuple) -> None:
    settings, url, _ = remote
    from inference.loader import load_engine

    loaded = load_engine(settings)

    async def scenario() -> None:
        stream = loaded.backend.stream("<|im_start|>user\nWrite a very long story.<|im_end|>\n<|im_start|>assistant\n",
                                       None, 2000, 0.0)
        await stream.__anext__()
        await stream.__anext__()
        async with httpx.AsyncClient() as client:
            busy = (await client.get(f"{url}/slots")).json()
            assert any(s.get("is_processing") for s in busy), busy  # 2,000 tokens asked: it is generating
            await stream.aclose()  # the client went away
            deadline = time.time() + 3
            while time.time() < deadline:
                slots = (await client.get(f"{url}/slots")).json()
                if not any(s.get("is_processing") for s in slots):
                    return
                await asyncio.sleep(0.1)
        raise AssertionError(f"the server is still generating: {slots}")

    try:
        asyncio.run(scenario())
    finally:
        asyncio.run(loaded.backend.close())


def test_response_format_json_schema_is_honoured_by_the_llamacpp_server(remote: tuple) -> None:
    settings, _, _ = remote
    from service.app import create_app

    schema = {"type": "object", "properties": {"answer": {"type": "string"}, "doc_id": {"type": "string"}},
              "required": ["answer", "doc_id"]}
    body = {"messages": [{"role": "user", "content": "How do I void a label?"}], "max_tokens": 80,
            "response_format": {"type": "json_schema", "json_schema": {"name": "reply", "schema": schema}}}
    with TestClient(app=create_app(settings)) as client:
        r = client.post("/v1/chat/completions", json=body, headers=H)
        assert r.status_code == 200, r.text
        content = r.json()["choices"][0]["message"]["content"]
        plain = client.post("/v1/chat/completions", json=body | {"response_format": {"type": "text"}}, headers=H)
    if r.json()["choices"][0]["finish_reason"] == "stop":
        parsed = json.loads(content)
        assert set(parsed) >= {"answer", "doc_id"} and all(isinstance(parsed[k], str) for k in ("answer", "doc_id"))
    else:  # cut by max_tokens: still JSON as far as it goes
        assert content.lstrip().startswith("{") and '"answer"' in content, content
    assert not plain.json()["choices"][0]["message"]["content"].lstrip().startswith("{")  # the schema did it
