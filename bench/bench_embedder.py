"""Embedder fine-tuning: base vs fine-tuned MiniLM vs BM25 vs hybrid, on two domains.

    python bench/bench_embedder.py [--skip-zaragoza]

1. Sample domain (Parcelly): the default `tunerag train embedder` run (wall time, peak RSS), then
   nDCG@10 / MRR@10 / Recall@5 on the 92 answerable held-out questions of data/sample/eval.jsonl
   (never used in training) for BM25, dense and hybrid with the base and the fine-tuned embedder.
2. A real public FAQ nobody on this project wrote: zaragoza-construction-faq (Zaragoza AB, CC-BY-4.0,
   DOI 10.5281/zenodo.19630803), English edition. Documents are the answers; queries are the questions.
   Questions are split 80/20 by id (seed 0); the embedder is trained on the training questions only and
   evaluated on the held-out ones, searching all answers.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from common import emit, peak_rss_mb, zaragoza_split

from core.models import load_embedder
from core.settings import SAMPLE_DIR, Settings, load_settings
from retrieval import index_store
from retrieval.indexer import update_index
from retrieval.metrics import retrieval_metrics
from retrieval.search import Retriever, doc_ranking
from training.embedder_recipe import train_embedder

KEYS = ("ndcg@10", "mrr@10", "recall@5")


def with_embedder(settings: Settings, embedder: str, data_dir: Path) -> Settings:
    return load_settings(data_dir=data_dir, models={"embedder": embedder},
                         retrieval=settings.retrieval.model_dump())


def evaluate(settings: Settings, sources: list[Path], questions: list[str], gold: list[list[str]]) -> dict:
    update_index(settings, sources, rebuild=True)
    version = index_store.open_version(settings.paths.index_dir)
    retriever = Retriever(version, load_embedder(settings), settings.retrieval)
    out = {}
    for mode in ("bm25", "dense", "hybrid"):
        ranked = [doc_ranking(r) for r in retriever.search_many(questions, k=20, mode=mode)]
        m = retrieval_metrics(ranked, gold)
        out[mode] = {k: round(m[k], 4) for k in KEYS} | {"queries": int(m["queries"])}
    return out


def compare(base: Settings, tuned_dir: Path, tmp: Path, name: str, sources: list[Path], questions: list[str],
            gold: list[list[str]]) -> dict:
    base_scores = evaluate(with_embedder(base, base.models.embedder, tmp / f"{name}-base"), sources, questions, gold)
    tuned_scores = evaluate(with_embedder(base, str(tuned_dir), tmp / f"{name}-tuned"), sources, questions, gold)
    return {
        "queries": base_scores["dense"]["queries"],
        "bm25": base_scores["bm25"],
        "dense_base": base_scores["dense"],
        "dense_finetuned": tuned_scores["dense"],
        "hybrid_base": base_scores["hybrid"],
        "hybrid_finetuned": tuned_scores["hybrid"],
    }


def sample_domain(tmp: Path) -> dict:
    settings = load_settings(data_dir=tmp / "sample-train")
    began = time.perf_counter()
    artifact = train_embedder(settings)
    wall = time.perf_counter() - began
    rss = peak_rss_mb()
    rows = [json.loads(x) for x in (SAMPLE_DIR / "eval.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r["gold_doc_ids"]]
    scores = compare(settings, artifact.path / "model", tmp, "sample", [SAMPLE_DIR / "kb"],
                     [r["question"] for r in rows], [r["gold_doc_ids"] for r in rows])
    return {"default_training_run": {"wall_time_s": round(wall, 1), "peak_rss_mb": rss,
                                     "pairs": artifact.manifest["pairs"], "global_steps": artifact.manifest["global_steps"],
                                     "internal_heldout_before": artifact.manifest["metrics_before"],
                                     "internal_heldout_after": artifact.manifest["metrics_after"]},
            "heldout_eval_set": scores}


def zaragoza(tmp: Path) -> dict:
    import zaragoza_construction_faq as faq

    corpus, train, heldout = zaragoza_split(tmp / "zaragoza")
    entries = train + heldout
    labelled = tmp / "zaragoza" / "train_pairs.jsonl"
    labelled.write_text("".join(json.dumps({"question": e["q"], "doc_id": e["id"]}) + "\n" for e in train))

    settings = load_settings(data_dir=tmp / "zaragoza-train", retrieval={"sources": [str(corpus)]})
    cfg = settings.train_embedder.model_copy(update={
        "labelled_files": [labelled], "chat_files": [], "sources": [corpus], "synthetic_queries_per_chunk": 0,
    })
    began = time.perf_counter()
    artifact = train_embedder(settings, cfg)
    wall = time.perf_counter() - began
    scores = compare(settings, artifact.path / "model", tmp, "zaragoza", [corpus],
                     [e["q"] for e in heldout], [[e["id"]] for e in heldout])
    return {"dataset": f"zaragoza-construction-faq {faq.__version__} (en), {faq.__license__}, DOI {faq.__doi__}",
            "entries": len(entries), "train_questions": len(train), "heldout_questions": len(heldout),
            "training_run": {"wall_time_s": round(wall, 1), "pairs": artifact.manifest["pairs"],
                             "global_steps": artifact.manifest["global_steps"]},
            "heldout": scores}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--skip-zaragoza", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        result = {"sample_domain": sample_domain(Path(tmp))}
        if not args.skip_zaragoza:
            result["zaragoza_faq"] = zaragoza(Path(tmp))
    emit("embedder", result)


if __name__ == "__main__":
    main()
