"""The forgetting check on the real generator: base SmolLM2-135M (transformers) against an adapter artifact.

Usage: python bench/bench_forgetting.py --adapter DATA_DIR/artifacts/adapter/<id> [--adapter ...]
Each adapter is scored as ``tunerag train generator`` scores it (training/forgetting.py, default settings):
general-text perplexity base -> adapter, and ROUGE-L agreement of general answers with the base model's.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from common import emit

from core.models import load_generator
from core.settings import load_settings
from training.forgetting import forgetting_check


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--adapter", type=Path, action="append", required=True)
    args = parser.parse_args()
    from peft import PeftModel

    settings = load_settings()
    results = {}
    for folder in args.adapter:
        model, tokenizer = load_generator(settings, fresh=True)
        peft = PeftModel.from_pretrained(model, str(folder / "adapter"))
        manifest = json.loads((folder / "manifest.json").read_text())
        results[folder.name] = {"global_steps": manifest.get("global_steps"), "target_modules":
                                manifest.get("hyperparameters", {}).get("target_modules"),
                                **forgetting_check(peft, tokenizer, settings.train_generator.forgetting)}
    emit("bench_forgetting", {"adapters": results})


if __name__ == "__main__":
    main()
