"""Serving speed of the real API: the llama.cpp continuous-batching engine (Q8_0 weights, large prompt calls)
vs the same engine on the shipped Q4_1 file (31-token prompt calls, the previous default) vs the transformers
batcher vs tunerag's remote backend on llama.cpp's own server (``xllamacpp``), with llama.cpp's server alone
on the same weights, adapter and rendered prompts as the peer, all in one run.

    python bench/bench_serving.py [--max-tokens 64] [--soak-seconds 120] [--storm-seconds 30]
    python bench/bench_serving.py --engines llamacpp,xllamacpp --skip-soak --skip-kernels   # engine choice only

Every server is a real uvicorn process on 127.0.0.1 with the packaged SmolLM2 + MiniLM, combined mode
(4 passages) and an active LoRA adapter (r=16 on q/k/v/o, random weights: speed only). For each engine:
  * single-stream decode tokens/s (streaming, concurrency 1: completion tokens / (total - time to first token)),
  * aggregate completion tokens/s at concurrency 1 and 8, their ratio, and time to first token p50/p95 at 8,
  * ``c8_vs_c1_bound``: the ratio c8/c1 would reach if decoding 8 streams cost no more than decoding one while
    each prompt's prefill stays what it costs at concurrency 1 (prefill is compute-bound on a CPU: batching
    prompts does not make them cheaper). A measured ratio near the bound means the scheduler wastes little;
for the default engine also: 0 errors at concurrency 16 for --soak-seconds, and a disconnect storm (8 clients
stream whole answers while 8 others hang up after their third token and reconnect, repeatedly). The steady
clients' throughput is compared with (a) the same 8 clients alone and (b) the same 8 clients beside 8 others
that ask for 3 tokens and read them to the end: (b) isolates what a hang-up costs beyond the request itself.
``prefill``: raw prompt throughput per decode-call size for both weight files, with the agreement of the last
token's logits with an 8-token-call reference on the shipped file (why the Q4_1 file is capped at 31).
``decode_steps``: one decode call's time with 1 or 8 rows while 8 sequences of 50 or 400 cells are cached
(why 8 streams cost far more than one here: attention spans every cached cell).
Peer: the same GGUF decoded greedily by llama.cpp in-process, batch 1, on the same prompt (no server, no
Python scheduler): the ceiling our engine is measured against. llama-cpp-python is measured too when it
is installed (it has no wheel for this machine's glibc; `pip install llama-cpp-python` builds it, ~12 min).
All load goes to localhost only; every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from common import ROOT, emit, free_port, percentiles, wait_ready

from core.settings import SAMPLE_DIR, load_settings

QUESTIONS = [json.loads(line)["question"] for line in (SAMPLE_DIR / "eval.jsonl").read_text().splitlines()]


class Server:
    def __init__(self, data_dir: Path, batch_size: int, sources: list[Path], extra_env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "TUNERAG_DATA_DIR": str(data_dir), "TUNERAG_GENERATION__BATCH_SIZE": str(batch_size),
               "TUNERAG_GENERATION__BATCH_WAIT_MS": "20", "TUNERAG_LOG_LEVEL": "WARNING",
               "TUNERAG_RETRIEVAL__SOURCES": json.dumps([str(s) for s in sources]), **(extra_env or {})}
        self.proc = subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "--port", str(self.port)], env=env,
                                     cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_ready(f"{self.url}/ready", self.proc, 300, "server")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=120)


async def stream_chat(client: httpx.AsyncClient, url: str, question: str, max_tokens: int,
                      hang_up_after: int | None = None) -> dict:
    """One streaming chat; returns latency parts and completion tokens (or hangs up after N token events)."""
    began = time.perf_counter()
    first, events, tokens = None, 0, 0
    async with client.stream("POST", f"{url}/v1/chat", json={"question": question, "max_tokens": max_tokens,
                                                            "stream": True}) as r:
        if r.status_code != 200:
            raise httpx.HTTPStatusError("bad status", request=r.request, response=r)
        async for line in r.aiter_lines():
            if line.startswith("event: token"):
                events += 1
                if first is None:
                    first = time.perf_counter() - began
                if hang_up_after is not None and events >= hang_up_after:
                    return {"hung_up": True}
            if line.startswith("data: ") and '"usage"' in line:
                tokens = json.loads(line[6:])["usage"]["completion_tokens"]
    total = time.perf_counter() - began
    return {"ttft": first or total, "total": total, "tokens": tokens}


async def run_load(one, concurrency: int, indexes: list[int]) -> dict:
    """``concurrency`` clients each calling ``one(client, n)`` for the next ``n`` of ``indexes`` until none is
    left; throughput, per-stream decode rate and latency percentiles over the answers."""
    queue = list(indexes)
    rows, errors = [], 0

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal errors
        while queue:
            n = queue.pop()
            try:
                rows.append(await one(client, n))
            except httpx.HTTPError:
                errors += 1

    began = time.perf_counter()
    async with httpx.AsyncClient(timeout=600) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    wall = time.perf_counter() - began
    tokens = sum(r["tokens"] for r in rows)
    decode = [r["tokens"] / (r["total"] - r["ttft"]) for r in rows if r["total"] > r["ttft"] and r["tokens"] > 1]
    return {"concurrency": concurrency, "requests": len(indexes), "errors": errors, "wall_s": round(wall, 1),
            "tokens_per_s": round(tokens / wall, 1), "mean_tokens": round(tokens / max(len(rows), 1), 1),
            "per_stream_decode_tokens_per_s": round(sum(decode) / max(len(decode), 1), 1),
            "time_to_first_token": percentiles([r["ttft"] for r in rows]),
            "total_latency": percentiles([r["total"] for r in rows])}


async def load(url: str, concurrency: int, requests: int, max_tokens: int) -> dict:
    return await run_load(lambda client, n: stream_chat(client, url, QUESTIONS[n % len(QUESTIONS)], max_tokens),
                          concurrency, list(range(requests)))


async def soak(url: str, concurrency: int, seconds: float, max_tokens: int) -> dict:
    deadline = time.perf_counter() + seconds
    ok = errors = tokens = 0

    async def worker(client: httpx.AsyncClient, n: int) -> None:
        nonlocal ok, errors, tokens
        while time.perf_counter() < deadline:
            try:
                # Await first: `tokens += await ...` would read `tokens` before the await and lose updates.
                got = (await stream_chat(client, url, QUESTIONS[n % len(QUESTIONS)], max_tokens))["tokens"]
                tokens += got
                ok += 1
            except httpx.HTTPError:
                errors += 1
            n += concurrency

    async with httpx.AsyncClient(timeout=600) as client:
        await asyncio.gather(*(worker(client, i) for i in range(concurrency)))
    return {"concurrency": concurrency, "seconds": seconds, "completed": ok, "errors": errors,
            "tokens_per_s": round(tokens / seconds, 1)}


async def storm(url: str, steady: int, rude: int, seconds: float, max_tokens: int, polite: bool = False) -> dict:
    """Steady clients' throughput while ``rude`` clients repeatedly hang up after their third token (``polite``:
    they ask for 3 tokens instead and read the answer to its end)."""
    deadline = time.perf_counter() + seconds
    steady_tokens = hangups = errors = 0

    async def good(client: httpx.AsyncClient, n: int) -> None:
        nonlocal steady_tokens, errors
        while time.perf_counter() < deadline:
            try:
                got = (await stream_chat(client, url, QUESTIONS[n % len(QUESTIONS)], max_tokens))["tokens"]
                steady_tokens += got
            except httpx.HTTPError:
                errors += 1
            n += steady

    async def bad(n: int) -> None:
        nonlocal hangups
        while time.perf_counter() < deadline:
            async with httpx.AsyncClient(timeout=600) as own:  # a fresh connection each time, closed on hang-up
                if polite:
                    await stream_chat(own, url, QUESTIONS[n % len(QUESTIONS)], 3)
                else:
                    await stream_chat(own, url, QUESTIONS[n % len(QUESTIONS)], max_tokens * 4, hang_up_after=3)
            hangups += 1
            n += rude

    async with httpx.AsyncClient(timeout=600) as client:
        await asyncio.gather(*(good(client, i) for i in range(steady)), *(bad(100 + i) for i in range(rude)))
    return {"steady_clients": steady, "other_clients": rude, "others": "polite" if polite else "hang up",
            "seconds": seconds, "others_requests": hangups,
            "errors": errors, "steady_tokens_per_s": round(steady_tokens / seconds, 1)}


def make_adapter(data_dir: Path) -> str:
    """A random-weight r=16 LoRA on the real generator, stored as the active adapter artifact (speed only)."""
    import torch
    from peft import LoraConfig, get_peft_model

    from core import artifacts
    from core.models import load_generator

    settings = load_settings(data_dir=data_dir)
    model, _ = load_generator(settings, fresh=True)
    peft_model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                                                  task_type="CAUSAL_LM"))
    torch.manual_seed(0)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.01)
    workdir = artifacts.run_dir(settings, "adapter", "adapter-bench")
    peft_model.save_pretrained(str(workdir / "adapter"))
    artifact = artifacts.finalize(settings, "adapter", "adapter-bench", {"created_at": artifacts.utc_now(),
                                                                         "stage": "sft"}, keep=["adapter"])
    artifacts.activate(settings, "adapter", artifact.id)
    return artifact.id


def default_weights() -> Path:
    """The GGUF file the llama.cpp engine runs with the default settings (converted once, cached)."""
    from core.models import generator_gguf_path
    from inference.llamacpp_weights import engine_weights

    settings = load_settings()
    return engine_weights(settings, generator_gguf_path(settings)).path  # type: ignore[arg-type]


def weights_settings(weights: str):
    settings = load_settings()
    return settings.model_copy(update={"generation": settings.generation.model_copy(
        update={"max_running_requests": 1, "llamacpp_weights": weights})})


def prefill_once(engine, ids: list[int], call: int) -> tuple[float, np.ndarray]:
    """Prefill ``ids`` on sequence 0 of the engine's (idle) decode context in ``call``-token calls: seconds and
    the last token's logits."""
    engine.api.seq_rm(engine.ctx, 0, -1, -1)
    began = time.perf_counter()
    row = engine._decode_tokens(ids, 0, call=call, logits_last=True)
    return time.perf_counter() - began, engine._logits(engine.ctx, row).copy()


