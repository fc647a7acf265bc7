"""Exact vs approximate (HNSW) FAISS search on synthetic, clustered 384-d vectors.

    python bench/bench_ann.py [--n 100000] [--queries 300]

Vectors are drawn around 2,000 random centres and L2-normalised, like sentence embeddings of a corpus
with many near-duplicate passages. Reports single-query latency p50/p95 for k=5 (the serving path),
HNSW recall@10 against exact search for several efSearch values, build times, and exact-search latency
at growing sizes: the data behind ``retrieval.ann_threshold``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from common import emit, peak_rss_mb, percentiles

from retrieval.index_store import build_faiss_index


def clustered(n: int, dim: int, centres: int, rng: np.random.Generator) -> np.ndarray:
    c = rng.standard_normal((centres, dim)).astype(np.float32)
    x = c[rng.integers(0, centres, n)] + 0.6 * rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def latencies(index, queries: np.ndarray, k: int, params=None) -> list[float]:
    out = []
    for q in queries:
        began = time.perf_counter()
        index.search(q[None, :], k, params=params)
        out.append(time.perf_counter() - began)
    return out


def main() -> None:
    import faiss

    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--dim", type=int, default=384)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    data = clustered(args.n + args.queries, args.dim, 2000, rng)
    vectors, queries = data[: args.n], data[args.n :]
    ids = np.arange(args.n, dtype=np.int64) * 7 + 3  # non-contiguous ids, as chunk ids are

    began = time.perf_counter()
    exact = build_faiss_index(vectors, ids, "flat")
    exact_build = time.perf_counter() - began
    began = time.perf_counter()
    hnsw = build_faiss_index(vectors, ids, "hnsw", hnsw_m=32)
    hnsw_build = time.perf_counter() - began

    _, truth = exact.search(queries, 10)
    result: dict[str, object] = {
        "n_vectors": args.n, "dim": args.dim, "k": 5,
        "exact": {"build_s": round(exact_build, 2), **percentiles(latencies(exact, queries, 5))},
        "hnsw": {"m": 32, "ef_construction": 80, "build_s": round(hnsw_build, 2), "by_ef_search": {}},
    }
    for ef in (16, 32, 64, 128):
        params = faiss.SearchParametersHNSW(efSearch=ef)
        _, got = hnsw.search(queries, 10, params=params)
        recall = float(np.mean([len(set(t) & set(g)) / 10 for t, g in zip(truth, got, strict=True)]))
        result["hnsw"]["by_ef_search"][str(ef)] = {"recall@10_vs_exact": round(recall, 4),
                                                   **percentiles(latencies(hnsw, queries, 5, params))}
    by_size = {}
    for size in (10_000, 25_000, 50_000, 100_000, 200_000, 400_000):
        if size > args.n:
            break
        index = build_faiss_index(vectors[:size], ids[:size], "flat")
        by_size[str(size)] = percentiles(latencies(index, queries[:100], 5))
    result["exact_latency_by_size"] = by_size
    result["peak_rss_mb"] = peak_rss_mb()
    emit("ann", result)


if __name__ == "__main__":
    main()
