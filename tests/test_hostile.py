"""Hostile input against the real app: every case here broke (stalled, exhausted or corrupted) the service
before it was hardened. Real Litestar app and HTTP requests, real files generated in the test, real SQLite."""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from files import ALIAS_BOMB_FRONT_MATTER, write_slow_pdf
from helpers import health_answers_during
from litestar.testing import TestClient
from sqlalchemy import create_engine, text

from core.errors import InvalidInputError
from core.prompt import CITATION
from core.settings import Settings
from retrieval import index_store
from retrieval.isolation import ParseBudget, load_file_isolated
from retrieval.loaders import load_documents
from service.app import create_app

ADMIN, ALICE, BOB = "admin-key", "alice-key", "bob-key"
H_ADMIN = {"Authorization": f"Bearer {ADMIN}"}
H_ALICE = {"Authorization": f"Bearer {ALICE}"}
H_BOB = {"X-API-Key": BOB}


@pytest.fixture
def hostile_settings(settings: Settings, request: pytest.FixtureRequest) -> Settings:
    """SQLite, or a fresh database on the test PostgreSQL server where a test asks for ``postgres``."""
    database = getattr(request, "param", "sqlite")
    database_url = request.getfixturevalue("postgres_url") if database == "postgres" else None
    return settings.model_copy(update={
        "generation": settings.generation.model_copy(update={"max_new_tokens": 4, "batch_wait_ms": 5}),
        "server": settings.server.model_copy(update={
            "api_keys": {ADMIN: ["chat", "admin"], ALICE: ["chat"], BOB: ["chat"]},
            "max_request_bytes": 20_000, "max_upload_bytes": 50_000, "max_upload_request_bytes": 120_000,
            "rate_limit_per_minute": 1000, "parse_timeout_s": 1.5, "parse_memory_mb": 256,
            "database_url": database_url}),
    })


@pytest.fixture
def client(hostile_settings: Settings) -> Iterator[TestClient]:
    with TestClient(app=create_app(hostile_settings)) as c:
        yield c


def upload(client: TestClient, name: str, content: bytes, refresh: bool = False):
    return client.post("/v1/documents", files=[("files", (name, content, "application/octet-stream"))],
                       data={"refresh": str(refresh).lower()}, headers=H_ADMIN)


def uploads_on_disk(settings: Settings) -> list[str]:
    root = settings.paths.documents_dir
    return sorted(p.name for p in root.iterdir() if p.is_file()) if root.is_dir() else []


# --- 1. a PDF that makes the parser run for minutes ------------------------------------------------------------

def test_pathological_pdf_costs_its_budget_and_health_answers_meanwhile(client: TestClient, tmp_path: Path,
                                                                        hostile_settings: Settings) -> None:
    pdf = write_slow_pdf(tmp_path / "slow.pdf").read_bytes()  # ~3 KB, several seconds of pypdf work
    r, answered_during = health_answers_during(client, lambda: upload(client, "slow.pdf", pdf), pause_s=0.05)
    # Before: the parse ran on the event loop and /health waited for it (27 minutes for the 25 KB original).
    assert answered_during >= 3
    assert r.status_code == 422
    assert "slow.pdf" in r.json()["detail"] and "time limit" in r.json()["detail"]
    assert "slow.pdf" not in uploads_on_disk(hostile_settings)
    assert client.get("/v1/documents", headers=H_ADMIN).status_code == 200


def test_parser_memory_budget_is_enforced(tmp_path: Path) -> None:
    page = tmp_path / "huge.html"
    page.write_text("<html><body><main>" + "<p>x y z</p>" * 300_000 + "</main></body></html>")
    # Time limits far above what the parse needs (~10 s alone; over 60 s once, with two benchmarks sharing the
    # cores): memory, not time, must decide here.
    with pytest.raises(InvalidInputError, match="huge.html: parsing exceeded the 24 MiB memory limit"):
        load_file_isolated(page, None, ParseBudget(timeout_s=600, memory_bytes=24 * 2**20), name="huge.html")
    # The same file within a generous budget parses: the limit, not the file, decided.
    docs = load_file_isolated(page, None, ParseBudget(timeout_s=600, memory_bytes=1024 * 2**20), name="huge.html")
    assert docs[0].doc_id == "huge"


