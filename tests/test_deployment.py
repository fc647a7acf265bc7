"""The shipped deployment as shipped: the Dockerfile's own install and start commands, run without Docker
(no engine on this machine) in a fresh virtual environment, against a real PostgreSQL as compose.yaml uses."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import tomllib
import yaml
from helpers import free_port

ROOT = Path(__file__).parent.parent
DOCKERFILE = ROOT / "docker" / "Dockerfile"


def dockerfile_lines(instruction: str) -> list[str]:
    return [line.split(None, 1)[1].strip() for line in DOCKERFILE.read_text().splitlines()
            if line.startswith(f"{instruction} ")]


def test_the_image_copies_every_package_and_installs_the_driver_compose_uses() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = [p.rstrip("*") for p in project["tool"]["setuptools"]["packages"]["find"]["include"]]
    copied = {line.split()[0] for line in dockerfile_lines("COPY")}
    assert set(packages) <= copied, f"packages the image would lack: {sorted(set(packages) - copied)}"
    compose = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
    url = compose["services"]["api"]["environment"]["TUNERAG_SERVER__DATABASE_URL"]
    assert url.startswith("postgresql+asyncpg://")
    install = [line for line in dockerfile_lines("RUN") if line.startswith("make ")]
    assert install == ["make install PYTHON=python3"], install
    # `make install` is `make setup` with the runtime extras: the driver compose uses, and no dev tools.
    dry = subprocess.run(["make", "-n", "install", "VENV=/nonexistent"], cwd=ROOT, capture_output=True, text=True)
    assert "EXTRAS=postgres" in dry.stdout, dry.stdout
    assert "asyncpg" in " ".join(project["project"]["optional-dependencies"]["postgres"])


@pytest.mark.slow
def test_the_images_install_and_start_commands_serve_on_postgres(tmp_path: Path, postgres_url: str,
                                                                  real_cache_dir: Path) -> None:
    venv = tmp_path / "venv"
    installed = subprocess.run(["make", "install", f"VENV={venv}", f"PYTHON={sys.executable}"], cwd=ROOT,
                               capture_output=True, text=True, timeout=1500)
    assert installed.returncode == 0, installed.stdout[-2000:] + installed.stderr[-3000:]
    freeze = subprocess.run([str(venv / "bin" / "pip"), "freeze"], capture_output=True, text=True).stdout.lower()
    assert "asyncpg==" in freeze and "pytest==" not in freeze and "ruff==" not in freeze

    command = json.loads(dockerfile_lines("CMD")[0])
    command[0] = re.sub(r"^/app/\.venv", str(venv), command[0])
    port = free_port()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("TUNERAG_")},
           "TUNERAG_DATA_DIR": str(tmp_path / "data"), "TUNERAG_CACHE_DIR": str(real_cache_dir),
           "TUNERAG_SERVER__PORT": str(port), "TUNERAG_SERVER__DATABASE_URL": postgres_url,
           "TUNERAG_SERVER__API_KEYS": json.dumps({"deploy-admin": ["chat", "admin"]}),
           "TUNERAG_GENERATION__MAX_NEW_TOKENS": "8"}
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    base, headers = f"http://127.0.0.1:{port}", {"X-API-Key": "deploy-admin"}
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            try:
                if httpx.get(f"{base}/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        else:
            raise AssertionError("not ready: " + (tmp_path / "serve.log").read_text()[-3000:])
        chat = httpx.post(f"{base}/v1/chat", json={"question": "How do I void a label?"}, headers=headers, timeout=120)
        assert chat.status_code == 200, chat.text
        stored = httpx.get(f"{base}/v1/conversations/{chat.json()['conversation_id']}", headers=headers, timeout=30)
        assert stored.status_code == 200 and len(stored.json()["messages"]) == 2
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        log.close()