def prefill_calls(prompt: str) -> dict:
    """Prompt tokens/s per decode-call size, both weight files, and last-logit agreement with 8-token calls."""
    from inference.llamacpp_engine import engine_from_settings

    out: dict = {}
    reference = None
    for weights in ("original", "q8_0"):
        engine = engine_from_settings(weights_settings(weights))
        try:
            ids = engine.tokenizer(prompt, add_special_tokens=False).input_ids
            if reference is None:
                reference = prefill_once(engine, ids, 8)[1]
            rows = {}
            for call in (31, 64, 256):
                best = min(prefill_once(engine, ids, call)[0] for _ in range(3))
                logits = prefill_once(engine, ids, call)[1]
                rows[f"call_{call}"] = {"tokens_per_s": round(len(ids) / best, 1), "logits_corr_vs_original_call_8":
                                        round(float(np.corrcoef(logits, reference)[0, 1]), 4)}
            out[weights] = {"file": engine.gguf_name, "engine_call_tokens": engine.max_call_tokens, **rows}
        finally:
            engine.close()
    out["prompt_tokens"] = len(ids)
    return out


def decode_steps(rows: tuple[int, ...] = (1, 8), cells: tuple[int, ...] = (50, 400)) -> dict:
    """Why batching 8 streams gains little here: the time of one decode call with ``rows`` sequences while 8
    sequences of ``cells`` KV cells each sit in the context. Without flash attention (it asserts on
    multi-sequence batches in this wheel) every row attends over every used cell of every sequence."""
    from inference.llamacpp_engine import engine_from_settings

    settings = weights_settings("q8_0")
    engine = engine_from_settings(settings.model_copy(update={"generation": settings.generation.model_copy(
        update={"max_running_requests": 8})}))
    out: dict = {}
    try:
        for length in cells:
            for seq in range(8):
                engine.api.seq_rm(engine.ctx, seq, -1, -1)
                engine._decode_tokens([1000 + (seq * 7 + i) % 30000 for i in range(length)], seq)
            for n in rows:
                times = []
                for step in range(12):
                    began = time.perf_counter()
                    engine._decode([(1000 + step, length + step, seq, True) for seq in range(n)])
                    times.append(time.perf_counter() - began)
                for seq in range(n):
                    engine.api.seq_rm(engine.ctx, seq, length, -1)
                ms = float(np.median(times[2:])) * 1000
                out[f"{n}_rows_{8 * length}_cells"] = {"step_ms": round(ms, 2), "tokens_per_s": round(n / ms * 1000, 1)}
    finally:
        engine.close()
    return out


