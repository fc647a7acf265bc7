"""Document loaders: Markdown, plain text, HTML (main content only), PDF and FAQ JSONL.

``load_documents(paths)`` walks files and folders and returns every document, or raises
:class:`core.errors.InvalidInputError` naming the first bad file (and line). Nothing is written here, so a
bad input can never touch an existing index.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from core.errors import InvalidInputError
from core.jsonl import read_jsonl
from core.prompt import doc_id_from_path, validate_doc_id
from core.safe_yaml import load_yaml
from retrieval.documents import Document

logger = logging.getLogger(__name__)

TEXT_SUFFIXES = {".md": "markdown", ".markdown": "markdown", ".txt": "text", ".html": "html", ".htm": "html"}
SUFFIXES = {**TEXT_SUFFIXES, ".pdf": "pdf", ".jsonl": "faq"}

_FRONT_MATTER = re.compile(r"\A---\s*\n(.*?)\n---\s*\n", re.DOTALL)
MAX_TITLE_CHARS = 300
_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$", re.MULTILINE)
# Page furniture that is not the article: removed before extracting HTML text.
_HTML_DROP_TAGS = ("script", "style", "noscript", "nav", "header", "footer", "aside", "form", "button", "svg",
                   "iframe", "template")
_HTML_DROP_HINTS = re.compile(r"cookie|breadcrumb|sidebar|banner|navbar|menu|skip-link", re.IGNORECASE)
_HTML_BLOCKS = ("h1", "h2", "h3", "h4", "h5", "h6", "p", "li", "pre", "tr", "dt", "dd", "blockquote")


def _mtime(path: Path) -> str:
    return datetime.fromtimestamp(path.stat().st_mtime, tz=timezone.utc).isoformat(timespec="seconds")


def _read_text(path: Path) -> str:
    data = path.read_bytes()
    if b"\x00" in data[:8192]:
        raise InvalidInputError(f"{path}: binary content in a {path.suffix} file; expected UTF-8 text")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InvalidInputError(f"{path}: not valid UTF-8 text ({exc.reason} at byte {exc.start})") from None
    if not text.strip():
        raise InvalidInputError(f"{path}: file is empty")
    return text


def _doc_id(path: Path, root: Path | None, explicit: object = None) -> str:
    """An explicit id (front matter, ``<meta name="doc-id">``) must follow the grammar; else one from the path."""
    if explicit is not None and str(explicit).strip():
        return validate_doc_id(str(explicit).strip(), str(path))
    relative = path.relative_to(root) if root is not None else Path(path.name)
    return doc_id_from_path(relative.with_suffix("").as_posix())


def _title(path: Path, title: object, *, explicit: bool = False) -> str:
    """One-line title; an explicit (front-matter) title over the limit is an error, a derived one is cut."""
    text = " ".join(str(title).split())
    if len(text) <= MAX_TITLE_CHARS:
        return text
    if not explicit:
        return text[:MAX_TITLE_CHARS]
    raise InvalidInputError(f"{path}: title of {len(text)} characters exceeds the {MAX_TITLE_CHARS}-character limit")
    return text


def _scalar_metadata(raw: dict[str, Any], skip: Iterable[str]) -> dict[str, Any]:
    return {k: v for k, v in raw.items() if k not in skip and isinstance(v, str | int | float | bool)}


def load_markdown(path: Path, root: Path | None = None) -> Document:
    text = _read_text(path)
    front: dict[str, Any] = {}
    match = _FRONT_MATTER.match(text)
    if match:
        front = load_yaml(match.group(1), where=f"{path}: front matter") or {}
        if not isinstance(front, dict):
            raise InvalidInputError(f"{path}: front matter must be a mapping of key: value")
        text = text[match.end() :]
        if not text.strip():
            raise InvalidInputError(f"{path}: file has front matter but no content")
    heading = _HEADING.search(text)
    if front.get("title"):
        title = _title(path, front["title"], explicit=True)
    else:
        title = _title(path, heading.group(2) if heading else path.stem.replace("-", " "))
    return Document(
        doc_id=_doc_id(path, root, front.get("id")),
        text=text.strip(),
        title=title,
        source=str(path),
        format="markdown",
        updated_at=str(front.get("updated") or _mtime(path)),
        metadata=_scalar_metadata(front, ("id", "title", "updated")),
    )


def load_text(path: Path, root: Path | None = None) -> Document:
    text = _read_text(path)
    first_line = text.strip().splitlines()[0].strip()
    return Document(_doc_id(path, root), text.strip(), first_line[:120], str(path), "text", _mtime(path))


def html_to_text(markup: str) -> tuple[str, str | None, dict[str, str]]:
    """Main text of an HTML page as Markdown-flavoured text, its title, and its ``<meta>`` values."""
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(markup, "lxml")
    meta = {m["name"]: m.get("content", "") for m in soup.find_all("meta") if m.get("name")}
    page_title = soup.title.get_text(" ", strip=True) if soup.title else None
    for tag in soup.find_all(_HTML_DROP_TAGS):
        tag.decompose()
    for tag in soup.find_all(attrs={"class": _HTML_DROP_HINTS}) + soup.find_all(attrs={"id": _HTML_DROP_HINTS}):
        if not tag.decomposed:
            tag.decompose()
    root = soup.find("main") or soup.find("article") or soup.body or soup
    lines: list[str] = []
    counters: dict[int, int] = {}
    for el in root.find_all(_HTML_BLOCKS):
        if el.find_parent(_HTML_BLOCKS) is not None:
            continue  # nested block (e.g. <p> in <li>): its text is part of the parent
        text = " ".join(el.get_text(" ", strip=True).split())
        if not text:
            continue
        name = el.name
        if name[0] == "h" and name[1:].isdigit():
            lines += ["", f"{'#' * int(name[1:])} {text}", ""]
        elif name == "li":
            parent = el.find_parent(["ol", "ul"])
            if parent is not None and parent.name == "ol":
                counters[id(parent)] = counters.get(id(parent), 0) + 1
                lines.append(f"{counters[id(parent)]}. {text}")
            else:
                lines.append(f"- {text}")
        elif name == "tr":
            lines.append(" | ".join(c.get_text(" ", strip=True) for c in el.find_all(["th", "td"])))
        else:
            lines += [text, ""]
    body = re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()
    heading = _HEADING.search(body)
    title = heading.group(2) if heading else (page_title.split(" | ")[0] if page_title else None)
    return body, title, meta


def load_html(path: Path, root: Path | None = None) -> Document:
    body, title, meta = html_to_text(_read_text(path))
    if not body:
        raise InvalidInputError(f"{path}: no readable text in the page's main content")
    return Document(
        doc_id=_doc_id(path, root, meta.get("doc-id")),
        text=body,
        title=_title(path, title or path.stem.replace("-", " ")),
        source=str(path),
        format="html",
        updated_at=meta.get("updated") or _mtime(path),
        metadata={k: v for k, v in meta.items() if k in ("category", "description", "keywords")},
    )


def load_pdf(path: Path, root: Path | None = None) -> Document:
    from pypdf import PdfReader
    from pypdf.errors import PyPdfError  # PdfReadError and the other pypdf errors derive from it

    if path.stat().st_size == 0:
        raise InvalidInputError(f"{path}: file is empty")
    try:
        reader = PdfReader(path)
        pages = [page.extract_text() or "" for page in reader.pages]
        info_title = reader.metadata.title if reader.metadata else None
    except (PyPdfError, ValueError, KeyError, TypeError, OSError, RecursionError) as exc:
        raise InvalidInputError(f"{path}: cannot read PDF ({exc.__class__.__name__}: {exc})") from None
    text = "\n\n".join(p.strip() for p in pages if p.strip())
    if not text:
        raise InvalidInputError(f"{path}: PDF has no extractable text (scanned images need OCR first)")
    title = str(info_title).strip() if info_title else text.splitlines()[0].strip()[:120]
    return Document(_doc_id(path, root), text, title, str(path), "pdf", _mtime(path), {"pages": len(pages)})


def load_faq_jsonl(path: Path, root: Path | None = None) -> list[Document]:
    """One document per line: ``{"id", "question", "answer", ...}``; other scalar keys become metadata."""
    documents = []
    for n, row in read_jsonl(path, _read_text(path)):
        missing = [k for k in ("id", "question", "answer") if not str(row.get(k) or "").strip()]
        if missing:
            raise InvalidInputError(f"{path}:{n}: FAQ line needs 'id', 'question' and 'answer'; missing {missing}")
        question, answer = str(row["question"]).strip(), str(row["answer"]).strip()
        documents.append(Document(
            doc_id=validate_doc_id(str(row["id"]).strip(), f"{path}:{n}"),
            text=f"# {question}\n\n{answer}",
            title=question,
            source=f"{path}#L{n}",
            format="faq",
            updated_at=str(row.get("updated") or _mtime(path)),
            metadata=_scalar_metadata(row, ("id", "question", "answer", "updated")),
        ))
    return documents


_LOADERS = {"markdown": load_markdown, "text": load_text, "html": load_html, "pdf": load_pdf}


def load_file(path: Path, root: Path | None = None) -> list[Document]:
    """Load one file by its suffix. Raises InvalidInputError for unsupported or malformed files."""
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise InvalidInputError(f"{path}: unsupported file type {path.suffix!r}; supported: {sorted(SUFFIXES)}")
    if kind == "faq":
        return load_faq_jsonl(path, root)
    return [_LOADERS[kind](path, root)]


def iter_files(paths: Iterable[Path]) -> Iterator[tuple[Path, Path | None]]:
    """Every supported file under ``paths`` with the root its doc id is relative to, in a stable order."""
    for path in paths:
        path = Path(path)
        if path.is_file():
            yield path, None
        elif path.is_dir():
            for file in sorted(path.rglob("*")):
                hidden = any(part.startswith(".") for part in file.relative_to(path).parts)
                if file.is_file() and not hidden and file.suffix.lower() in SUFFIXES:
                    yield file, path
        else:
            raise InvalidInputError(f"{path}: no such file or folder")


def load_documents(paths: Iterable[Path]) -> list[Document]:
    """Load every document under ``paths``.

    Raises:
        InvalidInputError: a file is malformed, or two files give the same doc id; names the files.
    """
    documents: dict[str, Document] = {}
    for file, root in iter_files(paths):
        for doc in load_file(file, root):
            if doc.doc_id in documents:
                raise InvalidInputError(
                    f"duplicate document id {doc.doc_id!r}: {documents[doc.doc_id].source} and {doc.source}"
                )
            documents[doc.doc_id] = doc
    logger.info("loaded %d documents from %s", len(documents), ", ".join(str(p) for p in paths))
    return list(documents.values())
