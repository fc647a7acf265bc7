"""The llama.cpp serving engine on the packaged SmolLM2 GGUF: parity with transformers, LoRA export,
continuous batching with cancellation, one decoder at a time, shared-prefix reuse."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import random_lora

from core.prompt import ContextPassage, build_prompt, load_template
from core.settings import Settings, load_settings
from inference.generation import Generation, generate
from inference.llamacpp_bindings import llamacpp_available
from inference.llamacpp_engine import (
    EngineRequest,
    GenerationCancelled,
    LlamaCppEngine,
    engine_from_settings,
)

pytestmark = pytest.mark.slow

QUESTIONS = ["How do I void a label?", "Can I change the delivery address after shipping?",
             "What does the Pro plan cost?", "How do I schedule a pickup?"]
PASSAGES = [ContextPassage("ts-void-label", "Voiding a label", "Open the shipment in Parcelly and click Void label."),
            ContextPassage("billing-plans", "Plans", "Starter is free. Pro costs $29 per month.")]


@pytest.fixture(scope="module")
def real_settings(tmp_path_factory: pytest.TempPathFactory, real_cache_dir: Path) -> Settings:
    if not llamacpp_available():
        if os.environ.get("CI"):
            pytest.fail("ik-llama-cpp-python is missing in CI: make setup should have installed it")
        pytest.skip("ik-llama-cpp-python is not installed (make setup installs it)")
    return load_settings(data_dir=tmp_path_factory.mktemp("llamacpp") / "var", cache_dir=real_cache_dir)


@pytest.fixture(scope="module")
def engine(real_settings: Settings) -> Iterator[LlamaCppEngine]:
    engine = engine_from_settings(real_settings.model_copy(update={"generation": real_settings.generation.model_copy(
        update={"max_running_requests": 4, "kv_cache_tokens": 8192})}))
    yield engine
    engine.close()


def prompts(settings: Settings, tokenizer) -> list[str]:
    return [build_prompt(load_template(settings), tokenizer, q, PASSAGES) for q in QUESTIONS]


def run(engine: LlamaCppEngine, prompt: str, adapter: str | None = None, max_new: int = 24,
        on_text=None, penalize_prompt: bool = False) -> Generation | BaseException:
    done = threading.Event()
    box: list[Generation | BaseException] = []
    engine.submit(EngineRequest(engine.tokenizer(prompt, add_special_tokens=False).input_ids, adapter, max_new, 0.0, 1.0,
                                1.1, on_text=on_text or (lambda t: None),
                                on_done=lambda r: (box.append(r), done.set()), penalize_prompt=penalize_prompt))
    assert done.wait(120)
    return box[0]


def common_prefix_tokens(tokenizer, a: str, b: str) -> int:
    x, y = tokenizer(a).input_ids, tokenizer(b).input_ids
    n = 0
    while n < min(len(x), len(y)) and x[n] == y[n]:
        n += 1
    return n


def test_greedy_answers_match_transformers_on_a_fixed_prompt_set(engine: LlamaCppEngine, real_settings: Settings) -> None:
    """Nearly the same weights (transformers runs the shipped Q4_1 de-quantized, llama.cpp a Q8_0 copy of them)
    and different kernels (llama.cpp quantizes activations): the answers may part only where transformers
    itself nearly ties, i.e. the engine's token is one of its top two and within 0.5 of the best logit (a wrong
    position, rotary layout or adapter parts them with gaps of several logits). Measured agreement over 20
    questions: bench/RESULTS.md."""
    import torch

    from core.models import load_generator

    model, tokenizer = load_generator(real_settings)
    penalty = real_settings.generation.repetition_penalty
    for prompt in prompts(real_settings, engine.tokenizer):
        ours = run(engine, prompt)
        theirs = generate(model, tokenizer, [prompt], real_settings.generation, max_new_tokens=24)[0]
        assert isinstance(ours, Generation) and ours.completion_tokens == theirs.completion_tokens == 24
        a, b = tokenizer(ours.text).input_ids, tokenizer(theirs.text).input_ids
        d = common_prefix_tokens(tokenizer, ours.text, theirs.text)
        if d >= min(len(a), len(b)) - 1:  # the same answer (up to the last, possibly cut, token)
            continue
        context = tokenizer(prompt, add_special_tokens=False).input_ids + b[:d]
        with torch.no_grad():
            logits = model(torch.tensor([context])).logits[0, -1]
        for token in set(b[:d]):  # the answer-only repetition penalty both engines apply
            logits[token] = logits[token] / penalty if logits[token] > 0 else logits[token] * penalty
        top2 = torch.topk(logits, 2).indices.tolist()
        gap = float(logits.max() - logits[a[d]])
        assert a[d] in top2 and gap <= 0.5, (prompt[-80:], ours.text, theirs.text, d, gap)


def test_peft_adapter_exported_to_gguf_gives_the_same_answers(engine: LlamaCppEngine, real_settings: Settings,
                                                              tmp_path: Path) -> None:
    peft_model, tokenizer = random_lora(real_settings, tmp_path / "adapter")
    engine.load_adapter("random-lora", tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter.gguf").is_file()
    prompt = prompts(real_settings, engine.tokenizer)[0]
    # With the answer-only penalty this random adapter's first token is a near tie ("To" 30.13 vs "1" 30.05),
    # which Q4_1 vs fp32 arithmetic may flip; penalizing the prompt too (both engines) separates them.
    ours = run(engine, prompt, "random-lora", 16, penalize_prompt=True)
    both = real_settings.generation.model_copy(update={"repetition_penalty_scope": "prompt_and_answer"})
    theirs = generate(peft_model, tokenizer, [prompt], both, max_new_tokens=16)[0]
    base = run(engine, prompt, None, 16, penalize_prompt=True)
    assert ours.text != base.text, "the adapter changes the answer"
    # Q/K permutation or A/B orientation errors show up at once: the first tokens must agree.
    assert common_prefix_tokens(tokenizer, ours.text, theirs.text) >= 8, (ours.text, theirs.text)


MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@pytest.fixture(scope="module")
def f16_engine(real_settings: Settings) -> Iterator[LlamaCppEngine]:
    """The engine on an F16 copy of the GGUF: 16-bit activations, so logits can be compared with transformers'
    to a tolerance that a missing or mis-scaled LoRA module cannot hide in (Q8_0's kernel noise could)."""
    settings = real_settings.model_copy(update={"generation": real_settings.generation.model_copy(
        update={"max_running_requests": 2, "kv_cache_tokens": 4096, "llamacpp_weights": "f16"})})
    engine = engine_from_settings(settings)
    assert engine.gguf_name.endswith("f16-" + engine.gguf_name.split("f16-")[-1]), engine.gguf_name
    yield engine
    engine.close()


def test_every_lora_module_moves_llamacpp_logits_as_peft_moves_transformers(
        f16_engine: LlamaCppEngine, real_settings: Settings, tmp_path: Path) -> None:
    """One random adapter per linear module: llama.cpp's logit change (adapter minus base) must match peft's
    in direction and size. This caught ik_llama.cpp's fused up/gate op, which drops LoRAs on ffn_up and
    ffn_gate (a change of exactly 0): the served all-linear adapter lost its MLP half."""
    import numpy as np
    import torch
    from peft import LoraConfig, get_peft_model

    from core.models import load_generator

    prompt = prompts(real_settings, f16_engine.tokenizer)[0]
    ids = f16_engine.tokenizer(prompt, add_special_tokens=False).input_ids
    base_model, _ = load_generator(real_settings)
    with torch.no_grad():
        hf_base = base_model(torch.tensor([ids])).logits[0, -1].float().numpy()
    cpp_base = f16_engine.prompt_logits(ids)
    assert np.linalg.norm(cpp_base - hf_base) < 0.002 * np.linalg.norm(hf_base)
    for module in MODULES:
        model, _ = load_generator(real_settings, fresh=True)
        torch.manual_seed(1)
        peft_model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules=[module],
                                                      task_type="CAUSAL_LM"))
        with torch.no_grad():
            for name, param in peft_model.named_parameters():
                if "lora_B" in name:
                    param.normal_(0, 0.01)
        peft_model.save_pretrained(str(tmp_path / module))
        with torch.no_grad():
            hf_delta = peft_model.eval()(torch.tensor([ids])).logits[0, -1].float().numpy() - hf_base
        f16_engine.load_adapter(module, tmp_path / module)
        cpp_delta = f16_engine.prompt_logits(ids, module) - cpp_base
        ratio = float(np.linalg.norm(cpp_delta) / np.linalg.norm(hf_delta))
        corr = float(np.corrcoef(hf_delta, cpp_delta)[0, 1])
        assert corr > 0.99 and 0.9 < ratio < 1.1, (module, corr, ratio)