# --- 2. YAML alias bomb in front matter ------------------------------------------------------------------------

def test_alias_bomb_front_matter_is_refused(client: TestClient, hostile_settings: Settings) -> None:
    r = upload(client, "bomb.md", ALIAS_BOMB_FRONT_MATTER.encode())
    assert r.status_code == 422 and "bomb.md" in r.json()["detail"] and "aliases" in r.json()["detail"]
    assert uploads_on_disk(hostile_settings) == []
    listing = client.get("/v1/documents", headers=H_ADMIN)
    assert listing.status_code == 200 and len(listing.content) < 200_000


# --- 3. chunked bodies cannot bypass the size limits -----------------------------------------------------------

def _chunked(total: int, piece: bytes = b"x" * 4096) -> Iterator[bytes]:
    sent = 0
    while sent < total:
        yield piece
        sent += len(piece)


@pytest.mark.parametrize("route,content_type,limit", [
    ("/v1/documents", "application/json", "max_upload_bytes"),
    ("/v1/documents", "multipart/form-data; boundary=xyz", "max_upload_request_bytes"),
    ("/v1/chat", "application/json", "max_request_bytes"),
])
def test_chunked_bodies_are_limited_on_bytes_read(client: TestClient, hostile_settings: Settings, route: str,
                                                  content_type: str, limit: str) -> None:
    size = getattr(hostile_settings.server, limit) * 3
    if content_type.startswith("multipart"):
        head = (b'--xyz\r\nContent-Disposition: form-data; name="files"; filename="big.md"\r\n'
                b"Content-Type: text/markdown\r\n\r\n# Big\n\n")
        body: Iterator[bytes] = iter([head, *_chunked(size)])
    else:
        body = iter([b'{"documents": [{"doc_id": "big", "text": "', *_chunked(size)])
    r = client.post(route, content=body, headers={**H_ADMIN, "content-type": content_type})
    assert r.status_code == 413, r.text
    assert "content-length" not in {k.lower() for k in r.request.headers}  # it really was chunked
    assert uploads_on_disk(hostile_settings) == []


# --- 4. conversations belong to the key that started them ------------------------------------------------------

@pytest.mark.parametrize("hostile_settings", ["sqlite", "postgres"], indirect=True)
def test_a_key_cannot_read_continue_or_rate_another_keys_conversation(client: TestClient) -> None:
    mine = client.post("/v1/chat", json={"question": "How do I void a label?"}, headers=H_ALICE).json()
    cid = mine["conversation_id"]
    assert client.get(f"/v1/conversations/{cid}", headers=H_ALICE).status_code == 200
    assert client.get(f"/v1/conversations/{cid}", headers=H_BOB).status_code == 404
    follow = client.post("/v1/chat", json={"question": "And then?", "conversation_id": cid}, headers=H_BOB)
    assert follow.status_code == 404
    assert client.post(f"/v1/chat/{cid}/feedback", json={"rating": "down"}, headers=H_BOB).status_code == 404
    # The owner still can, and an admin may read any conversation (support review).
    assert client.post(f"/v1/chat/{cid}/feedback", json={"rating": "up"}, headers=H_ALICE).status_code == 201
    messages = client.get(f"/v1/conversations/{cid}", headers=H_ADMIN).json()["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant"]  # bob's follow-up was never stored


# --- 5. one doc id, one file -------------------------------------------------------------------------------------