def peer_llamacpp(prompt: str, max_tokens: int, weights: str) -> dict:
    """Raw llama.cpp (same wheel, same GGUF, same prompt tokens, the engine's call size): greedy batch-1
    decode, no server."""
    from inference.llamacpp_engine import engine_from_settings

    engine = engine_from_settings(weights_settings(weights))
    try:
        ids = engine.tokenizer(prompt, add_special_tokens=False).input_ids
        prefill, logits = prefill_once(engine, ids, engine.max_call_tokens)
        pos = len(ids)
        began = time.perf_counter()
        for _ in range(max_tokens):
            engine._decode([(int(np.argmax(logits)), pos, 0, True)])
            pos, logits = pos + 1, engine._logits(engine.ctx, 0)
        decode = time.perf_counter() - began
    finally:
        engine.close()
    return {"weights": weights, "prompt_tokens": len(ids), "prefill_s": round(prefill, 3),
            "prefill_tokens_per_s": round(len(ids) / prefill, 1), "decode_tokens_per_s": round(max_tokens / decode, 1)}


def peer_llama_cpp_python(prompt: str, max_tokens: int) -> dict:
    try:
        from llama_cpp import Llama
    except ImportError:
        return {"status": "not installed (pip install llama-cpp-python builds it from source, ~12 min)"}
    from core.models import generator_gguf_path

    llm = Llama(model_path=str(generator_gguf_path(load_settings())), n_ctx=4096, n_threads=os.cpu_count(), verbose=False)
    began = time.perf_counter()
    out = llm(prompt, max_tokens=max_tokens, temperature=0.0)
    return {"tokens_per_s_incl_prefill": round(out["usage"]["completion_tokens"] / (time.perf_counter() - began), 1)}


