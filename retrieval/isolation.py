"""Parsing untrusted files in a child process, within a time and a memory budget.

A hostile upload (a PDF whose content stream makes pypdf's text extraction run for minutes, HTML that
balloons in lxml, a decompression bomb) must cost at most its budget and never the service: pure-Python
parsers hold the GIL, so a worker *thread* would still stall the event loop. Each file is parsed by
:func:`retrieval.loaders.load_file` in a process forked from a clean fork server (no model weights, no
threads), at the lowest CPU priority, with ``RLIMIT_AS`` capping its memory; past its time it is killed.

Use :func:`load_file_isolated` for anything that arrives over the API; trusted folders on the operator's
disk are loaded in-process by the indexer.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import multiprocessing
import os
import resource
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

from core.errors import InvalidInputError
from retrieval.documents import Document

logger = logging.getLogger(__name__)

# Modules the fork server imports once, so each parse starts warm (~10 ms instead of ~300 ms).
_PRELOAD = ["retrieval.loaders", "pypdf", "bs4", "lxml.etree"]


@dataclass(frozen=True)
class ParseBudget:
    """Limits for parsing one file.

    Args:
        timeout_s: wall-clock seconds before the parser is killed.
        memory_bytes: address space the parser may add to its own start size (``RLIMIT_AS``).
    """

    timeout_s: float = 20.0
    memory_bytes: int = 1024 * 1024 * 1024

    def __post_init__(self) -> None:
        if self.timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {self.timeout_s}")
        if self.memory_bytes < 16 * 1024 * 1024:
            raise ValueError(f"memory_bytes must be at least 16 MiB, got {self.memory_bytes}")


@functools.cache
def _mp_context() -> multiprocessing.context.BaseContext:
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(_PRELOAD)
        return ctx
    return multiprocessing.get_context("spawn")  # macOS/Windows: slower to start, same isolation


def _address_space() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0


def _child(conn: Connection, path: str, root: str | None, memory_bytes: int) -> None:
    """Runs in the child: lowest CPU priority, capped memory; parse, send back ``("ok", docs)`` or
    ``("error", message)``."""
    with contextlib.suppress(OSError):  # below chat and the event loop: only the CPU nobody else wants
        os.nice(19)
    try:
        limit = _address_space() + memory_bytes
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    except (ValueError, OSError):  # platforms without RLIMIT_AS: the time budget still applies
        pass
    try:
        from retrieval.loaders import load_file

        docs = load_file(Path(path), Path(root) if root is not None else None)
        conn.send(("ok", docs))
    except InvalidInputError as exc:
        conn.send(("error", str(exc)))
    except MemoryError:
        conn.send(("memory", ""))
    except RecursionError:
        conn.send(("error", f"{path}: structure nested too deeply to parse"))
    except Exception as exc:  # a parser bug on a crafted file: report it as a bad file, not a server error
        conn.send(("error", f"{path}: cannot parse ({type(exc).__name__})"))
    finally:
        conn.close()


def load_file_isolated(path: Path, root: Path | None, budget: ParseBudget, *, name: str | None = None) -> list[Document]:
    """:func:`retrieval.loaders.load_file` in a child process limited by ``budget``.

    ``name`` is what error messages call the file (the uploaded name rather than a staging path).

    Raises:
        InvalidInputError: the file is malformed, or parsing it exceeded the time or memory budget.
    """
    label = name or str(path)
    ctx = _mp_context()
    receiver, sender = ctx.Pipe(duplex=False)
    process = ctx.Process(target=_child, args=(sender, str(path), str(root) if root else None, budget.memory_bytes),
                          name=f"tunerag-parse-{Path(label).name}", daemon=True)
    process.start()
    sender.close()
    try:
        if not receiver.poll(budget.timeout_s):
            process.kill()
            process.join()
            logger.warning("parsing %s exceeded its %.0f s budget; killed", label, budget.timeout_s)
            raise InvalidInputError(f"{label}: parsing exceeded the {budget.timeout_s:g} s time limit "
                                    "(server.parse_timeout_s); the file was rejected")
        try:
            status, payload = receiver.recv()
        except (EOFError, OSError):  # the child died (out of memory inside C code, killed by the OS)
            status, payload = "memory", ""
    finally:
        receiver.close()
        process.join(timeout=5)
        if process.is_alive():
            process.kill()
            process.join()
    if status == "ok":
        return payload
    if status == "memory":
        logger.warning("parsing %s exceeded its memory budget", label)
        raise InvalidInputError(f"{label}: parsing exceeded the {budget.memory_bytes // 2**20} MiB memory limit "
                                "(server.parse_memory_mb); the file was rejected")
    # Messages name the staging path; callers want the uploaded name.
    raise InvalidInputError(payload.replace(str(path), label))