def test_duplicate_ids_across_uploads_are_refused_before_storing(client: TestClient, hostile_settings: Settings) -> None:
    first = upload(client, "a.md", b"---\nid: shared-id\n---\n\n# A\n\nFirst.\n", refresh=True)
    assert first.status_code == 202
    second = upload(client, "b.md", b"---\nid: shared-id\n---\n\n# B\n\nSecond.\n")
    assert second.status_code == 409
    assert "shared-id" in second.json()["detail"] and "a.md" in second.json()["detail"]
    assert uploads_on_disk(hostile_settings) == ["a.md"]
    clash_with_kb = client.post("/v1/documents", json={"documents": [{"doc_id": "billing-plans", "text": "x"}]},
                                headers=H_ADMIN)
    assert clash_with_kb.status_code == 409
    # The index still refreshes, lists and deletes by that id.
    r = client.post("/v1/index/refresh", headers=H_ADMIN)
    job_id = r.json()["id"]
    deadline = time.time() + 60
    while (job := client.get(f"/v1/jobs/{job_id}", headers=H_ADMIN).json())["status"] not in ("succeeded", "failed"):
        assert time.time() < deadline
        time.sleep(0.1)
    assert job["status"] == "succeeded"
    assert client.get("/v1/documents", headers=H_ADMIN).status_code == 200
    assert client.delete("/v1/documents/shared-id", headers=H_ADMIN).status_code == 202
    # Re-uploading the same file name replaces it (an update, not a conflict).
    assert upload(client, "a.md", b"---\nid: shared-id\n---\n\n# A\n\nSecond version.\n").status_code == 202
    assert upload(client, "a.md", b"---\nid: shared-id\n---\n\n# A\n\nThird version.\n").status_code == 202


# --- 6. malformed bodies are 4xx, unexpected errors are logged JSON 500s --------------------------------------

def test_invalid_utf8_is_a_4xx_and_statuses_are_logged_truthfully(client: TestClient, hostile_settings: Settings) -> None:
    r = client.post("/v1/chat", content=b'{"question": "caf\xe9 \xff"}', headers={**H_ALICE, "content-type": "application/json"})
    assert r.status_code == 400, r.text
    assert r.json()["status_code"] == 400 and r.headers["x-request-id"]
    json_upload = client.post("/v1/documents", content=b'{"documents": [{"doc_id": "x", "text": "\xff"}]}',
                              headers={**H_ADMIN, "content-type": "application/json"})
    assert json_upload.status_code == 422 and "UTF-8" in json_upload.json()["detail"]
    engine = create_engine(f"sqlite:///{hostile_settings.paths.database_path}")
    with engine.connect() as conn:
        codes = [row[0] for row in conn.execute(text("select status_code from request_log where path = '/v1/chat'"))]
    assert 400 in codes and 500 not in codes


def test_rate_limited_requests_are_logged_as_429(hostile_settings: Settings) -> None:
    limited = hostile_settings.model_copy(update={"server": hostile_settings.server.model_copy(
        update={"rate_limit_per_minute": 3})})
    with TestClient(app=create_app(limited)) as c:
        codes = [c.get("/v1/models", headers=H_ALICE).status_code for _ in range(5)]
        assert codes[-1] == 429
        # Invented keys share the client's address bucket: 401s until the bucket is spent, then 429.
        invented = [c.get("/v1/models", headers={"X-API-Key": secrets.token_hex(8)}).status_code for _ in range(5)]
        assert invented[-1] == 429 and set(invented) <= {401, 429}
    engine = create_engine(f"sqlite:///{limited.paths.database_path}")
    with engine.connect() as conn:
        codes_logged = [row[0] for row in conn.execute(text("select status_code from request_log"))]
    assert codes_logged.count(429) >= 2 and 500 not in codes_logged


def test_unexpected_errors_are_json_500s_with_a_request_id_and_no_paths(client: TestClient, caplog) -> None:
    def broken(*args, **kwargs):
        raise RuntimeError("/srv/secret/path/model.bin is corrupt")

    client.app.state.chat_service.answer = broken
    with caplog.at_level(logging.ERROR, logger="service.app"):
        r = client.post("/v1/chat", json={"question": "hello"}, headers={**H_ALICE, "X-Request-ID": "req-123"})
    assert r.status_code == 500
    body = r.json()
    assert body["request_id"] == "req-123" and "/srv/secret" not in r.text
    assert any("req-123" in rec.getMessage() for rec in caplog.records)
    assert any("/srv/secret/path" in (rec.exc_text or "") or rec.exc_info for rec in caplog.records)