def sample_prompt(data_dir: Path) -> str:
    """A combined-mode prompt with 4 passages from the sample KB, as the server builds it."""
    from transformers import AutoTokenizer

    from core.models import resolve_generator
    from core.prompt import build_prompt, load_template
    from retrieval.search import open_retriever

    settings = load_settings(data_dir=data_dir)
    tokenizer = AutoTokenizer.from_pretrained(resolve_generator(settings).location)
    retriever = open_retriever(settings)
    passages = [r.to_passage() for r in retriever.search(QUESTIONS[0], k=4)]
    return build_prompt(load_template(settings), tokenizer, QUESTIONS[0], passages)


class Peer:
    """llama.cpp's own server (bench/xllamacpp_server.py) on a GGUF, optionally with a LoRA, in its own process."""

    def __init__(self, gguf: Path, lora: Path | None = None, parallel: int = 8) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, str(ROOT / "bench" / "xllamacpp_server.py"), str(gguf), str(self.port),
               "--parallel", str(parallel), *(["--lora", str(lora)] if lora else [])]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_ready(f"{self.url}/health", self.proc, 120, "xllamacpp server")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=60)


async def stream_completion(client: httpx.AsyncClient, url: str, prompt: str, max_tokens: int, lora: bool,
                            repetition_penalty: float) -> dict:
    """One streamed /v1/completions on llama.cpp's server (one SSE chunk per token), greedy, the LoRA on."""
    began, first, tokens = time.perf_counter(), None, 0
    body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True, "cache_prompt": True,
            "repeat_penalty": repetition_penalty,
            **({"lora": [{"id": 0, "scale": 1.0}]} if lora else {})}
    async with client.stream("POST", f"{url}/v1/completions", json=body) as r:
        if r.status_code != 200:
            raise httpx.HTTPStatusError("bad status", request=r.request, response=r)
        async for line in r.aiter_lines():
            if line.startswith("data: ") and line != "data: [DONE]" and json.loads(line[6:])["choices"][0].get("text"):
                tokens += 1
                first = first or time.perf_counter() - began
    total = time.perf_counter() - began
    return {"ttft": first or total, "total": total, "tokens": tokens}


async def peer_load(url: str, prompts: list[str], concurrency: int, requests: int, max_tokens: int, lora: bool,
                    offset: int = 0) -> dict:
    """``load`` for the peer: the same questions' prompts as tunerag renders them, sent straight to llama.cpp.
    ``offset`` keeps each phase on prompts the server has not seen (its prompt cache would answer a repeated
    prompt's prefill for free, which tunerag's engine, caching only the shared system prefix, does not)."""
    penalty = load_settings().generation.repetition_penalty
    return await run_load(lambda client, n: stream_completion(client, url, prompts[n % len(prompts)], max_tokens,
                                                              lora, penalty),
                          concurrency, list(range(offset, offset + requests)))


