"""Is what is served as good as what was measured? The same trained adapter, embedder and held-out set
answered through every serving engine, in one run, scored by the same evaluation.

    python bench/bench_engine_parity.py --data-dir D [--systems combined] [--limit N]
    python bench/bench_engine_parity.py --tokens [--questions 20]   # greedy token agreement, base model only

``D`` holds trained artifacts (``tunerag --data-dir D train embedder``, ``index --rebuild --embedder
artifact:latest``, ``train generator --activate``). Each engine answers through :func:`inference.loader.load_engine`,
the backend ``/v1/chat`` uses (``tests/test_eval_serving.py`` shows the answers are the same), with greedy
decoding. Engines:

  transformers        the reference: fp32 de-quantized weights, the ones the adapter was trained on
  llamacpp_q8_0_fused the llama.cpp engine as it was: Q8_0 copy, ik_llama.cpp's fused up/gate op (drops LoRA)
  llamacpp_q8_0       Q8_0 copy, fused op off
  llamacpp_f16        F16 copy, fused op off

Per engine: false refusals, correct refusals, citation hit, style adherence, ROUGE-L with 95% bootstrap
intervals, answers identical to the reference's, wall time; and whether each metric falls inside the
reference's interval or better (the issue's target).
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from pathlib import Path

from common import emit

from core.settings import SAMPLE_DIR, Settings, load_settings

ENGINES = ("transformers", "llamacpp_q8_0_fused", "llamacpp_q8_0", "llamacpp_f16")
# (metric, higher is better)
METRICS = (("false_refusal", False), ("refusal_correct", True), ("citation_hit", True), ("citation_validity", True),
           ("style_adherence", True), ("rouge_l", True))


def engine_settings(settings: Settings, engine: str) -> Settings:
    gen = settings.generation
    if engine == "transformers":
        gen = gen.model_copy(update={"engine": "transformers"})
    else:
        gen = gen.model_copy(update={"engine": "llamacpp", "llamacpp_weights": engine.split("_", 1)[1].split("_fused")[0]})
    return settings.model_copy(update={"generation": gen})


def run_engine(settings: Settings, engine: str, systems: tuple[str, ...], limit: int | None, out: Path) -> dict:
    import inference.llamacpp_engine as llama
    from eval.runner import EvalOptions, run_evaluation

    llama.FUSE_UP_GATE = engine.endswith("_fused")
    began = time.perf_counter()
    try:
        report = run_evaluation(engine_settings(settings, engine), EvalOptions(limit=limit, systems=systems, out_dir=out))
    finally:
        llama.FUSE_UP_GATE = False
    return {"report": report, "seconds": round(time.perf_counter() - began, 1)}


def summarize(reports: dict[str, dict], systems: tuple[str, ...]) -> dict:
    reference = reports["transformers"]["report"]
    out: dict = {}
    for engine, entry in reports.items():
        report = entry["report"]
        row: dict = {"engine": report["engine"], "wall_s": entry["seconds"], "systems": {}}
        for system in systems:
            metrics = report["systems"][system]["metrics"]
            ref_metrics = reference["systems"][system]["metrics"]
            answers = [q["systems"][system]["answer"] for q in report["questions"]]
            ref_answers = [q["systems"][system]["answer"] for q in reference["questions"]]
            entry_row = {"identical_to_reference": sum(a == b for a, b in zip(answers, ref_answers, strict=True)),
                         "questions": len(answers)}
            for metric, higher in METRICS:
                value, ref = metrics.get(metric), ref_metrics.get(metric)
                if value is None or ref is None:
                    continue
                within = (value["mean"] >= ref["low"]) if higher else (value["mean"] <= ref["high"])
                entry_row[metric] = {"mean": value["mean"], "low": value["low"], "high": value["high"],
                                     "n": value.get("n"), "within_reference_ci_or_better": within}
            row["systems"][system] = entry_row
        out[engine] = row
    return out


def token_agreement(questions: int, max_tokens: int) -> dict:
    """Greedy agreement of llama.cpp (default weights) with transformers on the base model, two fixed passages."""
    from core.models import load_generator
    from core.prompt import ContextPassage, build_prompt, load_template
    from inference.generation import generate
    from inference.llamacpp_engine import EngineRequest, engine_from_settings

    passages = [ContextPassage("ts-void-label", "Voiding a label", "Open the shipment in Parcelly and click Void label."),
                ContextPassage("billing-plans", "Plans", "Starter is free. Pro costs $29 per month.")]
    settings = load_settings()
    model, tokenizer = load_generator(settings)
    engine = engine_from_settings(settings)
    texts = [json.loads(line)["question"] for line in (SAMPLE_DIR / "eval.jsonl").read_text().splitlines()]
    rows = []
    try:
        for question in texts[:questions]:
            prompt = build_prompt(load_template(settings), tokenizer, question, passages)
            done, box = threading.Event(), []
            engine.submit(EngineRequest(tokenizer(prompt, add_special_tokens=False).input_ids, None, max_tokens,
                                        0.0, 1.0, settings.generation.repetition_penalty, on_text=lambda t: None,
                                        on_done=lambda r, box=box, done=done: (box.append(r), done.set())))
            done.wait()
            ours = box[0].text
            theirs = generate(model, tokenizer, [prompt], settings.generation, max_new_tokens=max_tokens)[0].text
            a, b = tokenizer(ours).input_ids, tokenizer(theirs).input_ids
            common = 0
            while common < min(len(a), len(b)) and a[common] == b[common]:
                common += 1
            rows.append({"question": question, "identical": ours == theirs, "common_prefix_tokens": common})
    finally:
        engine.close()
    prefixes = [r["common_prefix_tokens"] for r in rows]
    return {"weights": settings.generation.llamacpp_weights, "questions": len(rows), "max_tokens": max_tokens,
            "identical": sum(r["identical"] for r in rows),
            "common_prefix_tokens": {"median": statistics.median(prefixes), "mean": round(statistics.mean(prefixes), 1),
                                     "min": min(prefixes), "max": max(prefixes)}, "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", type=Path, help="a data dir with a trained adapter and embedder")
    parser.add_argument("--systems", default="combined", help="comma-separated eval systems")
    parser.add_argument("--engines", default=",".join(ENGINES))
    parser.add_argument("--limit", type=int)
    parser.add_argument("--tokens", action="store_true", help="only the base-model greedy token agreement")
    parser.add_argument("--questions", type=int, default=20)
    parser.add_argument("--max-tokens", type=int, default=48)
    args = parser.parse_args()
    if args.tokens:
        emit("engine_parity_tokens", token_agreement(args.questions, args.max_tokens))
        return
    if args.data_dir is None:
        parser.error("--data-dir is required (a data dir with trained artifacts), or use --tokens")
    settings = load_settings(data_dir=args.data_dir)
    systems = tuple(s for s in args.systems.split(",") if s)
    engines = [e for e in args.engines.split(",") if e]
    if "transformers" not in engines:
        engines.insert(0, "transformers")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    reports = {}
    for engine in engines:
        reports[engine] = run_engine(settings, engine, systems, args.limit,
                                     args.data_dir / "reports" / f"parity-{stamp}-{engine}")
        print(f"{engine}: {reports[engine]['seconds']} s", flush=True)
    emit("engine_parity", {"data_dir": str(args.data_dir), "systems": systems, "limit": args.limit,
                           "engines": summarize(reports, systems)})


if __name__ == "__main__":
    main()
