"""LoRA generator training on the sample domain: cost of the default run, then base vs adapted.

    python bench/bench_generator.py [--data-dir var/bench/sample] [--max-steps N]

1. The default `tunerag train generator` run on 2 CPU cores: wall time, peak RSS, trainable parameters
   (% of base), adapter size on disk, final train and validation loss.
2. On the run's held-out test split (never trained on), base and adapted generator answer the *same*
   prompts (same retrieved context, built by the serving template): share of answers following the house
   style (eval/style.py), citation validity (cited ids exist in the given context), ROUGE-L against the
   reference, each with a 95% bootstrap interval, and paired tests adapted - base.
The adapter is kept in --data-dir (and activated) for bench_eval.py.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from common import ROOT, emit, peak_rss_mb

from core import artifacts
from core.settings import load_settings
from eval import answer_metrics as am
from eval.stats import bootstrap_ci, paired_test
from eval.style import StyleRules, check_style
from inference.engine import GenerationEngine
from training.generator_recipe import train_generator


def score(answers: list[str], rows: list[dict], rules: StyleRules, eos: str) -> dict[str, list]:
    out: dict[str, list] = {"style_adherence": [], "citation_validity": [], "rouge_l": []}
    for answer, row in zip(answers, rows, strict=True):
        reference = row["completion"].removesuffix(eos)
        out["style_adherence"].append(float(check_style(answer, rules, reference)["adheres"]))
        out["citation_validity"].append(am.citation_validity(answer, row["context_doc_ids"]))
        out["rouge_l"].append(am.rouge_l(answer, reference))
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", type=Path, default=ROOT / "var" / "bench" / "sample")
    parser.add_argument("--max-steps", type=int, default=None, help="override the default (full epoch) run")
    args = parser.parse_args()
    settings = load_settings(data_dir=args.data_dir)
    cfg = settings.train_generator
    if args.max_steps:
        cfg = cfg.model_copy(update={"max_steps": args.max_steps})

    began = time.perf_counter()
    artifact = train_generator(settings, cfg)
    wall = time.perf_counter() - began
    rss = peak_rss_mb()
    artifacts.activate(settings, "adapter", artifact.id)
    m = artifact.manifest

    rows = [json.loads(line) for line in (artifact.path / "data" / "test.jsonl").read_text().splitlines()]
    engine = GenerationEngine.from_settings(settings)
    engine.load_adapter(artifact.id, artifact.path / "adapter")
    rules = StyleRules.from_settings(settings.eval)
    prompts = [r["prompt"] for r in rows]
    timings = {}
    answers = {}
    for name, adapter in (("base", None), ("adapted", artifact.id)):
        t0 = time.perf_counter()
        answers[name] = [g.text for g in engine.generate(prompts, adapter, max_new_tokens=settings.eval.max_new_tokens)]
        timings[name] = round(time.perf_counter() - t0, 1)
    scores = {name: score(answers[name], rows, rules, engine.tokenizer.eos_token) for name in answers}
    comparison = {
        name: {"base": bootstrap_ci(scores["base"][name]).to_json(),
               "adapted": bootstrap_ci(scores["adapted"][name]).to_json(),
               "adapted_minus_base": paired_test(scores["adapted"][name], scores["base"][name], name_a="adapted",
                                                 name_b="base", metric=name).to_json()}
        for name in ("style_adherence", "citation_validity", "rouge_l")
    }
    emit("generator", {
        "default_run": {
            "artifact": artifact.id, "wall_time_s": round(wall, 1), "peak_rss_mb": rss,
            "global_steps": m["global_steps"], "trainable_parameters": m["trainable_parameters"],
            "total_parameters": m["total_parameters"], "trainable_percent": round(100 * m["trainable_fraction"], 3),
            "adapter_size_mb": round(m["adapter_size_bytes"] / 1e6, 2), "final_train_loss": m["final_train_loss"],
            "final_validation_loss": m["final_validation_loss"], "split_sizes": m["data"]["split_sizes"],
            "variants": m["data"]["variants"], "cleaning": m["data"]["cleaning"], "qlora": m["qlora"],
        },
        "heldout_test_split": {"questions": len(rows), "generation_s": timings, **comparison},
        "examples": [{"prompt_question": r["prompt"].rsplit("Customer question:", 1)[-1][:200].strip(),
                      "base": answers["base"][i], "adapted": answers["adapted"][i]} for i, r in enumerate(rows[:3])],
    })


if __name__ == "__main__":
    main()
