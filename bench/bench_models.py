"""Loading the default generator twice: the first load converts the packaged GGUF into the safetensors
cache, the second reads the cache. Each load runs in a fresh process; library imports are timed apart.

    python bench/bench_models.py
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile

from common import ROOT, emit

CHILD = r"""
import json, time, sys
t0 = time.perf_counter()
import transformers, torch  # noqa: F401  (import cost reported separately)
from core.models import load_generator, resolve_generator
from core.settings import load_settings
imports = time.perf_counter() - t0
settings = load_settings(cache_dir=sys.argv[1])
cached = resolve_generator(settings, convert=False).source == "cache"
t1 = time.perf_counter()
model, tokenizer = load_generator(settings)
print(json.dumps({"from_cache": cached, "imports_s": round(imports, 2), "load_s": round(time.perf_counter() - t1, 2),
                  "parameters": sum(p.numel() for p in model.parameters())}))
"""


def main() -> None:
    with tempfile.TemporaryDirectory() as cache:
        runs = []
        for _ in range(2):
            out = subprocess.run([sys.executable, "-c", CHILD, cache], cwd=ROOT, capture_output=True, text=True, check=True)
            runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    emit("models", {"first_load": runs[0], "second_load": runs[1],
                    "speedup": round(runs[0]["load_s"] / max(runs[1]["load_s"], 1e-3), 1)})


if __name__ == "__main__":
    main()
