"""Two real ``tunerag serve`` processes on one PostgreSQL database and one data directory: a job asked on one
runs once, is seen from both, and both serve its index; conversations and the active adapter are shared; a
replica killed with SIGKILL mid-job has its job re-run by the other while the previous index keeps serving."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import free_port, make_tiny_adapter

from core.settings import load_settings

pytestmark = pytest.mark.slow

ROOT = Path(__file__).parent.parent
H = {"X-API-Key": "admin-key"}
WATCH_S, LEASE_S = 0.5, 3.0
#: What "B serves it within a few seconds" means here: the watch interval plus an index load, with room.
FOLLOW_DEADLINE_S = 10.0


class Replica:
    """One ``tunerag serve`` process (its log in ``log``)."""

    def __init__(self, name: str, env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log_dir / f"replica-{name}.log"
        self._log = self.log.open("a")
        self.proc = subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "--port", str(self.port)],
                                     env={**env, "TUNERAG_SERVER__REPLICA_ID": name}, cwd=ROOT, stdout=self._log,
                                     stderr=subprocess.STDOUT)
        until(lambda: self._ready(), 120, f"replica {name} ready", self)

    def _ready(self) -> bool:
        assert self.proc.poll() is None, f"replica {self.name} exited: {self.log.read_text()[-3000:]}"
        try:
            return httpx.get(f"{self.url}/ready", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def get(self, path: str) -> httpx.Response:
        return httpx.get(f"{self.url}{path}", headers=H, timeout=30)

    def post(self, path: str, body: dict | None = None) -> httpx.Response:
        return httpx.post(f"{self.url}{path}", json=body, headers=H, timeout=60)

    def ready(self) -> dict[str, Any]:
        return self.get("/ready").json()

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=60)
        self._log.close()


def until(check: Callable[[], Any], timeout: float, what: str, replica: Replica | None = None) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    log = replica.log.read_text()[-3000:] if replica else ""
    raise AssertionError(f"not within {timeout:.0f} s: {what}\n{log}")


@pytest.fixture
def cluster_env(tmp_path: Path, postgres_url: str, tiny_generator_dir: Path, tiny_embedder_dir: Path) -> dict[str, str]:
    docs = tmp_path / "kb"
    docs.mkdir()
    rng = random.Random(0)
    words = ["label", "shipping", "refund", "carrier", "invoice", "account", "password", "team", "plan", "export", "import", "webhook"]
    for i in range(80):  # enough text for a rebuild of a few seconds on the tiny embedder: time to kill it
        (docs / f"doc{i:03d}.md").write_text(f"# Topic {i}\n\n" + " ".join(rng.choice(words) for _ in range(1200)))
    return {**{k: v for k, v in os.environ.items() if not k.startswith("TUNERAG_")},
            "TUNERAG_DATA_DIR": str(tmp_path / "shared"), "TUNERAG_CACHE_DIR": str(tmp_path / "cache"),
            "TUNERAG_MODELS__GENERATOR": str(tiny_generator_dir), "TUNERAG_MODELS__EMBEDDER": str(tiny_embedder_dir),
            "TUNERAG_RETRIEVAL__SOURCES": json.dumps([str(docs)]), "TUNERAG_GENERATION__MAX_NEW_TOKENS": "6",
            "TUNERAG_SERVER__DATABASE_URL": postgres_url,
            "TUNERAG_SERVER__API_KEYS": json.dumps({"admin-key": ["chat", "admin"]}),
            "TUNERAG_SERVER__JOB_LEASE_S": str(LEASE_S), "TUNERAG_SERVER__JOB_POLL_S": "0.2",
            "TUNERAG_SERVER__WATCH_INTERVAL_S": str(WATCH_S), "TUNERAG_LOG_LEVEL": "INFO",
            # The tests poll every 0.1 s: the per-key limit (120/min) would answer 429 to a slow machine's polls.
            "TUNERAG_SERVER__RATE_LIMIT_PER_MINUTE": "100000"}


@pytest.fixture
def replicas(cluster_env: dict[str, str], tmp_path: Path) -> Iterator[tuple[Replica, Replica]]:
    started: list[Replica] = []
    try:
        started.append(Replica("a", cluster_env, tmp_path))  # builds the first index version
        started.append(Replica("b", cluster_env, tmp_path))
        yield started[0], started[1]
    finally:
        for replica in started:
            replica.stop(signal.SIGKILL)


def versions(env: dict[str, str]) -> list[str]:
    return sorted(p.name for p in (Path(env["TUNERAG_DATA_DIR"]) / "index" / "versions").iterdir()
                  if not p.name.startswith("."))


def test_replicas_share_jobs_conversations_the_adapter_and_every_index_version(
        replicas: tuple[Replica, Replica], cluster_env: dict[str, str]) -> None:
    a, b = replicas
    assert a.ready()["index_version"] == b.ready()["index_version"] == "v000001"

    # An upload asked on A: one job, visible from B, run once by one replica; both then serve its version.
    upload = a.post("/v1/documents", {"documents": [{"doc_id": "replica-doc", "text": "Zebra crossings are free."}]})
    assert upload.status_code == 202, upload.text
    job_id = upload.json()["job_id"]
    job = until(lambda: (j := b.get(f"/v1/jobs/{job_id}").json())["status"] in ("succeeded", "failed") and j,
                60, "the upload's job finished (seen from B)")
    finished_at = time.monotonic()
    assert job["status"] == "succeeded" and job["attempts"] == 1 and job["owner"] in ("a", "b"), job
    new_version = job["result"]["version"]
    assert new_version == "v000002" and versions(cluster_env) == ["v000001", "v000002"]
    for replica in (a, b):
        until(lambda r=replica: r.ready()["index_version"] == new_version, FOLLOW_DEADLINE_S,
              f"replica {replica.name} serves {new_version}", replica)
    followed_s = time.monotonic() - finished_at
    listed = {d["doc_id"] for d in b.get("/v1/documents").json()}
    assert "replica-doc" in listed, (followed_s, sorted(listed)[:5])

    # A conversation started on A continues on B.
    first = a.post("/v1/chat", {"question": "How do I void a label?"}).json()
    follow = b.post("/v1/chat", {"question": "And then?", "conversation_id": first["conversation_id"]})
    assert follow.status_code == 200, follow.text
    messages = a.get(f"/v1/conversations/{first['conversation_id']}").json()["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant"]

    # An adapter activated on A is the one B serves.
    settings = load_settings(data_dir=cluster_env["TUNERAG_DATA_DIR"], cache_dir=cluster_env["TUNERAG_CACHE_DIR"],
                             models={"generator": cluster_env["TUNERAG_MODELS__GENERATOR"],
                                     "embedder": cluster_env["TUNERAG_MODELS__EMBEDDER"]})
    adapter = make_tiny_adapter(settings, "adapter-shared")
    assert a.post(f"/v1/adapters/{adapter.id}/activate").status_code == 200
    until(lambda: b.ready()["active_adapter"] == adapter.id, FOLLOW_DEADLINE_S, "B serves A's adapter", b)
    assert b.post("/v1/chat", {"question": "Hi", "mode": "ft"}).json()["adapter"] == adapter.id

    # A third replica starting meanwhile fails nobody's job (the old start-up marked every running job failed).
    rebuild = b.post("/v1/index/rebuild").json()["id"]
    until(lambda: b.get(f"/v1/jobs/{rebuild}").json()["status"] == "running", 30, "the rebuild runs")
    c = Replica("c", cluster_env, a.log.parent)
    try:
        done = until(lambda: (j := c.get(f"/v1/jobs/{rebuild}").json())["status"] in ("succeeded", "failed") and j,
                     60, "the rebuild finished")
        assert done["status"] == "succeeded" and done["attempts"] == 1, done
    finally:
        c.stop()


def test_kill_9_of_the_replica_running_a_job_reruns_it_on_the_other(
        replicas: tuple[Replica, Replica], cluster_env: dict[str, str]) -> None:
    a, b = replicas
    kept = a.post("/v1/chat", {"question": "Where is my refund?"}).json()["conversation_id"]
    job_id = a.post("/v1/index/rebuild").json()["id"]
    running = until(lambda: (j := b.get(f"/v1/jobs/{job_id}").json())["status"] == "running"
                    and (j.get("progress") or {}).get("done", 0) > 0 and j, 60, "the rebuild is embedding")
    victim, survivor = (a, b) if running["owner"] == "a" else (b, a)
    victim.stop(signal.SIGKILL)

    # Until the lease expires and the re-run finishes, the survivor answers from the previous version.
    assert survivor.ready()["index_version"] == "v000001"
    assert survivor.post("/v1/chat", {"question": "How do I void a label?"}).status_code == 200
    job = until(lambda: (j := survivor.get(f"/v1/jobs/{job_id}").json())["status"] in ("succeeded", "failed") and j,
                90, "the survivor re-ran the job", survivor)
    assert job["status"] == "succeeded" and job["attempts"] == 2 and job["owner"] == survivor.name, job
    until(lambda: survivor.ready()["index_version"] == job["result"]["version"], FOLLOW_DEADLINE_S,
          "the survivor serves the re-run's version", survivor)
    assert versions(cluster_env) == ["v000001", job["result"]["version"]]  # the killed run left no version
    # Nothing stored was lost: the conversation from before the kill is there, with both turns.
    messages = survivor.get(f"/v1/conversations/{kept}").json()["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant"]
    # The killed replica comes back on the new version.
    back = Replica(victim.name, cluster_env, victim.log.parent)
    try:
        assert back.ready()["index_version"] == job["result"]["version"]
    finally:
        back.stop()