def test_an_adapters_refusal_gate_masks_its_unsure_refusal(engine: LlamaCppEngine, real_settings: Settings,
                                                            tmp_path: Path) -> None:
    """The adapter's recorded "refusal" is its own greedy answer: gated at 1.0 no token is sure enough and the
    answer changes at its first token; at a tiny threshold every token passes and the answer is the same."""
    import shutil

    from inference.refusal import write_refusal

    random_lora(real_settings, tmp_path / "plain")
    engine.load_adapter("plain", tmp_path / "plain")
    prompt = prompts(real_settings, engine.tokenizer)[1]
    own = run(engine, prompt, "plain", 8)
    assert isinstance(own, Generation)
    for name, min_prob in (("sure", 1e-9), ("gated", 1.0)):
        shutil.copytree(tmp_path / "plain", tmp_path / name)
        write_refusal(tmp_path / name, own.text, engine.tokenizer)
        engine.refusal_min_prob = min_prob
        try:
            engine.load_adapter(name, tmp_path / name)
        finally:
            engine.refusal_min_prob = real_settings.generation.refusal_min_prob
    assert run(engine, prompt, "sure", 8).text == own.text
    gated = run(engine, prompt, "gated", 8).text
    first = lambda text: engine.tokenizer(text, add_special_tokens=False).input_ids[0]  # noqa: E731
    assert first(gated) != first(own.text), (gated, own.text)


