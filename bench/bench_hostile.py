"""Hostile uploads under chat load: does a pathological file cost only its budget?

    python bench/bench_hostile.py [--clients 8] [--seconds 40] [--pdf-operators 200000]

Starts the real API (uvicorn on 127.0.0.1, real SmolLM2 + MiniLM), then runs two phases of the same
length with 8 chat clients and a /health poller: a baseline, and one in which an attacker uploads a
parser-exhausting PDF (a few KB that pypdf would chew on for minutes), an alias-bomb Markdown file and a
chunked oversize body, back to back. Reports chat and /health latency p50/p95 in each phase, their
ratios (attack / baseline, same run), and what each hostile request was answered. Also times the
pathological PDF parsed in-process (what one upload cost before parsing was budgeted), capped at
--inprocess-cap seconds. All traffic goes to localhost; every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path

import httpx
from bench_serving import QUESTIONS, Server
from common import ROOT, emit, percentiles

from core.settings import SAMPLE_DIR

sys.path.insert(0, str(ROOT / "tests"))
from files import ALIAS_BOMB_FRONT_MATTER, write_slow_pdf  # noqa: E402


async def phase(url: str, clients: int, seconds: float, max_tokens: int, attack=None) -> dict:
    chat_lat: list[float] = []
    health_lat: list[float] = []
    errors = 0
    attacks: list[dict] = []
    deadline = time.perf_counter() + seconds

    async def chatter(client: httpx.AsyncClient, n: int) -> None:
        nonlocal errors
        while time.perf_counter() < deadline:
            began = time.perf_counter()
            try:
                r = await client.post(f"{url}/v1/chat", json={"question": QUESTIONS[n % len(QUESTIONS)],
                                                              "max_tokens": max_tokens})
                ok = r.status_code == 200
            except httpx.HTTPError:
                ok = False
            if ok:
                chat_lat.append(time.perf_counter() - began)
            else:
                errors += 1
            n += clients

    async def health(client: httpx.AsyncClient) -> None:
        while time.perf_counter() < deadline:
            began = time.perf_counter()
            r = await client.get(f"{url}/health")
            if r.status_code == 200:
                health_lat.append(time.perf_counter() - began)
            await asyncio.sleep(0.1)

    async def attacker(client: httpx.AsyncClient) -> None:
        while time.perf_counter() < deadline:
            for name, request in attack:
                if time.perf_counter() >= deadline:
                    return
                began = time.perf_counter()
                r = await request(client)
                attacks.append({"file": name, "status": r.status_code, "seconds": round(time.perf_counter() - began, 2),
                                "detail": r.json().get("detail", "")[:160]})

    async with httpx.AsyncClient(timeout=600) as client:
        tasks = [chatter(client, i) for i in range(clients)] + [health(client)]
        if attack:
            tasks.append(attacker(client))
        await asyncio.gather(*tasks)
    out = {"chat": percentiles(chat_lat), "health": percentiles(health_lat), "chat_errors": errors}
    if attack:
        out["hostile_requests"] = attacks
    return out


def _inprocess(path: str, queue) -> None:
    from retrieval.loaders import load_file

    began = time.perf_counter()
    load_file(Path(path))
    queue.put(time.perf_counter() - began)


def inprocess_parse_seconds(path: Path, cap_s: float) -> dict:
    """The unbudgeted cost of the file (the old upload path), in a child so it can be stopped at the cap."""
    queue = multiprocessing.get_context("spawn").Queue()
    proc = multiprocessing.get_context("spawn").Process(target=_inprocess, args=(str(path), queue))
    began = time.perf_counter()
    proc.start()
    proc.join(cap_s)
    if proc.is_alive():
        proc.kill()
        proc.join()
        return {"seconds": None, "stopped_at_cap_s": cap_s}
    return {"seconds": round(queue.get() if not queue.empty() else time.perf_counter() - began, 1)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=40)
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--pdf-operators", type=int, default=200_000)
    parser.add_argument("--parse-timeout", type=float, default=10.0)
    parser.add_argument("--inprocess-cap", type=float, default=300.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        pdf = write_slow_pdf(Path(tmp) / "slow.pdf", operators=args.pdf_operators)
        pdf_bytes = pdf.read_bytes()

        def multipart(name: str, content: bytes):
            return lambda c: c.post(f"{server.url}/v1/documents", files=[("files", (name, content, "application/octet-stream"))],
                                    data={"refresh": "false"})

        def chunked(c: httpx.AsyncClient):
            async def body():
                yield b'{"documents": [{"doc_id": "big", "text": "'
                for _ in range(4000):  # 16 MB > server.max_upload_bytes (10 MB)
                    yield b"x" * 4096
            return c.post(f"{server.url}/v1/documents", content=body(), headers={"content-type": "application/json"})

        attack = [("slow.pdf", multipart("slow.pdf", pdf_bytes)),
                  ("alias-bomb.md", multipart("alias-bomb.md", ALIAS_BOMB_FRONT_MATTER.encode())),
                  ("chunked-16MB.json", chunked)]
        server = Server(Path(tmp) / "data", 8, [SAMPLE_DIR / "kb"],
                        {"TUNERAG_SERVER__PARSE_TIMEOUT_S": str(args.parse_timeout)})
        try:
            asyncio.run(phase(server.url, 2, 5, args.max_tokens))  # warm-up
            baseline = asyncio.run(phase(server.url, args.clients, args.seconds, args.max_tokens))
            under_attack = asyncio.run(phase(server.url, args.clients, args.seconds, args.max_tokens, attack))
        finally:
            server.stop()
        unbudgeted = inprocess_parse_seconds(pdf, args.inprocess_cap)
    emit("hostile", {
        "clients": args.clients, "seconds_per_phase": args.seconds, "max_tokens": args.max_tokens,
        "pdf_bytes": len(pdf_bytes), "pdf_operators": args.pdf_operators, "parse_timeout_s": args.parse_timeout,
        "pdf_parse_in_process": unbudgeted,
        "baseline": baseline, "under_attack": under_attack,
        "ratios_attack_vs_baseline": {
            "chat_p95": round(under_attack["chat"]["p95_ms"] / baseline["chat"]["p95_ms"], 2),
            "health_p95": round(under_attack["health"]["p95_ms"] / baseline["health"]["p95_ms"], 2),
            "chats_completed": round(under_attack["chat"]["n"] / max(baseline["chat"]["n"], 1), 2),
        },
    })


if __name__ == "__main__":
    main()