def served_prompts(data_dir: Path, n: int) -> list[str]:
    """The combined-mode prompts (4 passages) the server builds for the first ``n`` benchmark questions."""
    from transformers import AutoTokenizer

    from core.models import resolve_generator
    from core.prompt import build_prompt, load_template
    from retrieval.search import open_retriever

    settings = load_settings(data_dir=data_dir)
    tokenizer = AutoTokenizer.from_pretrained(resolve_generator(settings).location)
    retriever = open_retriever(settings)
    return [build_prompt(load_template(settings), tokenizer, q, [r.to_passage() for r in retriever.search(q, k=4)],
                         max_tokens=settings.generation.max_context_tokens) for q in QUESTIONS[:n]]


def exported_lora(data_dir: Path, adapter_id: str) -> Path:
    """The adapter's GGUF export (what the llama.cpp engine loads; the peer loads the same file)."""
    from transformers import AutoConfig

    from core import artifacts
    from core.models import resolve_generator
    from inference.gguf_lora import LoraShapes, export_lora_gguf

    settings = load_settings(data_dir=data_dir)
    shapes = LoraShapes.from_config(AutoConfig.from_pretrained(resolve_generator(settings).location))
    return export_lora_gguf(artifacts.get_artifact(settings, "adapter", adapter_id).path / "adapter", shapes)


ENGINES = {  # name -> server environment ("xllamacpp": tunerag's remote backend on llama.cpp's own server)
    "llamacpp": {"TUNERAG_GENERATION__ENGINE": "llamacpp"},
    "xllamacpp": {"TUNERAG_SERVER__GENERATION_BACKEND": "openai", "TUNERAG_SERVER__OPENAI_DIALECT": "llamacpp"},
    "llamacpp_q4_1_31": {"TUNERAG_GENERATION__ENGINE": "llamacpp", "TUNERAG_GENERATION__LLAMACPP_WEIGHTS": "original"},
    "transformers": {"TUNERAG_GENERATION__ENGINE": "transformers"},
}


