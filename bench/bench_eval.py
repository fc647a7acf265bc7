"""End-to-end comparison of prompt-only / RAG-only / FT-only / combined, with wall times.

    python bench/bench_eval.py --domain sample      # reuses var/bench/sample artifacts (bench_generator.py)
    python bench/bench_eval.py --domain zaragoza    # trains everything on the FAQ's training split first

sample:   the 104 held-out questions of data/sample/eval.jsonl. Missing artifacts are trained with the
          default recipes first (embedder: ~1 min; adapter: ~15 min).
zaragoza: zaragoza-construction-faq (Zaragoza AB, CC-BY-4.0, DOI 10.5281/zenodo.19630803), English. The
          answers are the knowledge base; questions are split 70/30 by entry (seed 0, as in
          bench_embedder.py). The embedder is trained on the training questions with its default recipe, the
          adapter (default recipe: one epoch; --generator-steps N caps it) on chats made from the training
          Q&As in a house style ("Hi there!" ... "[id]" ... "— Zaragoza Support"), and the held-out
          questions are evaluated end to end.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from common import ROOT, emit, peak_rss_mb, zaragoza_split

from core import artifacts
from core.settings import Settings, load_settings
from eval.runner import EvalOptions, run_evaluation
from training.embedder_recipe import train_embedder
from training.generator_recipe import train_generator

ZARAGOZA_SYSTEM = """You are the customer support assistant of Zaragoza AB, a construction company in Helsingborg, Sweden.
Answer in the house style:
- Start with "Hi there!" on its own line, then answer the question directly in the first sentence.
- Cite the documents you used as [doc-id], using only ids from the context documents.
- Keep answers under 120 words, friendly and plain.
- If the context documents do not contain the answer, say "I couldn't find that in our help center" and offer that a specialist will follow up. Never guess.
- End with the line "— Zaragoza Support".
"""
SIGN_OFF = "— Zaragoza Support"
REFUSAL = ("Hi there!\n\nI couldn't find that in our help center, so I don't want to guess. Reply to this message "
           f"and a specialist will follow up.\n\n{SIGN_OFF}")


def ensure_artifacts(settings: Settings, embedder_cfg=None, generator_cfg=None) -> dict[str, float]:
    """Train (and activate) whatever is missing; returns the training wall times."""
    times = {}
    if artifacts.active_id(settings, "embedder") is None:
        began = time.perf_counter()
        artifacts.activate(settings, "embedder", train_embedder(settings, embedder_cfg).id)
        times["train_embedder_s"] = round(time.perf_counter() - began, 1)
    if artifacts.active_id(settings, "adapter") is None:
        began = time.perf_counter()
        artifacts.activate(settings, "adapter", train_generator(settings, generator_cfg).id)
        times["train_generator_s"] = round(time.perf_counter() - began, 1)
    return times


def styled(answer: str, doc_id: str) -> str:
    return f"Hi there!\n\n{answer} [{doc_id}]\n\n{SIGN_OFF}"


def zaragoza_settings(work: Path, generator_steps: int) -> tuple[Settings, object, object]:
    corpus, train, test = zaragoza_split(work)
    (work / "system_prompt.txt").write_text(ZARAGOZA_SYSTEM)
    (work / "train_pairs.jsonl").write_text("".join(json.dumps({"question": e["q"], "doc_id": e["id"]}) + "\n" for e in train))
    (work / "chat_train.jsonl").write_text("".join(json.dumps({"id": e["id"], "doc_ids": [e["id"]], "messages": [
        {"role": "system", "content": ZARAGOZA_SYSTEM}, {"role": "user", "content": e["q"]},
        {"role": "assistant", "content": styled(e["a"], e["id"])}]}) + "\n" for e in train))
    (work / "few_shot.jsonl").write_text("".join(json.dumps({"question": e["q"], "answer": styled(e["a"], e["id"])}) + "\n"
                                                 for e in train[:2]))
    (work / "eval.jsonl").write_text("".join(json.dumps({"id": e["id"], "question": e["q"], "gold_doc_ids": [e["id"]],
                                                         "answerable": True, "reference_answer": styled(e["a"], e["id"])}) + "\n"
                                             for e in test))
    settings = load_settings(
        data_dir=work / "var",
        retrieval={"sources": [str(corpus)]},
        prompt={"system_prompt_file": str(work / "system_prompt.txt"), "few_shot_file": str(work / "few_shot.jsonl")},
        eval={"eval_file": str(work / "eval.jsonl"), "style_sign_off": SIGN_OFF},
    )
    embedder_cfg = settings.train_embedder.model_copy(update={
        "labelled_files": [work / "train_pairs.jsonl"], "chat_files": [], "sources": [corpus]})
    generator_cfg = settings.train_generator.model_copy(update={
        "chat_files": [work / "chat_train.jsonl"], "refusal_answer": REFUSAL, "max_length": 1024,
        "max_steps": generator_steps})
    return settings, embedder_cfg, generator_cfg


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--domain", choices=("sample", "zaragoza"), default="sample")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--generator-steps", type=int, default=-1,
                        help="zaragoza adapter: optimizer steps (-1: the default recipe, one epoch)")
    args = parser.parse_args()
    work = ROOT / "var" / "bench" / args.domain
    if args.domain == "sample":
        settings, embedder_cfg, generator_cfg = load_settings(data_dir=work), None, None
    else:
        settings, embedder_cfg, generator_cfg = zaragoza_settings(work, args.generator_steps)
    training = ensure_artifacts(settings, embedder_cfg, generator_cfg)
    began = time.perf_counter()
    report = run_evaluation(settings, EvalOptions(limit=args.limit, out_dir=work / "report"))
    significant = [c for c in report["comparisons"] if c["significant_holm"]]
    emit(f"eval_{args.domain}", {
        "questions": report["data"]["questions"], "training_wall_s": training,
        "eval_wall_s": round(time.perf_counter() - began, 1), "peak_rss_mb": peak_rss_mb(),
        "system_wall_s": {n: s.get("wall_time_s") for n, s in report["systems"].items()},
        "headline": report["headline"], "significant_differences": significant,
        "report": report["files"], "models": report["models"],
    })


if __name__ == "__main__":
    main()
