"""Public FAQs written by their own projects, from Debian's packages (a registry this project reaches):

* ``python-faq``: the Python FAQ (python3.11-doc, PSF licence): ~170 questions, long answers with code;
* ``debian-faq``: the Debian GNU/Linux FAQ (debian-faq, GPL-2+): ~100 questions, medium answers;
* ``sqlite-faq``: the SQLite FAQ (sqlite3-doc, public domain): 28 questions, long answers.

Each package is fetched with ``apt-get download`` and unpacked with ``dpkg-deb -x`` into a cache folder (no
root, nothing installed); an installed copy under /usr/share/doc is used when present. Entries are
``{"id", "q", "a", "title"}``: the question is the FAQ's own heading, the answer its body, the title its chapter.
"""

from __future__ import annotations

import gzip
import hashlib
import html
import os
import re
import subprocess
from pathlib import Path

CACHE = Path(os.environ.get("TUNERAG_BENCH_CACHE", Path.home() / ".cache" / "tunerag-bench")) / "debian"
PACKAGES = {"python-faq": "python3.11-doc", "debian-faq": "debian-faq", "sqlite-faq": "sqlite3-doc"}


def package_root(package: str) -> tuple[Path, str]:
    """A folder holding the package's files (``usr/share/doc/...`` below it) and the package's version."""
    version = subprocess.run(["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True)
    if version.returncode == 0 and version.stdout.strip():
        return Path("/"), version.stdout.strip()
    target = CACHE / package
    if not (target / "done").is_file():
        target.mkdir(parents=True, exist_ok=True)
        subprocess.run(["apt-get", "download", package], cwd=target, check=True, capture_output=True)
        deb = next(target.glob(f"{package}_*.deb"))
        subprocess.run(["dpkg-deb", "-x", str(deb), str(target / "root")], check=True)
        (target / "done").write_text(deb.name)
    deb_name = (target / "done").read_text()
    return target / "root", deb_name.split("_")[1]


def _entry(prefix: str, question: str, answer: str, title: str) -> dict:
    question = " ".join(question.split())
    digest = hashlib.sha1(question.encode()).hexdigest()[:8]
    return {"id": f"{prefix}-{digest}", "q": question, "a": answer.strip(), "title": title}


_RST_ROLE = re.compile(r":(?:ref|func|mod|class|meth|data|attr|exc|const|option|envvar|pep|file|term|c:\w+):`~?([^`<]*?)(?:\s*<[^>]*>)?`")
_RST_LINK = re.compile(r"`([^`<]+?)\s*<[^>]+>`_+")


def _rst_text(text: str) -> str:
    text = _RST_ROLE.sub(r"\1", text)
    text = _RST_LINK.sub(r"\1", text)
    return text.replace("``", "").replace("::\n", ":\n")


def python_faq(root: Path) -> list[dict]:
    entries = []
    for path in sorted((root / "usr/share/doc/python3.11/html/_sources/faq").glob("*.rst.txt")):
        lines = path.read_text().splitlines()
        chapter, question, body = path.stem.removesuffix(".rst").capitalize(), None, []
        for n, line in enumerate(lines):
            underline = lines[n + 1] if n + 1 < len(lines) else ""
            is_heading = line.strip() and underline and set(underline) <= set("=-~^") and len(underline) >= len(line.strip())
            if is_heading or set(line) <= set("=-~^") and line:
                if is_heading:
                    if question:
                        entries.append(_entry("py", question, _rst_text("\n".join(body)), chapter))
                    question, body = (line.strip() if "?" in line else None), []
                    if "?" not in line and underline.startswith("="):
                        chapter = line.strip()
                continue
            if question is not None:
                body.append(line)
        if question:
            entries.append(_entry("py", question, _rst_text("\n".join(body)), chapter))
    return [e for e in entries if len(e["a"]) > 40]


def debian_faq(root: Path) -> list[dict]:
    text = gzip.decompress((root / "usr/share/doc/debian/FAQ/debian-faq.en.txt.gz").read_bytes()).decode().replace("\xa0", " ")
    body_text = text[text.index("\nChapter 1."):]
    entries, chapter, question, body, asked_in = [], "", None, [], ""
    lines = body_text.splitlines()
    n = 0
    while n < len(lines):
        line = lines[n]
        if line.startswith("Chapter "):
            chapter = line.split(".", 1)[1].strip()
        elif re.match(r"^\d+\.\d+(\.\d+)*\. ", line):
            if question:
                entries.append(_entry("deb", question, "\n".join(body), asked_in))
            asked_in = chapter
            heading = [line.split(". ", 1)[1]]
            while n + 1 < len(lines) and lines[n + 1].strip() and not lines[n + 1].startswith(" "):
                n += 1
                heading.append(lines[n])
            joined = " ".join(heading)
            question, body = (joined if "?" in joined else None), []
        elif question is not None:
            body.append(line.strip())
        n += 1
    if question:
        entries.append(_entry("deb", question, "\n".join(body), asked_in))
    return [e for e in entries if len(e["a"]) > 40]


def sqlite_faq(root: Path) -> list[dict]:
    from bs4 import BeautifulSoup

    page = BeautifulSoup((root / "usr/share/doc/sqlite3/faq.html").read_text(errors="replace"), "html.parser")
    entries = []
    for anchor in page.find_all("a", attrs={"name": re.compile(r"^q\d+$")}):
        heading = anchor.find_next("p")
        answer = heading.find_next_sibling("blockquote") if heading else None
        if not heading or not answer:
            continue
        question = re.sub(r"^\(\d+\)\s*", "", heading.get_text(" ", strip=True))
        entries.append(_entry("sqlite", html.unescape(question), answer.get_text("\n", strip=False), "SQLite FAQ"))
    return entries


PARSERS = {"python-faq": python_faq, "debian-faq": debian_faq, "sqlite-faq": sqlite_faq}


def load(name: str) -> tuple[list[dict], str]:
    """The entries of one of :data:`PACKAGES` and where they come from (package and version)."""
    package = PACKAGES[name]
    root, version = package_root(package)
    entries = PARSERS[name](root)
    seen, unique = set(), []
    for e in entries:  # a question asked twice in one FAQ keeps its first answer
        if e["id"] not in seen:
            seen.add(e["id"])
            unique.append(e)
    return unique, f"Debian package {package} {version}"
