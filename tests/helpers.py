"""Helpers several test modules share: a browser that CI must have, /health polled during an attack, a fixed
random LoRA on the real generator, a free local port, waiting for a background job, a tiny adapter artifact."""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
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


def random_lora(settings: Any, folder: Path) -> tuple[Any, Any]:
    """A fixed random r=8 LoRA on every linear layer of the real model, saved to ``folder``."""
    import torch
    from peft import LoraConfig, get_peft_model

    from core.models import load_generator

    model, tokenizer = load_generator(settings, fresh=True)
    torch.manual_seed(0)  # a fixed adapter (lora_A's init is random too): the same test every run
    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, task_type="CAUSAL_LM", target_modules=[
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.04)
    peft_model.save_pretrained(str(folder))
    return peft_model.eval(), tokenizer


def free_port() -> int:
    """A TCP port nobody listens on at 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_job(client: Any, job_id: str, headers: dict[str, str], timeout: float = 60) -> dict:
    """Poll ``GET /v1/jobs/{job_id}`` until the job succeeded or failed; its last state."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = client.get(f"/v1/jobs/{job_id}", headers=headers).json()
        if job["status"] in ("succeeded", "failed"):
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not finish")


def make_tiny_adapter(settings: Any, name: str = "adapter-test") -> Any:
    """A real peft LoRA adapter on the tiny generator, stored as a finished artifact (no training needed)."""
    import torch
    from peft import LoraConfig, get_peft_model

    from core import artifacts
    from core.models import load_generator

    model, _ = load_generator(settings, fresh=True)
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)  # a non-zero update, so the adapter changes outputs
    workdir = artifacts.run_dir(settings, "adapter", name)
    peft_model.save_pretrained(str(workdir / "adapter"))
    return artifacts.finalize(settings, "adapter", name, {"created_at": artifacts.utc_now(), "stage": "sft"},
                              keep=["adapter"])