def c8_bound(c1: dict, max_tokens: int) -> float:
    """c8/c1 if 8 streams decoded for the price of one and prompts cost what they cost at concurrency 1."""
    first = c1["time_to_first_token"]["p50_ms"] / 1000
    decode = c1["total_latency"]["p50_ms"] / 1000 - first
    return round((first + decode) / (first + decode / 8), 2)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--requests", type=int, default=16, help="requests at concurrency 8 (4x fewer at 1)")
    parser.add_argument("--soak-seconds", type=float, default=120)
    parser.add_argument("--storm-seconds", type=float, default=30)
    parser.add_argument("--engines", default=",".join(ENGINES), help="comma-separated subset of " + ",".join(ENGINES))
    parser.add_argument("--skip-kernels", action="store_true", help="skip the prefill / decode-step / raw-peer sections")
    parser.add_argument("--skip-soak", action="store_true", help="skip the soak and disconnect-storm sections")
    args = parser.parse_args()
    result: dict = {"max_tokens": args.max_tokens, "mode": "combined", "passages": 4}
    with tempfile.TemporaryDirectory() as tmp:
        for engine in args.engines.split(","):
            data = Path(tmp) / engine
            adapter = make_adapter(data)
            env, peer = dict(ENGINES[engine]), None
            if engine == "xllamacpp":  # llama.cpp's server on the engine's own weights and the adapter's export
                peer = Peer(default_weights(), exported_lora(data, adapter))
                env["TUNERAG_SERVER__OPENAI_BASE_URL"] = peer.url
            server = Server(data, 8, [SAMPLE_DIR / "kb"], env)
            try:
                ready = httpx.get(f"{server.url}/ready").json()
                assert ready["active_adapter"] == adapter, ready
                asyncio.run(load(server.url, 2, 2, 8))  # warm-up
                row: dict = {"c1": asyncio.run(load(server.url, 1, max(4, args.requests // 4), args.max_tokens)),
                             "c8": asyncio.run(load(server.url, 8, args.requests, args.max_tokens))}
                row["c8_vs_c1_throughput"] = round(row["c8"]["tokens_per_s"] / row["c1"]["tokens_per_s"], 2)
                row["c8_vs_c1_bound"] = c8_bound(row["c1"], args.max_tokens)
                if engine == "llamacpp" and not args.skip_soak:
                    row["soak_c16"] = asyncio.run(soak(server.url, 16, args.soak_seconds, args.max_tokens))
                    alone = asyncio.run(storm(server.url, 8, 0, args.storm_seconds, args.max_tokens))
                    polite = asyncio.run(storm(server.url, 8, 8, args.storm_seconds, args.max_tokens, polite=True))
                    stormy = asyncio.run(storm(server.url, 8, 8, args.storm_seconds, args.max_tokens))
                    row["disconnect_storm"] = {
                        "alone": alone, "beside_polite_3_token_clients": polite, "with_hang_ups": stormy,
                        "steady_ratio_vs_alone": round(stormy["steady_tokens_per_s"] / alone["steady_tokens_per_s"], 3),
                        "steady_ratio_vs_polite": round(stormy["steady_tokens_per_s"] / polite["steady_tokens_per_s"], 3)}
                    metrics = httpx.get(f"{server.url}/metrics").text
                    row["metrics_exposed"] = sorted({line.split("{")[0].split(" ")[0] for line in metrics.splitlines()
                                                     if line.startswith("tunerag_generation") or
                                                     line.startswith("tunerag_time")})
                if peer is not None:  # the peer alone, on the prompts tunerag renders for the same questions
                    prompts = served_prompts(data, len(QUESTIONS))
                    # tunerag's phases above sent QUESTIONS[0 : requests] through this server: the peer alone
                    # gets questions after those, distinct per phase, so no prompt is in its cache.
                    n1, base = max(4, args.requests // 4), args.requests + 8
                    asyncio.run(peer_load(peer.url, prompts, 2, 2, 8, True, offset=len(prompts) - 2))  # warm-up
                    result["peer_xllamacpp"] = {
                        "weights": default_weights().name, "prompts": "distinct per phase (no whole-prompt cache hits)",
                        "c1": asyncio.run(peer_load(peer.url, prompts, 1, n1, args.max_tokens, True, offset=base)),
                        "c8": asyncio.run(peer_load(peer.url, prompts, 8, args.requests, args.max_tokens, True,
                                                    offset=base + n1))}
                result[engine] = row
            finally:
                server.stop()
                if peer is not None:
                    peer.stop()
        prompt = sample_prompt(Path(tmp) / args.engines.split(",")[0])
    if not args.skip_kernels:
        result["prefill"] = prefill_calls(prompt)
        result["decode_steps"] = decode_steps()
        result["peer_llamacpp_raw"] = {w: peer_llamacpp(prompt, args.max_tokens, w) for w in ("q8_0", "original")}
        result["peer_llama_cpp_python"] = peer_llama_cpp_python(prompt, args.max_tokens)
    ratios = {}
    peer = result.get("peer_xllamacpp")
    for name in ("llamacpp", "xllamacpp"):
        if peer and name in result:
            for c in ("c1", "c8"):
                ratios[f"{name}_{c}_throughput_vs_llamacpp_server"] = round(
                    result[name][c]["tokens_per_s"] / peer[c]["tokens_per_s"], 2)
            ratios[f"{name}_c8_ttft_p50_s"] = round(result[name]["c8"]["time_to_first_token"]["p50_ms"] / 1000, 2)
    if peer:
        ratios["llamacpp_server_c8_vs_c1"] = round(peer["c8"]["tokens_per_s"] / peer["c1"]["tokens_per_s"], 2)
    ours = result.get("llamacpp")
    for name in ("llamacpp_q4_1_31", "transformers"):
        if ours and name in result:
            before = result[name]
            ratios[f"single_stream_decode_vs_{name}"] = round(ours["c1"]["per_stream_decode_tokens_per_s"]
                                                              / before["c1"]["per_stream_decode_tokens_per_s"], 2)
            ratios[f"c1_throughput_vs_{name}"] = round(ours["c1"]["tokens_per_s"] / before["c1"]["tokens_per_s"], 2)
            ratios[f"c8_throughput_vs_{name}"] = round(ours["c8"]["tokens_per_s"] / before["c8"]["tokens_per_s"], 2)
            ratios[f"c8_ttft_p50_vs_{name}"] = round(ours["c8"]["time_to_first_token"]["p50_ms"]
                                                     / before["c8"]["time_to_first_token"]["p50_ms"], 2)
    if ours and "peer_llamacpp_raw" in result:
        ratios["single_stream_decode_vs_raw_llamacpp"] = round(ours["c1"]["per_stream_decode_tokens_per_s"]
                                                               / result["peer_llamacpp_raw"]["q8_0"]["decode_tokens_per_s"], 2)
    result["ratios"] = ratios
    emit("serving", result)


if __name__ == "__main__":
    main()
