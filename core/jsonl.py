"""Reading JSONL files with errors that name the file and line (every data format of tunerag is JSONL)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from core.errors import InvalidInputError


def read_jsonl(path: Path, text: str | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line_number, object)`` for each non-blank line.

    Raises:
        InvalidInputError: the file is missing, a line is not JSON, or not a JSON object (``path:line: ...``).
    """
    if text is None:
        if not path.is_file():
            raise InvalidInputError(f"{path}: no such file")
        text = path.read_text(encoding="utf-8")
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InvalidInputError(f"{path}:{n}: invalid JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise InvalidInputError(f"{path}:{n}: expected a JSON object, got {type(row).__name__}")
        yield n, row
