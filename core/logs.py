"""Process-wide logging set-up shared by the CLI and the API."""

from __future__ import annotations

import logging
import sys

# Libraries that log at WARNING for conditions that are normal here (e.g. bitsandbytes on a CPU machine),
# or at INFO for what only their developers need (alembic's plugin registry, advanced-alchemy's set-up).
_QUIET = ("bitsandbytes", "httpx", "faiss.loader", "sentence_transformers.base.model", "alembic",
          "advanced_alchemy", "aiosqlite", "multipart", "python_multipart")


def configure_logging(level: str = "INFO") -> None:
    """Log to stderr with timestamps; quiet the noisy third-party loggers unless debugging."""
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if level != "DEBUG":
        for name in _QUIET:
            logging.getLogger(name).setLevel(logging.ERROR)
