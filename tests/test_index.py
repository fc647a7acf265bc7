"""The persistent index: incremental updates, atomic versions, crash safety, embedder mismatch, locking."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from tiny_models import build_tiny_sentence_transformer

from core.errors import ConflictError, InvalidInputError, NotFoundError
from core.models import load_embedder
from core.settings import SAMPLE_DIR, Settings
from retrieval import index_store
from retrieval.chunking import Chunker
from retrieval.indexer import update_index
from retrieval.loaders import load_file
from retrieval.search import Retriever

DOCS = ["billing-plans.md", "ts-void-label.md", "setup-team-members.html", "api-webhooks.md", "policy-security.html"]


@pytest.fixture
def kb(tmp_path: Path) -> Path:
    folder = tmp_path / "kb"
    folder.mkdir()
    for name in DOCS:
        shutil.copy(SAMPLE_DIR / "kb" / name, folder / name)
    return folder


def retriever(settings: Settings) -> Retriever:
    version = index_store.open_version(settings.paths.index_dir)
    return Retriever(version, load_embedder(settings, version.manifest.embedder_location), settings.retrieval)


def test_chunks_carry_doc_id_position_heading_path_and_fit_the_token_budget(settings: Settings) -> None:
    [doc] = load_file(SAMPLE_DIR / "kb" / "setup-connect-shopify.md", SAMPLE_DIR / "kb")
    tokenizer = load_embedder(settings).tokenizer
    chunks = Chunker(tokenizer, chunk_size=24, chunk_overlap=4).split(doc)
    assert [c.position for c in chunks] == list(range(len(chunks)))
    assert {c.doc_id for c in chunks} == {"setup-connect-shopify"}
    assert chunks[0].heading_path == ("Connecting your Shopify store",)
    assert ("Connecting your Shopify store", "Install the app") in {c.heading_path for c in chunks}
    assert all(len(tokenizer.tokenize(c.text)) <= 24 for c in chunks)
    assert len({c.chunk_id for c in chunks}) == len(chunks) and all(c.chunk_id >= 0 for c in chunks)
    again = Chunker(tokenizer, chunk_size=24, chunk_overlap=4).split(doc)
    assert [c.chunk_id for c in again] == [c.chunk_id for c in chunks], "chunk ids are stable"
    with pytest.raises(ValueError, match="chunk_overlap"):
        Chunker(tokenizer, chunk_size=10, chunk_overlap=10)


def test_first_build_writes_a_complete_version(settings: Settings, kb: Path) -> None:
    report = update_index(settings, [kb])
    assert (report.version, report.mode, report.documents, report.added) == ("v000001", "rebuild", 5, 5)
    assert report.embedded_chunks == report.chunks > 5
    manifest = index_store.read_manifest(settings.paths.index_dir)
    assert manifest is not None and manifest.dim == 32 and manifest.index_type == "flat"
    assert set(manifest.documents) == {Path(n).stem for n in DOCS}
    assert sum(len(d.chunk_ids) for d in manifest.documents.values()) == manifest.num_chunks == report.chunks
    version = index_store.open_version(settings.paths.index_dir)
    assert version.index.ntotal == len(version.chunks) == report.chunks


def test_incremental_update_embeds_only_new_and_changed_documents(settings: Settings, kb: Path) -> None:
    first = update_index(settings, [kb])
    before = index_store.open_version(settings.paths.index_dir)
    vectors_before, ids_before = before.vectors()
    untouched_ids = before.manifest.documents["api-webhooks"].chunk_ids

    noop = update_index(settings, [kb])
    assert (noop.changed_index, noop.version, noop.embedded_chunks) == (False, first.version, 0)

    plans = kb / "billing-plans.md"
    plans.write_text(plans.read_text().replace("$49 per month", "$59 per month"))
    shutil.copy(SAMPLE_DIR / "kb" / "api-sdks.md", kb / "api-sdks.md")
    (kb / "policy-security.html").unlink()
    report = update_index(settings, [kb])
    assert (report.mode, report.added, report.changed, report.removed, report.unchanged) == ("update", 1, 1, 1, 3)
    after = index_store.open_version(settings.paths.index_dir)
    changed_and_new = after.manifest.documents["billing-plans"].chunk_ids + after.manifest.documents["api-sdks"].chunk_ids
    assert report.embedded_chunks == len(changed_and_new) < report.chunks
    assert "policy-security" not in after.manifest.documents
    assert not any(c.doc_id == "policy-security" for c in after.chunks.values())
    # Unchanged documents keep their ids and their exact vectors.
    vectors_after, ids_after = after.vectors()
    row_before = {int(i): n for n, i in enumerate(ids_before)}
    row_after = {int(i): n for n, i in enumerate(ids_after)}
    for cid in untouched_ids:
        assert np.array_equal(vectors_before[row_before[cid]], vectors_after[row_after[cid]])
    hits = retriever(settings).search("Growth plan price per month", k=3, mode="bm25")
    assert hits[0].doc_id == "billing-plans" and "$59 per month" in hits[0].text
    # Document vectors follow the same rule: unchanged rows copied, the changed and new ones embedded.
    doc_before = dict(zip(before.manifest.doc_vector_ids, before.doc_vectors, strict=True))
    doc_after = dict(zip(after.manifest.doc_vector_ids, after.doc_vectors, strict=True))
    assert set(doc_after) == set(after.manifest.documents)
    assert np.array_equal(doc_before["api-webhooks"], doc_after["api-webhooks"])
    from retrieval.embedding import encode
    from retrieval.loaders import load_documents

    new = {d.doc_id: d for d in load_documents([kb])}
    fresh = encode(load_embedder(settings), [new[d].embedding_text() for d in ("billing-plans", "api-sdks")])
    assert np.allclose(np.stack([doc_after["billing-plans"], doc_after["api-sdks"]]), fresh, atol=1e-5)


def test_a_version_without_document_vectors_gets_them_on_the_next_update(settings: Settings, kb: Path) -> None:
    """Indexes written before document vectors existed still search (chunks alone), and the next update
    adds the vectors without re-embedding a chunk."""
    update_index(settings, [kb])
    old = index_store.open_version(settings.paths.index_dir)
    manifest = old.manifest.model_copy(update={"doc_vector_ids": []})
    (old.path / "manifest.json").write_text(manifest.model_dump_json(indent=2))
    (old.path / "doc_vectors.npy").unlink()
    legacy = retriever(settings)
    assert legacy.version.doc_vectors is None and legacy.search("Growth plan price", k=2, mode="dense")
    report = update_index(settings, [kb])
    assert report.changed_index and report.embedded_chunks == 0
    upgraded = index_store.open_version(settings.paths.index_dir)
    assert upgraded.doc_vectors is not None and len(upgraded.manifest.doc_vector_ids) == len(DOCS)


def test_crash_mid_build_leaves_the_previous_version_serving(
    settings: Settings, kb: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    update_index(settings, [kb])
    (kb / "ts-void-label.md").write_text("# Voiding\n\nLabels can no longer be voided.\n")

    def crash(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt("power cut while writing the new version")

    monkeypatch.setattr("bm25s.BM25.save", crash)  # dies after the FAISS file, before the manifest
    with pytest.raises(KeyboardInterrupt):
        update_index(settings, [kb])
    assert index_store.current_version(settings.paths.index_dir) == "v000001"
    assert not list(index_store.versions_dir(settings.paths.index_dir).glob(".staging-*"))
    hits = retriever(settings).search("void a label", k=2, mode="bm25")
    assert hits and "no longer" not in hits[0].text
    monkeypatch.undo()
    assert update_index(settings, [kb]).version == "v000002"


def test_activation_is_atomic_and_old_versions_are_pruned(settings: Settings, kb: Path) -> None:
    for n in range(3):
        (kb / "extra.md").write_text(f"# Extra\n\nrevision {n}\n")
        update_index(settings, [kb])
    versions = sorted(p.name for p in index_store.versions_dir(settings.paths.index_dir).iterdir())
    assert versions == ["v000002", "v000003"]  # keep_versions = 2
    assert index_store.current_version(settings.paths.index_dir) == "v000003"
    index_store.activate(settings.paths.index_dir, "v000002")  # roll back
    assert index_store.open_version(settings.paths.index_dir).name == "v000002"
    with pytest.raises(NotFoundError):
        index_store.activate(settings.paths.index_dir, "v000001")


def test_embedder_mismatch_is_refused_until_rebuild(settings: Settings, kb: Path, tmp_path: Path) -> None:
    update_index(settings, [kb])
    other = build_tiny_sentence_transformer(tmp_path / "other-embedder", seed=1)
    other_settings = settings.model_copy(update={"models": settings.models.model_copy(update={"embedder": str(other)})})
    with pytest.raises(ConflictError, match="cannot be mixed.*--rebuild"):
        update_index(other_settings, [kb])
    assert index_store.current_version(settings.paths.index_dir) == "v000001"
    report = update_index(other_settings, [kb], rebuild=True)
    assert (report.mode, report.embedded_chunks) == ("rebuild", report.chunks)
    assert index_store.read_manifest(settings.paths.index_dir).embedder_location == str(other)


@pytest.mark.parametrize(
    ("name", "content"),
    [("empty.md", b""), ("binary.md", b"\x00\x01\x02\xff"), ("broken.pdf", b"%PDF-1.7 garbage"),
     ("faq.jsonl", b'{"id": "x", "answer": "y"}\n')],
)
def test_malformed_input_leaves_the_existing_index_untouched(
    settings: Settings, kb: Path, name: str, content: bytes
) -> None:
    update_index(settings, [kb])
    manifest_file = index_store.versions_dir(settings.paths.index_dir) / "v000001" / "manifest.json"
    before = manifest_file.read_bytes()
    (kb / name).write_bytes(content)
    with pytest.raises(InvalidInputError, match=name.replace(".", r"\.")):
        update_index(settings, [kb])
    assert index_store.current_version(settings.paths.index_dir) == "v000001"
    assert manifest_file.read_bytes() == before
    assert [p.name for p in index_store.versions_dir(settings.paths.index_dir).iterdir()] == ["v000001"]


def test_concurrent_reindex_is_rejected_with_a_clear_message(settings: Settings, kb: Path) -> None:
    with index_store.writer_lock(settings.paths.index_dir), pytest.raises(ConflictError, match="another reindex"):
        update_index(settings, [kb])
    assert update_index(settings, [kb]).version == "v000001"


def test_empty_source_folder_is_an_error(settings: Settings, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidInputError, match="no supported documents"):
        update_index(settings, [tmp_path / "empty"])


def test_opening_without_an_index_says_what_to_run(settings: Settings) -> None:
    with pytest.raises(NotFoundError, match="run `tunerag index` first"):
        index_store.open_version(settings.paths.index_dir)


def test_fingerprint_follows_weight_contents_not_just_sizes(tmp_path: Path) -> None:
    from retrieval.embedding import embedder_fingerprint

    a = build_tiny_sentence_transformer(tmp_path / "a" / "model", seed=1)
    b = build_tiny_sentence_transformer(tmp_path / "b" / "model", seed=2)
    assert embedder_fingerprint(str(a)) != embedder_fingerprint(str(b)), "same architecture, different weights"
    assert embedder_fingerprint(str(a)) == embedder_fingerprint(str(a))
