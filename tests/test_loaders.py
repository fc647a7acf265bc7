from __future__ import annotations

import json
from pathlib import Path

import pytest
from files import write_pdf

from core.errors import InvalidInputError
from core.settings import SAMPLE_DIR
from retrieval.loaders import load_documents, load_file


def test_markdown_front_matter_gives_id_title_and_metadata() -> None:
    [doc] = load_file(SAMPLE_DIR / "kb" / "billing-plans.md", SAMPLE_DIR / "kb")
    assert (doc.doc_id, doc.title, doc.format) == ("billing-plans", "Plans and pricing", "markdown")
    assert doc.metadata == {"category": "billing"}
    assert doc.updated_at.startswith("2026-")
    assert not doc.text.startswith("---") and "## Growth plan" in doc.text
    assert len(doc.content_hash) == 64


def test_markdown_without_front_matter_uses_path_and_first_heading(tmp_path: Path) -> None:
    (tmp_path / "guides").mkdir()
    (tmp_path / "guides" / "printing.md").write_text("# Printing labels\n\nUse 4x6 labels.\n")
    [doc] = load_documents([tmp_path])
    assert (doc.doc_id, doc.title) == ("guides/printing", "Printing labels")


def test_html_keeps_main_text_and_drops_navigation() -> None:
    [doc] = load_file(SAMPLE_DIR / "kb" / "setup-connect-woocommerce.html", SAMPLE_DIR / "kb")
    assert doc.doc_id == "setup-connect-woocommerce" and doc.title == "Connecting WooCommerce"
    assert "## Install the plugin" in doc.text
    assert "1. In WordPress, go to Plugins > Add New" in doc.text and "3. Paste the connection key" in doc.text
    for furniture in ("Help Center", "Privacy", "cookies", "Was this article helpful", "Home", "analytics"):
        assert furniture not in doc.text
    assert doc.metadata == {"category": "setup"}


def test_plain_text_title_is_its_first_line(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("Holiday shipping cut-offs\n\nOrder by Dec 18 for delivery.\n")
    [doc] = load_file(tmp_path / "notes.txt")
    assert (doc.doc_id, doc.title, doc.format) == ("notes", "Holiday shipping cut-offs", "text")


def test_pdf_text_and_title_are_extracted(tmp_path: Path) -> None:
    write_pdf(tmp_path / "carrier-terms.pdf", ["Carrier terms", "Claims must be filed within 60 days."],
              title="Carrier terms 2026")
    [doc] = load_file(tmp_path / "carrier-terms.pdf")
    assert doc.title == "Carrier terms 2026" and doc.format == "pdf"
    assert "Claims must be filed within 60 days." in doc.text


def test_faq_jsonl_gives_one_document_per_line(tmp_path: Path) -> None:
    rows = [{"id": "faq-1", "question": "Do you ship on Sundays?", "answer": "No.", "category": "shipping"},
            {"id": "faq-2", "question": "Is there an API?", "answer": "Yes, v2.", "tags": ["x"]}]
    (tmp_path / "faq.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    docs = load_file(tmp_path / "faq.jsonl")
    assert [d.doc_id for d in docs] == ["faq-1", "faq-2"]
    assert docs[0].text == "# Do you ship on Sundays?\n\nNo." and docs[0].metadata == {"category": "shipping"}
    assert docs[1].source.endswith("faq.jsonl#L2")


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("empty.md", b"", "file is empty"),
        ("blank.txt", b"  \n\n ", "file is empty"),
        ("binary.md", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "binary content"),
        ("latin1.md", "caf\xe9".encode("latin-1"), "not valid UTF-8"),
        ("broken.pdf", b"%PDF-1.4\nthis is not really a pdf", "cannot read PDF"),
        ("faq.jsonl", b'{"id": "a", "answer": "no question"}\n', r"faq\.jsonl:1: .*missing \['question'\]"),
        ("bad.jsonl", b'{"id": "a", "question": "q", "answer": "a"}\n{not json\n', r"bad\.jsonl:2: invalid JSON"),
        ("only-front.md", b"---\ntitle: x\n---\n", "front matter but no content"),
        ("page.html", b"<html><body><nav>Home</nav></body></html>", "no readable text"),
        ("report.docx", b"PK\x03\x04", "unsupported file type"),
    ],
)
def test_malformed_inputs_name_the_file(tmp_path: Path, name: str, content: bytes, message: str) -> None:
    (tmp_path / name).write_bytes(content)
    with pytest.raises(InvalidInputError, match=message) as excinfo:
        load_file(tmp_path / name)
    assert name in str(excinfo.value)


def test_duplicate_ids_across_files_are_refused(tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_text('{"id": "same", "question": "q", "answer": "a"}\n')
    (tmp_path / "b.jsonl").write_text('{"id": "same", "question": "q2", "answer": "a2"}\n')
    with pytest.raises(InvalidInputError, match="duplicate document id 'same'"):
        load_documents([tmp_path])


def test_missing_path_and_hidden_or_unsupported_files(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="no such file or folder"):
        load_documents([tmp_path / "nope"])
    (tmp_path / ".hidden.md").write_text("# secret")
    (tmp_path / "image.png").write_bytes(b"\x89PNG")
    (tmp_path / "ok.md").write_text("# ok\n\ntext")
    assert [d.doc_id for d in load_documents([tmp_path])] == ["ok"]
