"""Helpers several test modules share: a browser that CI must have, and /health polled during an attack."""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest


def require_chromium(what: str) -> str:
    """Debian's chromium, or a skip naming ``what`` (a failure in CI, where .ci/run installs it)."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing in CI: .ci/run should have installed Debian's chromium")
        pytest.skip(f"no chromium on this machine: `apt-get install chromium` to run {what}")
    return chromium


def health_answers_during(client: Any, attack: Callable[[], Any], pause_s: float = 0.02) -> tuple[Any, int]:
    """Run ``attack()`` in a thread and poll ``/health`` meanwhile: (what the attack returned, how many polls
    were answered with 200 while it was still running)."""
    result: dict[str, Any] = {}
    worker = threading.Thread(target=lambda: result.update(value=attack()))
    worker.start()
    answered = 0
    while worker.is_alive():
        if client.get("/health").status_code == 200 and worker.is_alive():
            answered += 1
        time.sleep(pause_s)
    worker.join()
    return result.get("value"), answered
