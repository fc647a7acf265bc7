"""Dynamic batching in the local backend, and the API as a real uvicorn process."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from helpers import free_port

from core.prompt import build_prompt, load_template
from core.settings import Settings
from inference.backends import LocalBackend
from inference.engine import GenerationEngine


def test_concurrent_requests_share_one_generate_call_per_adapter(settings: Settings) -> None:
    engine = GenerationEngine.from_settings(settings)
    calls: list[tuple[int, str | None]] = []
    original = engine.generate

    def spy(prompts, adapter=None, **kwargs):
        calls.append((len(prompts), adapter))
        return original(prompts, adapter, **kwargs)

    engine.generate = spy  # type: ignore[method-assign]
    template = load_template(settings)
    prompts = [build_prompt(template, engine.tokenizer, f"Question number {i}?") for i in range(6)]
    config = settings.generation.model_copy(update={"batch_wait_ms": 200, "batch_size": 8, "max_new_tokens": 3})

    async def run(batching: bool) -> list:
        backend = LocalBackend(engine, config, batching=batching)
        try:
            return await asyncio.gather(*(backend.generate(p, None, None, None) for p in prompts))
        finally:
            await backend.close()

    batched = asyncio.run(run(True))
    assert calls == [(6, None)]
    calls.clear()
    single = asyncio.run(run(False))
    assert calls == [(1, None)] * 6
    assert [g.text for g in batched] == [g.text for g in single]


@pytest.mark.slow
def test_real_uvicorn_process_serves_and_shuts_down_gracefully(tmp_path: Path, tiny_generator_dir: Path,
                                                               tiny_embedder_dir: Path) -> None:
    port = free_port()
    env = {**os.environ, "TUNERAG_DATA_DIR": str(tmp_path / "var"), "TUNERAG_MODELS__GENERATOR": str(tiny_generator_dir),
           "TUNERAG_MODELS__EMBEDDER": str(tiny_embedder_dir), "TUNERAG_GENERATION__MAX_NEW_TOKENS": "64"}
    proc = subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "--port", str(port)], env=env,
                            cwd=Path(__file__).parent.parent, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while time.time() < deadline:
            try:
                if httpx.get(f"{base}/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, proc.stdout.read()
            time.sleep(0.3)
        else:
            raise AssertionError("server did not become ready")
        r = httpx.post(f"{base}/v1/chat", json={"question": "How do I void a label?"}, timeout=60)
        assert r.status_code == 200 and r.json()["index_version"] == "v000001"

        # A streaming answer in flight when SIGTERM arrives still completes.
        events: list[str] = []

        def stream() -> None:
            with httpx.stream("POST", f"{base}/v1/chat", json={"question": "Tell me about returns", "stream": True},
                              timeout=60) as s:
                for line in s.iter_lines():
                    events.append(line)

        worker = threading.Thread(target=stream)
        worker.start()
        time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        worker.join(timeout=60)
        # uvicorn re-raises the captured SIGTERM after its graceful shutdown, hence -15 rather than 0.
        assert proc.wait(timeout=60) in (0, -signal.SIGTERM)
        output = proc.stdout.read()
        assert any(line.startswith("event: done") for line in events), (events[-3:], output[-2000:])
        assert "Waiting for connections to close" in output or "Application shutdown complete" in output, output[-2000:]
        assert "Application shutdown complete" in output
    finally:
        if proc.poll() is None:
            proc.kill()
    data = json.loads((tmp_path / "var" / "index" / "versions" / "v000001" / "manifest.json").read_text())
    assert data["num_chunks"] > 0
