"""Retrieval on the sample domain: quality (BM25 / dense / hybrid), indexing throughput, incremental reindex.

    python bench/bench_retrieval.py [--copies 11]

Prints JSON: Recall@5, MRR@10, nDCG@10 per mode on the held-out questions; end-to-end indexing throughput
(files -> chunks -> MiniLM embeddings -> FAISS + BM25 on disk) on >= 2,000 chunks; and the time of an
incremental reindex after changing 1 of 40 documents as a ratio to a full rebuild.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from common import emit, peak_rss_mb, percentiles, sample_kb_copies

from core.models import load_embedder
from core.settings import SAMPLE_DIR, load_settings
from retrieval import index_store
from retrieval.indexer import update_index
from retrieval.metrics import retrieval_metrics
from retrieval.search import Retriever, doc_ranking


def quality(settings) -> dict[str, dict[str, float]]:
    update_index(settings, [SAMPLE_DIR / "kb"])
    version = index_store.open_version(settings.paths.index_dir)
    retriever = Retriever(version, load_embedder(settings), settings.retrieval)
    rows = [json.loads(line) for line in (SAMPLE_DIR / "eval.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r["gold_doc_ids"]]
    out = {}
    for mode in ("bm25", "dense", "hybrid"):
        results = retriever.search_many([r["question"] for r in rows], k=10, mode=mode)
        m = retrieval_metrics([doc_ranking(x) for x in results], [r["gold_doc_ids"] for r in rows])
        out[mode] = {k: round(v, 4) for k, v in m.items() if k in ("recall@5", "mrr@10", "ndcg@10", "queries")}
        samples = []
        for r in rows[:50]:  # one query at a time, query embedding included: the serving path
            began = time.perf_counter()
            retriever.search(r["question"], k=5, mode=mode)
            samples.append(time.perf_counter() - began)
        out[mode]["latency_k5"] = percentiles(samples)
    return out


def throughput(settings, workdir: Path, copies: int) -> dict[str, float]:
    corpus = sample_kb_copies(workdir, copies)
    began = time.perf_counter()
    report = update_index(settings, [corpus], rebuild=True)
    seconds = time.perf_counter() - began
    return {"documents": report.documents, "chunks": report.chunks, "seconds": round(seconds, 2),
            "chunks_per_s": round(report.chunks / seconds, 1)}


def incremental(settings, workdir: Path) -> dict[str, float]:
    kb = workdir / "kb40"
    kb.mkdir()
    for src in sorted((SAMPLE_DIR / "kb").iterdir())[:40]:
        shutil.copy(src, kb / src.name)
    began = time.perf_counter()
    full = update_index(settings, [kb], rebuild=True)
    full_s = time.perf_counter() - began
    target = sorted(kb.glob("*.md"))[0]
    target.write_text(target.read_text() + "\n\n## Update\n\nThis article changed this week.\n")
    began = time.perf_counter()
    inc = update_index(settings, [kb])
    inc_s = time.perf_counter() - began
    return {"documents": full.documents, "full_rebuild_s": round(full_s, 3), "full_embedded_chunks": full.embedded_chunks,
            "incremental_s": round(inc_s, 3), "incremental_embedded_chunks": inc.embedded_chunks,
            "ratio_incremental_to_full": round(inc_s / full_s, 3)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--copies", type=int, default=11, help="copies of the sample KB for the throughput run")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        settings = load_settings(data_dir=tmp_path / "q")
        load_embedder(settings).encode(["warm up"])  # model load is not indexing time
        result = {"quality": quality(settings)}
        result["indexing_throughput"] = throughput(load_settings(data_dir=tmp_path / "t"), tmp_path, args.copies)
        result["incremental_reindex"] = incremental(load_settings(data_dir=tmp_path / "i"), tmp_path)
    result["peak_rss_mb"] = peak_rss_mb()
    emit("retrieval", result)


if __name__ == "__main__":
    main()
