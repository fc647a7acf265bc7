"""Print pip constraints pinning the named dependencies of pyproject.toml to their declared lower bounds.

    python bench/floors.py transformers trl ...   (used by `make test-floors`)
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parent.parent


def floors(names: set[str]) -> list[str]:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    out = []
    for dep in deps:
        match = re.match(r"([A-Za-z0-9_.-]+)(?:\[.*?\])?\s*>=\s*([^,;\s]+)", dep)
        if match and match.group(1).lower() in names:
            out.append(f"{match.group(1)}=={match.group(2)}")
    return out


if __name__ == "__main__":
    print("\n".join(floors({n.lower() for n in sys.argv[1:]})))
