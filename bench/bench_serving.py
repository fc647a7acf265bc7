"""Chat latency of the real API (uvicorn on 127.0.0.1, real SmolLM2 + MiniLM), with and without dynamic batching.

    python bench/bench_serving.py [--requests 24] [--max-tokens 32]

For concurrency 1, 4 and 16: total latency p50/p95 of non-streaming chats, throughput and the error
count, once with dynamic batching (batch_size 8, 20 ms window) and once one-at-a-time (batch_size 1).
Time to first token is measured on streaming chats (streams are decoded one at a time in this version,
so batching does not change them). Finally, chats sent while a full index rebuild runs: all must
succeed. All load goes to localhost only; every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from common import ROOT, emit, percentiles, sample_kb_copies

from core.settings import SAMPLE_DIR

QUESTIONS = [json.loads(line)["question"] for line in (SAMPLE_DIR / "eval.jsonl").read_text().splitlines()]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, data_dir: Path, batch_size: int, sources: list[Path], extra_env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "TUNERAG_DATA_DIR": str(data_dir), "TUNERAG_GENERATION__BATCH_SIZE": str(batch_size),
               "TUNERAG_GENERATION__BATCH_WAIT_MS": "20", "TUNERAG_LOG_LEVEL": "WARNING",
               "TUNERAG_RETRIEVAL__SOURCES": json.dumps([str(s) for s in sources]), **(extra_env or {})}
        self.proc = subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "--port", str(self.port)], env=env,
                                     cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 300
        while time.time() < deadline:
            try:
                if httpx.get(f"{self.url}/ready", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError("server exited during start-up")
            time.sleep(0.5)
        raise RuntimeError("server not ready after 300 s")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=120)


async def chat_load(url: str, concurrency: int, requests: int, max_tokens: int, stream: bool) -> dict:
    latencies, first_tokens, errors, tokens = [], [], 0, 0
    queue = list(range(requests))

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal errors, tokens
        while queue:
            n = queue.pop()
            body = {"question": QUESTIONS[n % len(QUESTIONS)], "max_tokens": max_tokens, "stream": stream}
            began = time.perf_counter()
            try:
                if stream:
                    first = None
                    async with client.stream("POST", f"{url}/v1/chat", json=body) as r:
                        async for line in r.aiter_lines():
                            if first is None and line.startswith("event: token"):
                                first = time.perf_counter() - began
                            if line.startswith("data: ") and '"usage"' in line:
                                tokens += json.loads(line[6:])["usage"]["completion_tokens"]
                        if r.status_code != 200:
                            errors += 1
                            continue
                    first_tokens.append(first if first is not None else time.perf_counter() - began)
                else:
                    r = await client.post(f"{url}/v1/chat", json=body)
                    if r.status_code != 200:
                        errors += 1
                        continue
                    tokens += r.json()["usage"]["completion_tokens"]
                latencies.append(time.perf_counter() - began)
            except httpx.HTTPError:
                errors += 1

    began = time.perf_counter()
    async with httpx.AsyncClient(timeout=600) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    wall = time.perf_counter() - began
    out = {"concurrency": concurrency, "requests": requests, "errors": errors, "wall_s": round(wall, 1),
           "requests_per_s": round(len(latencies) / wall, 3), "tokens_per_s": round(tokens / wall, 1),
           "total_latency": percentiles(latencies)}
    if stream:
        out["time_to_first_token"] = percentiles(first_tokens)
    return out


async def during_rebuild(url: str, concurrency: int, max_tokens: int, limit_s: float = 600) -> dict:
    async with httpx.AsyncClient(timeout=600) as client:
        job = (await client.post(f"{url}/v1/index/rebuild")).json()
        before = (await client.get(f"{url}/ready")).json()["index_version"]
        ok = errors = 0
        versions: set[str] = set()
        done = asyncio.Event()

        async def watch() -> None:
            deadline = time.time() + limit_s
            while time.time() < deadline:
                status = (await client.get(f"{url}/v1/jobs/{job['id']}")).json()["status"]
                if status in ("succeeded", "failed"):
                    break
                await asyncio.sleep(0.2)
            done.set()

        async def worker(n: int) -> None:
            nonlocal ok, errors
            while not done.is_set():
                r = await client.post(f"{url}/v1/chat", json={"question": QUESTIONS[n % len(QUESTIONS)],
                                                              "max_tokens": max_tokens})
                if r.status_code == 200:
                    ok += 1
                    versions.add(r.json()["index_version"])
                else:
                    errors += 1
                n += concurrency

        began = time.perf_counter()
        await asyncio.gather(watch(), *(worker(i) for i in range(concurrency)))
        final = (await client.get(f"{url}/v1/jobs/{job['id']}")).json()
        after = (await client.get(f"{url}/ready")).json()["index_version"]
    return {"job_status": final["status"], "rebuild_chunks": (final.get("result") or {}).get("chunks"),
            "rebuild_s": round(time.perf_counter() - began, 1), "chats_ok": ok, "chats_failed": errors,
            "index_versions_seen": sorted(versions), "before": before, "after": after}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=24)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--copies", type=int, default=6, help="extra KB copies, so the rebuild takes a while")
    args = parser.parse_args()
    result: dict = {"max_tokens": args.max_tokens, "requests_per_level": args.requests}
    with tempfile.TemporaryDirectory() as tmp:
        sources = [SAMPLE_DIR / "kb", sample_kb_copies(Path(tmp), args.copies)]
        for label, batch_size in (("batching", 8), ("one_at_a_time", 1)):
            server = Server(Path(tmp) / label, batch_size, sources)
            try:
                asyncio.run(chat_load(server.url, 2, 4, args.max_tokens, False))  # warm-up
                result[label] = [asyncio.run(chat_load(server.url, c, max(args.requests, 2 * c), args.max_tokens, False))
                                 for c in (1, 4, 16)]
                if label == "batching":
                    result["streaming"] = [asyncio.run(chat_load(server.url, c, max(20, c), args.max_tokens, True))
                                           for c in (1, 4, 16)]
                    result["during_full_rebuild"] = asyncio.run(during_rebuild(server.url, 4, args.max_tokens))
            finally:
                server.stop()
    for b, s in zip(result["batching"], result["one_at_a_time"], strict=True):
        b["throughput_vs_one_at_a_time"] = round(b["requests_per_s"] / s["requests_per_s"], 2)
    emit("serving", result)


if __name__ == "__main__":
    main()
