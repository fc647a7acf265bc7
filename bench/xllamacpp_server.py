"""llama.cpp's own server (xllamacpp, in-process C++ server) as a benchmark peer, in a process of its own.

    python bench/xllamacpp_server.py GGUF PORT [--parallel 8] [--ctx 16384] [--lora FILE] [--threads N]

Serves until killed: continuous batching over ``--parallel`` slots, prompt cache, and the LoRA (if given)
loaded at scale 0 so each request chooses it (``"lora": [{"id": 0, "scale": 1}]``).
"""

from __future__ import annotations

import argparse
import os
import signal
import threading


def main() -> None:
    import xllamacpp as x

    parser = argparse.ArgumentParser()
    parser.add_argument("gguf")
    parser.add_argument("port", type=int)
    parser.add_argument("--parallel", type=int, default=8)
    parser.add_argument("--ctx", type=int, default=16384)
    parser.add_argument("--lora")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    params = x.CommonParams()
    params.model.path = args.gguf
    params.n_ctx, params.n_parallel, params.port = args.ctx, args.parallel, args.port
    params.cpuparams.n_threads = params.cpuparams_batch.n_threads = args.threads
    params.endpoint_slots = params.endpoint_metrics = True
    if args.lora:
        params.lora_adapters = [x.CommonAdapterLoraInfo(args.lora, 0.0)]
        params.lora_init_without_apply = True
    server = x.Server(params)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    del server


if __name__ == "__main__":
    main()