def test_concurrent_requests_share_one_decoder_and_cancellation_frees_slots(engine: LlamaCppEngine,
                                                                           real_settings: Settings) -> None:
    texts = prompts(real_settings, engine.tokenizer)
    results: dict[int, Generation | BaseException] = {}
    pieces_at_cancel: dict[int, int] = {}
    pieces: dict[int, int] = {}
    requests: dict[int, EngineRequest] = {}
    done = threading.Barrier(9)

    def submit(n: int) -> None:
        def on_text(_: str) -> None:
            pieces[n] = pieces.get(n, 0) + 1
            if n % 3 == 0 and pieces[n] == 2:  # every third client hangs up after two pieces
                pieces_at_cancel[n] = pieces[n]
                requests[n].cancel()

        def on_done(result: Generation | BaseException) -> None:
            results[n] = result
            threading.Thread(target=done.wait).start()

        requests[n] = EngineRequest(engine.tokenizer(texts[n % 4], add_special_tokens=False).input_ids, None, 96,
                                    0.0, 1.0, 1.1, on_text=on_text, on_done=on_done)
        engine.submit(requests[n])

    decodes_before = engine.decode_calls
    for n in range(8):
        submit(n)
    done.wait(timeout=300)
    assert engine.max_concurrent_decodes == 1, "never two llama_decode calls on one context"
    for n, result in results.items():
        if n % 3 == 0:
            assert isinstance(result, GenerationCancelled)
            assert pieces[n] <= pieces_at_cancel[n] + 1, "a cancelled request stops within one decode step"
        else:
            assert isinstance(result, Generation) and result.completion_tokens > 0
    assert len(results) == 8 and engine.stats()["running"] == 0
    # Eight requests of up to 96 tokens were decoded together: far fewer steps than one at a time.
    assert engine.decode_calls - decodes_before < 5 * 96


def test_a_request_finishing_among_others_leaves_no_hole_in_the_kv_cache(engine: LlamaCppEngine,
                                                                         real_settings: Settings) -> None:
    """Requests decoding next to a finished one's freed cells went wrong (bench/RESULTS.md, waves of 8): the
    engine compacts the cache whenever one finishes among others, so used cells are always one block."""
    texts = prompts(real_settings, engine.tokenizer)
    layout: list[tuple[int, int, int]] = []
    engine.on_step = lambda rows: layout.append((rows, *engine.kv_cells()))  # runs on the engine thread
    try:
        done = threading.Barrier(4)
        for text, max_new in zip(texts[:3], (3, 40, 40), strict=True):  # the first finishes long before the others
            engine.submit(EngineRequest(engine.tokenizer(text, add_special_tokens=False).input_ids, None, max_new, 0.0,
                                        1.0, 1.1, on_text=lambda t: None,
                                        on_done=lambda r: threading.Thread(target=done.wait).start()))
        done.wait(timeout=300)
    finally:
        engine.on_step = None
    after_finish = [(used, span) for rows, used, span in layout if rows == 2]
    assert after_finish, "the short request finished while the two others were decoding"
    assert all(used == span and used > 0 for used, span in after_finish), after_finish[:5]


