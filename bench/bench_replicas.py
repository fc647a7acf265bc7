"""Two ``tunerag serve`` replicas on one PostgreSQL and one data directory, under chat load, through a reindex.

The packaged models (SmolLM2-135M GGUF on the llama.cpp engine, all-MiniLM-L6-v2), the sample knowledge base,
a throwaway PostgreSQL server (Debian's binaries, as in the tests). Clients send ``POST /v1/chat`` (rag mode,
short answers) round-robin over the replicas, as a load balancer would. Phases, in one run:

    alone     load on replica A only, its engine on every core       -> answers/s, errors, latency
    both      the same load spread over A and B, restarted with the cores split between them
              (``generation.threads``; two engines each on every core oversubscribe them)
                                                        -> answers/s, errors; ratio to alone
    reindex   the same load on both while A is asked for a full rebuild (any replica may run it)
              -> errors during the rebuild (target 0), which replica ran it, and how long after the job
              finished each replica served the new version (polled every 50 ms)

Usage: python bench/bench_replicas.py [--clients 4] [--seconds 30] [--max-tokens 16]
On 2 CPU cores two replicas share the same two cores as one: expect no throughput gain; the point is
zero errors and a short switch-over.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from common import ROOT, emit, free_port, percentiles, wait_ready

sys.path.insert(0, str(ROOT / "tests"))
from postgres import start_server  # noqa: E402  (the test suite's throwaway server)

QUESTIONS = ["How do I void a label?", "Where is my refund?", "How do I add a team member?",
             "Can I change the carrier after printing?", "How do I reset my password?", "What does the Pro plan cost?"]
ADMIN = {"X-API-Key": "bench-admin"}


class Replica:
    def __init__(self, name: str, env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = (log_dir / f"{name}.log").open("w")
        self.proc = subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "--port", str(self.port)],
                                     env={**env, "TUNERAG_SERVER__REPLICA_ID": name}, cwd=ROOT, stdout=self.log,
                                     stderr=subprocess.STDOUT)
        wait_ready(f"{self.url}/ready", self.proc, 600, f"replica {name}")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=120)
        self.log.close()


async def load(urls: list[str], clients: int, seconds: float, max_tokens: int, stop: asyncio.Event | None = None) -> dict:
    """Closed-loop chat load round-robin over ``urls`` for ``seconds`` (or until ``stop``)."""
    latencies: list[float] = []
    errors: dict[str, int] = {}
    sent = [0]
    deadline = time.monotonic() + seconds

    async def client(i: int, http: httpx.AsyncClient) -> None:
        while time.monotonic() < deadline and not (stop and stop.is_set()):
            url = urls[sent[0] % len(urls)]
            sent[0] += 1
            began = time.perf_counter()
            try:
                r = await http.post(f"{url}/v1/chat", json={"question": QUESTIONS[sent[0] % len(QUESTIONS)],
                                                           "mode": "rag", "max_tokens": max_tokens})
                if r.status_code == 200:
                    latencies.append(time.perf_counter() - began)
                else:
                    errors[str(r.status_code)] = errors.get(str(r.status_code), 0) + 1
            except httpx.HTTPError as exc:
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1

    began = time.monotonic()
    async with httpx.AsyncClient(headers=ADMIN, timeout=120) as http:
        await asyncio.gather(*(client(i, http) for i in range(clients)))
    elapsed = time.monotonic() - began
    return {"answers": len(latencies), "errors": errors, "error_count": sum(errors.values()),
            "seconds": round(elapsed, 1), "answers_per_s": round(len(latencies) / elapsed, 3),
            "latency": percentiles(latencies) if latencies else None}


async def reindex_under_load(a: Replica, b: Replica, clients: int, max_tokens: int) -> dict:
    async with httpx.AsyncClient(headers=ADMIN, timeout=30) as http:
        before = (await http.get(f"{b.url}/ready")).json()["index_version"]
        stop = asyncio.Event()
        traffic = asyncio.create_task(load([a.url, b.url], clients, 3600, max_tokens, stop))
        await asyncio.sleep(2)
        job = (await http.post(f"{a.url}/v1/index/rebuild")).json()
        asked = time.monotonic()
        serving: dict[str, float] = {}
        finished = None
        while len(serving) < 2 and time.monotonic() - asked < 900:
            if finished is None:
                row = (await http.get(f"{b.url}/v1/jobs/{job['id']}")).json()  # progress as B sees it
                if row["status"] in ("succeeded", "failed"):
                    finished, result = time.monotonic(), row
            for replica in (a, b):
                if replica.name not in serving:
                    version = (await http.get(f"{replica.url}/ready")).json()["index_version"]
                    if version != before:
                        serving[replica.name] = time.monotonic()
            await asyncio.sleep(0.05)
        await asyncio.sleep(2)
        stop.set()
        during = await traffic
    return {"job_status": result["status"], "ran_on": result["owner"], "attempts": result["attempts"],
            "job_seconds": round(finished - asked, 2), "version_before": before, "version_after": result["result"]["version"],
            "load_during_reindex": during,
            # Negative: the replica served the new version before B's poll saw the job row finished.
            "serving_after_job_finished_s": {name: round(t - finished, 3) for name, t in serving.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--watch-interval", type=float, default=1.0)
    parser.add_argument("--threads-per-replica", type=int, default=max(1, (os.cpu_count() or 2) // 2),
                        help="llama.cpp threads of each replica when both run (default: half the cores)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-replicas-"))
    postgres = start_server(Path(tempfile.mkdtemp(prefix="bench-pg-")))
    try:
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("TUNERAG_")},
               "TUNERAG_DATA_DIR": str(work / "shared"), "TUNERAG_SERVER__DATABASE_URL": postgres.create_database(),
               "TUNERAG_SERVER__API_KEYS": '{"bench-admin": ["chat", "admin"]}', "TUNERAG_LOG_LEVEL": "WARNING",
               "TUNERAG_SERVER__RATE_LIMIT_PER_MINUTE": "100000",
               "TUNERAG_SERVER__WATCH_INTERVAL_S": str(args.watch_interval)}
        if os.environ.get("TUNERAG_CACHE_DIR"):
            env["TUNERAG_CACHE_DIR"] = os.environ["TUNERAG_CACHE_DIR"]
        # The generator's conversion happens once, before two processes could both start it.
        subprocess.run([sys.executable, "-m", "service.cli", "models", "prepare"], cwd=ROOT, env=env, check=True,
                       capture_output=True)
        a = Replica("a", env, work)
        try:
            alone = asyncio.run(load([a.url], args.clients, args.seconds, args.max_tokens))
        finally:
            a.stop()
        split = {**env, "TUNERAG_GENERATION__THREADS": str(args.threads_per_replica)}
        a = Replica("a", split, work)
        b = Replica("b", split, work)
        try:
            both = asyncio.run(load([a.url, b.url], args.clients, args.seconds, args.max_tokens))
            reindex = asyncio.run(reindex_under_load(a, b, args.clients, args.max_tokens))
        finally:
            a.stop()
            b.stop()
    finally:
        postgres.stop()
    emit("bench_replicas", {
        "setup": {"clients": args.clients, "seconds_per_phase": args.seconds, "max_tokens": args.max_tokens,
                  "watch_interval_s": args.watch_interval, "threads_per_replica_when_both": args.threads_per_replica,
                  "database": "postgresql (throwaway, Debian binaries)"},
        "alone": alone, "both": both,
        "both_vs_alone_answers_per_s": round(both["answers_per_s"] / max(alone["answers_per_s"], 1e-9), 3),
        "reindex": reindex,
    })


if __name__ == "__main__":
    main()
