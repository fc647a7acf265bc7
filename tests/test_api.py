"""The HTTP API through Litestar's test client: every endpoint's happy path, errors, streaming, jobs."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from files import write_pdf
from helpers import make_tiny_adapter, wait_job
from litestar.testing import TestClient

from core import artifacts
from core.settings import Settings
from retrieval import index_store
from service.app import create_app

ADMIN, CHAT = "admin-key", "chat-key"
H_ADMIN = {"Authorization": f"Bearer {ADMIN}"}
H_CHAT = {"X-API-Key": CHAT}


@pytest.fixture(params=["sqlite", "postgres"])
def api_settings(settings: Settings, request: pytest.FixtureRequest) -> Settings:
    """Every API test runs on SQLite (the default) and on a real PostgreSQL server (a fresh database each)."""
    database_url = request.getfixturevalue("postgres_url") if request.param == "postgres" else None
    return settings.model_copy(update={
        "generation": settings.generation.model_copy(update={"max_new_tokens": 6, "batch_wait_ms": 5}),
        "server": settings.server.model_copy(update={
            "api_keys": {ADMIN: ["chat", "admin"], CHAT: ["chat"]}, "max_request_bytes": 20_000,
            "max_upload_bytes": 50_000, "rate_limit_per_minute": 1000, "database_url": database_url}),
    })


@pytest.fixture
def client(api_settings: Settings) -> Iterator[TestClient]:
    with TestClient(app=create_app(api_settings)) as c:
        yield c


def test_health_ready_openapi_and_metrics(client: TestClient) -> None:
    assert client.get("/health").json() == {"status": "ok"}
    ready = client.get("/ready").json()
    assert ready["status"] == "ready" and ready["index_version"] == "v000001" and ready["active_adapter"] is None
    assert any("no fine-tuned adapter" in n for n in ready["notes"])
    paths = client.get("/schema/openapi.json").json()["paths"]
    for path in ("/v1/chat", "/v1/chat/completions", "/v1/documents", "/v1/index/rebuild", "/v1/jobs/{job_id}",
                 "/v1/adapters", "/v1/embedders", "/v1/evals", "/v1/chat/{conversation_id}/feedback"):
        assert path in paths, path
    client.post("/v1/chat", json={"question": "How do I void a label?"}, headers=H_CHAT)
    metrics = client.get("/metrics").text
    assert "tunerag_tokens_generated_total" in metrics and "tunerag_requests_total" in metrics


def test_chat_answers_cites_and_keeps_the_conversation(client: TestClient) -> None:
    r = client.post("/v1/chat", json={"question": "How do I void a label?", "top_k": 3}, headers=H_CHAT)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["mode"] == "combined" and body["adapter"] is None and body["index_version"] == "v000001"
    assert len(body["sources"]) == 3 and {"doc_id", "title", "snippet", "score"} <= set(body["sources"][0])
    assert body["usage"]["completion_tokens"] <= 6 and body["timings_ms"]["total"] > 0
    assert any("base generator" in n for n in body["notes"])
    follow = client.post("/v1/chat", json={"question": "And for DHL?", "conversation_id": body["conversation_id"],
                                           "mode": "rag"}, headers=H_CHAT).json()
    assert follow["conversation_id"] == body["conversation_id"]
    conversation = client.get(f"/v1/conversations/{body['conversation_id']}", headers=H_CHAT).json()
    assert [m["role"] for m in conversation["messages"]] == ["user", "assistant", "user", "assistant"]
    assert conversation["messages"][1]["details"]["mode"] == "combined"
    feedback = client.post(f"/v1/chat/{body['conversation_id']}/feedback", json={"rating": "up", "comment": "great"},
                           headers=H_CHAT)
    assert feedback.status_code == 201 and feedback.json()["message_id"] == follow["message_id"]


@pytest.mark.parametrize("mode", ["prompt", "ft", "rag", "combined"])
def test_each_mode_uses_the_right_pieces(client: TestClient, mode: str) -> None:
    body = client.post("/v1/chat", json={"question": "Which carriers are supported?", "mode": mode},
                       headers=H_CHAT).json()
    assert body["mode"] == mode
    assert (len(body["sources"]) > 0) == (mode in ("rag", "combined"))
    assert (body["index_version"] is not None) == (mode in ("rag", "combined"))


def test_chat_streams_tokens_then_a_final_event_with_sources(client: TestClient) -> None:
    with client.stream("POST", "/v1/chat", json={"question": "Can I pay by bank transfer?", "stream": True},
                       headers=H_CHAT) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        text = "".join(r.iter_text()).replace("\r\n", "\n")
    events = [block for block in text.split("\n\n") if block.strip()]
    assert events[-1].startswith("event: done")
    final = json.loads(events[-1].split("data: ", 1)[1])
    assert final["sources"] and final["conversation_id"]
    tokens = [json.loads(e.split("data: ", 1)[1])["text"] for e in events if e.startswith("event: token")]
    assert "".join(tokens).strip() == final["answer"]


def test_openai_compatible_completions_plain_and_streamed(client: TestClient) -> None:
    req = {"model": "tunerag", "messages": [{"role": "system", "content": "ignored"},
                                             {"role": "user", "content": "How do I reset my password?"}], "max_tokens": 4}
    body = client.post("/v1/chat/completions", json=req, headers=H_CHAT).json()
    assert body["object"] == "chat.completion" and body["choices"][0]["message"]["role"] == "assistant"
    assert body["usage"]["completion_tokens"] <= 4 and body["tunerag"]["mode"] == "rag"
    with client.stream("POST", "/v1/chat/completions", json={**req, "stream": True}, headers=H_CHAT) as r:
        lines = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line[6:]) for line in lines[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant"}
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    models = client.get("/v1/models", headers=H_CHAT).json()
    assert {m["id"] for m in models["data"]} >= {"tunerag", "base"}
    unknown = client.post("/v1/chat/completions", json={**req, "model": "adapter-nope"}, headers=H_CHAT)
    assert unknown.status_code == 404 and "unknown model 'adapter-nope'" in unknown.json()["detail"]
    bad = client.post("/v1/chat/completions", json={"messages": [{"role": "assistant", "content": "x"}]}, headers=H_CHAT)
    assert bad.status_code == 422 and "end with a user message" in bad.json()["detail"]


@pytest.mark.parametrize(
    ("method", "path", "headers", "status"),
    [
        ("POST", "/v1/chat", {}, 401),
        ("POST", "/v1/chat", {"Authorization": "Bearer wrong"}, 401),
        ("GET", "/v1/documents", H_CHAT, 403),
        ("POST", "/v1/index/rebuild", H_CHAT, 403),
        ("GET", "/v1/adapters", {}, 401),
        ("POST", "/v1/evals", H_CHAT, 403),
    ],
)
def test_auth_failures(client: TestClient, method: str, path: str, headers: dict, status: int) -> None:
    r = client.request(method, path, headers=headers, json={"question": "hi"} if path == "/v1/chat" else {})
    assert r.status_code == status
    assert "detail" in r.json()


def test_malformed_and_oversized_bodies_are_4xx_json(client: TestClient) -> None:
    r = client.post("/v1/chat", content=b"{not json", headers={**H_CHAT, "content-type": "application/json"})
    assert r.status_code == 400 and r.json()["detail"]
    r = client.post("/v1/chat", json={"question": "x", "top_k": 0}, headers=H_CHAT)
    assert r.status_code == 400 and r.json()["extra"][0]["key"] == "top_k"
    r = client.post("/v1/chat", json={"question": "x", "unexpected": 1}, headers=H_CHAT)
    assert r.status_code == 400
    r = client.post("/v1/chat", json={"question": "x" * 30_000}, headers=H_CHAT)
    assert r.status_code == 413
    r = client.post("/v1/chat", json={"question": "x", "conversation_id": "7b1f6e3c-0000-4000-8000-000000000000"},
                    headers=H_CHAT)
    assert r.status_code == 404 and "conversation" in r.json()["detail"]
    r = client.post("/v1/chat/7b1f6e3c-0000-4000-8000-000000000000/feedback", json={"rating": "meh"}, headers=H_CHAT)
    assert r.status_code == 400


def test_rate_limit_per_key(api_settings: Settings) -> None:
    limited = api_settings.model_copy(update={"server": api_settings.server.model_copy(update={"rate_limit_per_minute": 3})})
    with TestClient(app=create_app(limited)) as c:
        codes = [c.get("/v1/models", headers=H_CHAT).status_code for _ in range(4)]
        assert codes == [200, 200, 200, 429]
        assert c.get("/v1/models", headers=H_ADMIN).status_code == 200, "another key has its own budget"
        assert c.get("/health").status_code == 200


def test_document_upload_list_delete_and_bad_files(client: TestClient, api_settings: Settings, tmp_path: Path) -> None:
    pdf = write_pdf(tmp_path / "claims.pdf", ["Carrier claims", "File claims within 60 days."])
    files = [("files", ("holiday-hours.md", b"# Holiday hours\n\nSupport is closed on Dec 25.\n", "text/markdown")),
             ("files", ("claims.pdf", pdf.read_bytes(), "application/pdf"))]
    r = client.post("/v1/documents", files=files, headers=H_ADMIN)
    assert r.status_code == 202, r.text
    assert sorted(r.json()["doc_ids"]) == ["claims", "holiday-hours"]
    job = wait_job(client, r.json()["job_id"], H_ADMIN)
    assert job["status"] == "succeeded" and job["result"]["added"] == 2 and job["result"]["embedded_chunks"] >= 2
    docs = {d["doc_id"]: d for d in client.get("/v1/documents", headers=H_ADMIN).json()}
    assert docs["claims"]["uploaded"] and not docs["billing-plans"]["uploaded"] and docs["claims"]["chunks"] >= 1
    hit = client.post("/v1/chat", json={"question": "holiday hours Dec 25", "mode": "rag",
                                        "filters": {"doc_id": "holiday-hours"}}, headers=H_CHAT).json()
    assert hit["sources"][0]["doc_id"] == "holiday-hours" and hit["index_version"] == "v000002"

    r = client.post("/v1/documents", json={"documents": [{"doc_id": "returns-policy-2027", "title": "2027 returns",
                                                          "text": "Returns are free in 2027."}], "refresh": False},
                    headers=H_ADMIN)
    assert r.status_code == 202 and "job_id" not in r.json()
    assert any(d["doc_id"] == "returns-policy-2027" and d["chunks"] == 0
               for d in client.get("/v1/documents", headers=H_ADMIN).json())

    manifest_before = index_store.read_manifest(api_settings.paths.index_dir)
    for name, content, status, message in [
        ("empty.md", b"", 422, "empty.md: file is empty"),
        ("binary.md", b"\x00\x01\x02", 422, "binary.md: binary content"),
        ("broken.pdf", b"%PDF-1.4 nope", 422, "broken.pdf: cannot read PDF"),
        ("notes.docx", b"PK", 422, "unsupported file type"),
        ("big.md", b"# Big\n\n" + b"x" * 60_000, 413, "50000-byte limit"),
    ]:
        r = client.post("/v1/documents", files=[("files", (name, content, "application/octet-stream"))], headers=H_ADMIN)
        assert r.status_code == status, (name, r.text)
        assert message in r.json()["detail"]
    assert index_store.read_manifest(api_settings.paths.index_dir) == manifest_before
    assert not (api_settings.paths.documents_dir / "empty.md").exists()
    conflict = client.post("/v1/documents", json={"documents": [{"doc_id": "billing-plans", "text": "x"}]}, headers=H_ADMIN)
    assert conflict.status_code == 409 and "billing-plans" in conflict.json()["detail"]
    bad_json = client.post("/v1/documents", json={"documents": [{"doc_id": "../etc", "text": "x"}]}, headers=H_ADMIN)
    assert bad_json.status_code == 422 and "doc_id" in bad_json.json()["detail"]

    r = client.delete("/v1/documents/holiday-hours", headers=H_ADMIN)
    assert r.status_code == 202 and wait_job(client, r.json()["job_id"], H_ADMIN)["result"]["removed"] == 1
    assert client.delete("/v1/documents/billing-plans", headers=H_ADMIN).status_code == 409
    assert client.delete("/v1/documents/nope", headers=H_ADMIN).status_code == 404


def test_index_swap_under_concurrent_chat(client: TestClient) -> None:
    results: list[tuple[int, str | None]] = []
    stop = threading.Event()

    def chatter() -> None:
        while not stop.is_set():
            r = client.post("/v1/chat", json={"question": "How do pickups work?", "mode": "rag"}, headers=H_CHAT)
            results.append((r.status_code, r.json().get("index_version")))

    threads = [threading.Thread(target=chatter) for _ in range(3)]
    for t in threads:
        t.start()
    job = client.post("/v1/index/rebuild", headers=H_ADMIN).json()
    finished = wait_job(client, job["id"], H_ADMIN)
    time.sleep(0.3)
    stop.set()
    for t in threads:
        t.join()
    assert finished["status"] == "succeeded" and finished["result"]["mode"] == "rebuild"
    assert results and all(code == 200 for code, _ in results)
    assert {v for _, v in results} <= {"v000001", "v000002"} and results[-1][1] == "v000002"
    assert client.get("/ready").json()["index_version"] == "v000002"


def test_adapter_hot_swap_and_unknown_adapter(client: TestClient, api_settings: Settings) -> None:
    adapter = make_tiny_adapter(api_settings)
    listed = client.get("/v1/adapters", headers=H_ADMIN).json()
    assert [a["id"] for a in listed] == [adapter.id] and not listed[0]["active"]
    r = client.post(f"/v1/adapters/{adapter.id}/activate", headers=H_ADMIN)
    assert r.status_code == 200 and r.json() == {"active_adapter": adapter.id}
    body = client.post("/v1/chat", json={"question": "How do I void a label?", "mode": "ft"}, headers=H_CHAT).json()
    assert body["adapter"] == adapter.id and not any("adapter" in n for n in body["notes"])
    base = client.post("/v1/chat", json={"question": "How do I void a label?", "mode": "prompt"}, headers=H_CHAT).json()
    assert base["adapter"] is None
    via_openai = client.post("/v1/chat/completions", json={"model": adapter.id, "retrieval": False,
                             "messages": [{"role": "user", "content": "hi"}]}, headers=H_CHAT).json()
    assert via_openai["tunerag"]["mode"] == "ft" and via_openai["tunerag"]["adapter"] == adapter.id
    assert client.get(f"/v1/adapters/{adapter.id}", headers=H_ADMIN).json()["loaded"] is True
    missing = client.post("/v1/adapters/adapter-missing/activate", headers=H_ADMIN)
    assert missing.status_code == 404 and "available: " + adapter.id in missing.json()["detail"]
    assert client.post("/v1/adapters/base/activate", headers=H_ADMIN).json() == {"active_adapter": None}
    assert artifacts.active_id(api_settings, "adapter") is None


def test_embedder_activation_rebuilds_and_swaps_the_index(client: TestClient, api_settings: Settings) -> None:
    from tiny_models import build_tiny_sentence_transformer

    run = artifacts.run_dir(api_settings, "embedder", "embedder-test")
    build_tiny_sentence_transformer(run / "model", seed=3)
    tuned = artifacts.finalize(api_settings, "embedder", "embedder-test", {"created_at": artifacts.utc_now()}, keep=["model"])
    job = client.post(f"/v1/embedders/{tuned.id}/activate", headers=H_ADMIN).json()
    assert wait_job(client, job["id"], H_ADMIN)["status"] == "succeeded"
    assert artifacts.active_id(api_settings, "embedder") == tuned.id
    body = client.post("/v1/chat", json={"question": "pickups", "mode": "combined"}, headers=H_CHAT).json()
    assert body["index_version"] == "v000002" and body["embedder"].startswith("model-")
    assert not any("base embedder" in n for n in body["notes"])
    # An incremental refresh keeps using the active (fine-tuned) embedder instead of failing on a mismatch.
    assert wait_job(client, client.post("/v1/index/refresh", headers=H_ADMIN).json()["id"], H_ADMIN)["status"] == "succeeded"
    assert client.post("/v1/embedders/nope/activate", headers=H_ADMIN).status_code == 404


def test_jobs_a_stopped_process_left_are_run_again_or_failed_when_out_of_attempts(api_settings: Settings) -> None:
    import asyncio

    from service.db import Job, alchemy_config

    with TestClient(app=create_app(api_settings)) as c:
        job_id = c.post("/v1/index/refresh", headers=H_ADMIN).json()["id"]
        wait_job(c, job_id, H_ADMIN)

    async def leave_jobs() -> tuple[str, str]:
        # What a killed process leaves: running rows whose lease nobody renews (one with no lease at all).
        config = alchemy_config(api_settings)
        async with config.create_session_maker()() as session, session.begin():
            again = Job(kind="index.rebuild", status="running", params={"rebuild": True}, lane="index", attempts=1,
                        progress={"stage": "embedding"}, owner="dead-replica")
            spent = Job(kind="index.rebuild", status="running", params={"rebuild": True}, lane="index",
                        attempts=api_settings.server.job_max_attempts, owner="dead-replica")
            session.add_all([again, spent])
        await config.get_engine().dispose()
        return str(again.id), str(spent.id)

    again, spent = asyncio.run(leave_jobs())
    with TestClient(app=create_app(api_settings)) as c:
        rerun = wait_job(c, again, H_ADMIN)
        assert rerun["status"] == "succeeded" and rerun["attempts"] == 2 and rerun["owner"] != "dead-replica", rerun
        failed = c.get(f"/v1/jobs/{spent}", headers=H_ADMIN).json()
        assert failed["status"] == "failed" and failed["resumable"] is True and "interrupted" in failed["error"]
        assert c.get(f"/v1/jobs/{job_id}", headers=H_ADMIN).json()["status"] == "succeeded"
        assert len(c.get("/v1/jobs", headers=H_ADMIN).json()) == 3
        assert c.get("/v1/jobs/7b1f6e3c-0000-4000-8000-000000000000", headers=H_ADMIN).status_code == 404


def test_eval_job_then_json_and_html_report(client: TestClient, api_settings: Settings) -> None:
    job = client.post("/v1/evals", json={"limit": 2, "systems": ["prompt", "rag"]}, headers=H_ADMIN)
    assert job.status_code == 202 and job.json()["kind"] == "eval"
    job_id = job.json()["id"]
    assert client.get(f"/v1/evals/{job_id}/report", headers=H_ADMIN).status_code in (200, 409)
    finished = wait_job(client, job_id, H_ADMIN, timeout=120)
    assert finished["status"] == "succeeded", finished
    report = client.get(f"/v1/evals/{job_id}", headers=H_ADMIN).json()
    assert report["data"]["questions"] == 2 and set(report["systems"]) == {"prompt", "rag"}
    page = client.get(f"/v1/evals/{job_id}/report", headers=H_ADMIN)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "tunerag evaluation" in page.text
    assert client.get("/v1/embedders", headers=H_ADMIN).json() == []
    bad = client.post("/v1/evals", json={"systems": ["oracle"]}, headers=H_ADMIN)
    assert bad.status_code == 400
    not_eval = client.post("/v1/index/refresh", headers=H_ADMIN).json()["id"]
    assert client.get(f"/v1/evals/{not_eval}", headers=H_ADMIN).status_code == 404


def test_response_format_is_refused_with_the_setting_where_the_engine_cannot_constrain(client: TestClient) -> None:
    base = {"messages": [{"role": "user", "content": "How do I void a label?"}], "max_tokens": 4}
    assert client.post("/v1/chat/completions", json=base | {"response_format": {"type": "text"}},
                       headers=H_CHAT).status_code == 200
    for fmt in ({"type": "json_object"}, {"type": "json_schema", "json_schema": {"schema": {"type": "object"}}}):
        r = client.post("/v1/chat/completions", json=base | {"response_format": fmt}, headers=H_CHAT)
        assert r.status_code == 400 and "server.generation_backend" in r.json()["detail"], r.text
    r = client.post("/v1/chat/completions", json=base | {"response_format": {"type": "json_schema"}}, headers=H_CHAT)
    assert r.status_code == 422 and "json_schema.schema" in r.json()["detail"], r.text
    r = client.post("/v1/chat/completions", json=base | {"response_format": {"type": "yaml"}}, headers=H_CHAT)
    assert r.status_code == 400, r.text