def test_the_shared_system_prompt_is_prefilled_once(engine: LlamaCppEngine, real_settings: Settings) -> None:
    texts = prompts(real_settings, engine.tokenizer)
    run(engine, texts[0], max_new=2)
    run(engine, texts[1], max_new=2)  # shares the system prompt with the first: the prefix is cached now
    prefilled: list[int] = []
    original = engine._decode

    def counting(items, ctx=None):
        if ctx == engine.pctx:
            prefilled.append(len(items))
        return original(items, ctx)

    engine._decode = counting  # type: ignore[method-assign]
    try:
        run(engine, texts[2], max_new=2)
    finally:
        engine._decode = original  # type: ignore[method-assign]
    cached = len(engine._prefixes[None].tokens)
    prompt_tokens = len(engine.tokenizer(texts[2], add_special_tokens=False).input_ids)
    assert cached >= 32
    # Only the part after the cached prefix is prefilled, in calls of at most max_call_tokens.
    assert sum(prefilled) == prompt_tokens - cached
    assert len(prefilled) == -(-(prompt_tokens - cached) // engine.max_call_tokens)


def test_continuous_backend_cancels_an_abandoned_stream(engine: LlamaCppEngine, real_settings: Settings) -> None:
    from inference.backends import ContinuousBackend

    backend = ContinuousBackend(engine, engine.tokenizer, real_settings.generation)
    prompt = prompts(real_settings, engine.tokenizer)[0]

    async def scenario() -> None:
        stream = backend.stream(prompt, None, 300, None)
        await stream.__anext__()
        await stream.aclose()  # the SSE client went away
        deadline = time.time() + 10
        while engine.stats()["running"] and time.time() < deadline:
            await asyncio.sleep(0.01)
        assert engine.stats()["running"] == 0
        answer = await backend.generate(prompt, None, 4, None)
        assert answer.completion_tokens == 4 and answer.finish_reason == "length"

    asyncio.run(scenario())


def test_an_unservable_lora_rank_is_refused_with_the_fix(engine: LlamaCppEngine, real_settings: Settings,
                                                        tmp_path: Path) -> None:
    from peft import LoraConfig, get_peft_model

    from core.errors import InvalidInputError
    from core.models import load_generator

    model, _ = load_generator(real_settings, fresh=True)
    get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj"], task_type="CAUSAL_LM")).save_pretrained(
        str(tmp_path / "r4"))
    with pytest.raises(InvalidInputError, match="multiples of 8.*r=4"):
        engine.load_adapter("r4", tmp_path / "r4")
    assert "r4" not in engine.adapters


def test_api_serves_chat_and_streams_on_llamacpp_and_frees_abandoned_streams(real_settings: Settings) -> None:
    from litestar.testing import TestClient

    from service.app import create_app

    settings = real_settings.model_copy(update={"generation": real_settings.generation.model_copy(
        update={"max_new_tokens": 24, "max_running_requests": 2, "kv_cache_tokens": 8192})})
    with TestClient(app=create_app(settings)) as client:
        ready = client.get("/ready").json()
        assert ready["engine"] == "llamacpp" and ready["status"] == "ready"
        answer = client.post("/v1/chat", json={"question": "How do I void a label?", "max_tokens": 16}).json()
        assert answer["usage"]["completion_tokens"] > 0 and answer["sources"]
        with client.stream("POST", "/v1/chat", json={"question": "How do pickups work?", "stream": True,
                                                     "max_tokens": 400}) as response:
            for line in response.iter_lines():
                if line.startswith("event: token"):
                    break  # the client hangs up after the first token
        engine = client.app.state.service_state.backend.engine
        deadline = time.time() + 20
        while engine.stats()["running"] and time.time() < deadline:
            time.sleep(0.05)
        assert engine.stats()["running"] == 0, "the abandoned stream's slot was freed"
        metrics = client.get("/metrics").text
        assert "tunerag_time_to_first_token_seconds_count" in metrics and "tunerag_generation_running" in metrics


def test_a_failing_decode_fails_the_requests_in_flight_and_the_engine_goes_on(engine: LlamaCppEngine,
                                                                              real_settings: Settings) -> None:
    prompt = prompts(real_settings, engine.tokenizer)[3]
    original = engine._decode
    calls = {"n": 0}

    def flaky(items, ctx=None):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("simulated llama.cpp failure")
        return original(items, ctx)

    engine._decode = flaky  # type: ignore[method-assign]
    try:
        failed = run(engine, prompt, max_new=4)
    finally:
        engine._decode = original  # type: ignore[method-assign]
    assert isinstance(failed, RuntimeError)
    assert isinstance(run(engine, prompt, max_new=4), Generation), "the next request is served normally"