# --- 7. a JSON document's title cannot inject front matter ----------------------------------------------------

def test_title_injection_is_stored_as_a_title(client: TestClient) -> None:
    titles = {"inject": "Evil\nid: hijacked", "colon": "Refunds: how *long* they take", "hash": "#1 question"}
    docs = [{"doc_id": doc_id, "title": title, "text": "Some text."} for doc_id, title in titles.items()]
    r = client.post("/v1/documents", json={"documents": docs, "refresh": False}, headers=H_ADMIN)
    assert r.status_code == 202, r.text
    listed = {d["doc_id"]: d["title"] for d in client.get("/v1/documents", headers=H_ADMIN).json()}
    assert "hijacked" not in listed
    assert listed["inject"] == "Evil id: hijacked"
    assert listed["colon"] == titles["colon"] and listed["hash"] == titles["hash"]


# --- 8. auth details --------------------------------------------------------------------------------------------

def test_403_names_no_scopes_and_text_plain_bodies_are_refused(client: TestClient) -> None:
    r = client.get("/v1/documents", headers=H_ALICE)
    assert r.status_code == 403 and "chat" not in r.json()["detail"].split("lacks")[-1].replace("'admin'", "")
    plain = client.post("/v1/chat", content=b'{"question": "hi"}', headers={**H_ALICE, "content-type": "text/plain"})
    assert plain.status_code == 415 and "application/json" in plain.json()["detail"]


def test_finish_reason_says_length_when_max_tokens_cut_the_answer(client: TestClient) -> None:
    r = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "Tell me everything"}],
                                                   "max_tokens": 1}, headers=H_ALICE)
    assert r.json()["choices"][0]["finish_reason"] == "length"
    chat = client.post("/v1/chat", json={"question": "Tell me everything", "max_tokens": 1}, headers=H_ALICE)
    assert chat.json()["finish_reason"] == "length"


# --- 9. one doc-id grammar ---------------------------------------------------------------------------------------

def test_doc_ids_follow_one_grammar_that_citations_match(tmp_path: Path) -> None:
    kb = tmp_path / "kb"
    (kb / "sub").mkdir(parents=True)
    (kb / "my doc.md").write_text("# Spaces\n\nA file name with a space.\n")
    (kb / "sub" / "nested.md").write_text("# Nested\n\nA nested file.\n")
    ids = sorted(d.doc_id for d in load_documents([kb]))
    assert ids == ["my-doc", "sub/nested"]
    for doc_id in ids:  # every id the loaders produce is citable
        assert CITATION.fullmatch(f"[{doc_id}]").group(1) == doc_id
    faq = tmp_path / "faq.jsonl"
    faq.write_text('{"id": "ok-1", "question": "q", "answer": "a"}\n{"id": "has space", "question": "q", "answer": "a"}\n')
    with pytest.raises(InvalidInputError, match=r"faq.jsonl:2: invalid document id 'has space'"):
        load_documents([faq])
    bad_front = tmp_path / "bad.md"
    bad_front.write_text("---\nid: ../escape\n---\n\nText.\n")
    with pytest.raises(InvalidInputError, match=r"bad.md: invalid document id '../escape'"):
        load_documents([bad_front])


def test_nested_ids_can_be_uploaded_listed_and_deleted(client: TestClient, hostile_settings: Settings) -> None:
    r = client.post("/v1/documents", json={"documents": [{"doc_id": "guides/setup", "text": "Setup."}], "refresh": False},
                    headers=H_ADMIN)
    assert r.status_code == 202 and r.json()["doc_ids"] == ["guides/setup"]
    assert "guides/setup" in {d["doc_id"] for d in client.get("/v1/documents", headers=H_ADMIN).json()}
    assert client.delete("/v1/documents/guides/setup", headers=H_ADMIN).status_code == 202
    assert uploads_on_disk(hostile_settings) == []
    assert index_store.current_version(hostile_settings.paths.index_dir) is not None
