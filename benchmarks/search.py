"""Exact vs approximate search on synthetic clustered descriptors: build time, size, queries/s, recall@10.

    python benchmarks/search.py                      # 1,000,000 x 128, 20,000 clusters, 1,000 queries
    python benchmarks/search.py --n 100000 --json out.json

The collection is ``--n`` L2-normalised vectors around ``--clusters`` random unit centres (each cluster with its
own spread, so some are tight and some diffuse); the queries are ``--queries`` held-out points drawn the same way
(not in the collection). Every index is made by :func:`vitrieval.index.make_faiss_index` (the same
IndexIDMap2-wrapped inner-product index that ``vitrieval index`` builds) and trained by
:func:`vitrieval.index.train_faiss_index` (a sample of 64 vectors per IVF list). The "IVF-PQ" rows search the
refined index's IVF-PQ part alone (no re-ranking), to show what the refine step buys. Queries are searched as one batch,
best of ``--repeats`` timings; recall@10 is the share of the exact top-10 found in the approximate top-10.

The row marked ``*`` is the recommended approximate preset (``vitrieval.index.APPROXIMATE_FACTORY`` with
``APPROXIMATE_SEARCH_PARAMS``); the script checks it reaches recall@10 >= 0.95 at >= 10x the exact queries/s.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np


@dataclass
class Row:
    """One index configuration: what it cost to build and how it searches."""

    name: str
    factory: str
    params: str
    build_s: float
    bytes: int
    qps: float
    recall_at_k: float
    speedup: float = 1.0
    recommended: bool = False


def clustered(n: int, dim: int, clusters: int, seed: int, chunk: int = 200_000) -> np.ndarray:
    """``n`` unit vectors: random unit centres + Gaussian noise with a per-cluster spread in [0.35, 0.75]."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    spread = rng.uniform(0.35, 0.75, clusters).astype(np.float32)
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        which = rng.integers(0, clusters, m)
        x = centres[which] + rng.standard_normal((m, dim), dtype=np.float32) * (spread[which, None] / np.sqrt(dim))
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        out[start:start + m] = x
    return out


SEARCH_THREADS = 0


def timed_search(index, queries: np.ndarray, k: int, repeats: int) -> tuple[float, np.ndarray]:
    """Best-of-``repeats`` seconds for searching all ``queries`` in one batch, and the result ids."""
    import faiss

    build_threads = faiss.omp_get_max_threads()
    if SEARCH_THREADS:
        faiss.omp_set_num_threads(SEARCH_THREADS)
    try:
        return best_of(repeats, lambda: index.search(queries, k)[1])
    finally:
        faiss.omp_set_num_threads(build_threads)


def best_of(repeats: int, search: Callable[[], np.ndarray]) -> tuple[float, np.ndarray]:
    """Best-of-``repeats`` seconds of ``search()`` and its last result (the ids)."""
    best, ids = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        ids = search()
        best = min(best, time.perf_counter() - t)
    return best, ids


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean share of each query's true top-k found in its approximate top-k."""
    k = truth.shape[1]
    return float(np.mean([len(np.intersect1d(f, t, assume_unique=True)) / k for f, t in zip(found, truth)]))


def index_bytes(index) -> int:
    import faiss

    return int(faiss.serialize_index(index).size)


def build(factory: str, xb: np.ndarray) -> tuple[object, float]:
    from vitrieval.index import make_faiss_index, train_faiss_index

    t = time.perf_counter()
    index = make_faiss_index(factory, xb.shape[1])
    if not index.is_trained:
        train_faiss_index(index, factory, [xb])
    index.add_with_ids(xb, np.arange(len(xb), dtype=np.int64))
    return index, time.perf_counter() - t


def run(args: argparse.Namespace) -> list[Row]:
    import faiss

    from vitrieval.index import APPROXIMATE_FACTORY, APPROXIMATE_SEARCH_PARAMS, set_search_params

    global SEARCH_THREADS
    if args.threads:
        faiss.omp_set_num_threads(args.threads)
    SEARCH_THREADS = args.search_threads
    t = time.perf_counter()
    data = clustered(args.n + args.queries, args.dim, args.clusters, args.seed)
    rng = np.random.default_rng(args.seed + 1)
    held_out = rng.choice(len(data), args.queries, replace=False)
    mask = np.ones(len(data), dtype=bool)
    mask[held_out] = False
    xq, xb = np.ascontiguousarray(data[held_out]), np.ascontiguousarray(data[mask])
    del data
    print(f"data: {len(xb):,} x {args.dim} in {args.clusters:,} clusters, {len(xq):,} held-out queries "
          f"({time.perf_counter() - t:.1f} s); faiss {faiss.__version__}, {faiss.omp_get_max_threads()} build threads, "
          f"{SEARCH_THREADS or faiss.omp_get_max_threads()} search threads",
          flush=True)
    k = args.k
    rows: list[Row] = []

    flat, build_s = build("Flat", xb)
    secs, truth = timed_search(flat, xq, k, args.repeats)
    exact_qps = len(xq) / secs
    rows.append(Row("exact", "Flat", "-", build_s, index_bytes(flat), exact_qps, 1.0))
    print(f"  Flat: {exact_qps:,.0f} q/s", flush=True)
    del flat

    nlist = min(args.nlist, max(1, len(xb) // 39))
    ivf = args.ivf_factory.replace("{nlist}", str(nlist))
    recommended_factory = APPROXIMATE_FACTORY
    plans = [
        ("IVF-PQ+refine", ivf, [{"nprobe": p, "k_factor": kf} for p, kf in
                                ((8, 4), (16, 4), (16, 8), (32, 8), (64, 8), (64, 16))]),
        ("HNSW", "HNSW32", [{"ef_search": e} for e in (16, 32, 64, 128)]),
    ]
    for name, factory, settings in plans:
        index, build_s = build(factory, xb)
        size = index_bytes(index)
        print(f"  {factory}: built in {build_s:.1f} s, {size / 2 ** 20:.0f} MiB", flush=True)
        if ",RFlat" in factory:
            # the same IVF-PQ without the re-ranking step: search the refine index's base (ids are 0..n-1 there)
            base = faiss.downcast_index(faiss.downcast_index(index.index).base_index)
            base_factory = factory.replace(",RFlat", "")
            for nprobe in (16, 64):
                base.nprobe = nprobe
                secs, ids = timed_search(base, xq, k, args.repeats)
                qps = len(xq) / secs
                rows.append(Row("IVF-PQ", base_factory, f"nprobe={nprobe}", build_s, index_bytes(base), qps,
                                recall(ids, truth), qps / exact_qps))
                print(f"    {base_factory} nprobe={nprobe}: {qps:,.0f} q/s, recall@{k} {rows[-1].recall_at_k:.4f}",
                      flush=True)
        for params in settings:
            set_search_params(index, **params)
            secs, ids = timed_search(index, xq, k, args.repeats)
            qps = len(xq) / secs
            is_rec = factory == recommended_factory and params == {
                k_: min(v, nlist) if k_ == "nprobe" else v for k_, v in APPROXIMATE_SEARCH_PARAMS.items()}
            row = Row(name, factory, ",".join(f"{p}={v}" for p, v in params.items()), build_s, size, qps,
                      recall(ids, truth), qps / exact_qps, is_rec)
            rows.append(row)
            print(f"    {row.params}: {qps:,.0f} q/s ({row.speedup:.1f}x), recall@{k} {row.recall_at_k:.4f}",
                  flush=True)
        del index
    return rows


def markdown(rows: list[Row], k: int) -> str:
    lines = [f"| index | factory | search params | build s | size MiB | queries/s | speed-up | recall@{k} |",
             "|---|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        mark = " *" if r.recommended else ""
        lines.append(f"| {r.name}{mark} | `{r.factory}` | {r.params} | {r.build_s:.1f} | {r.bytes / 2 ** 20:.1f} | "
                     f"{r.qps:,.0f} | {r.speedup:.1f}x | {r.recall_at_k:.4f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000, help="collection size (default 1,000,000)")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--clusters", type=int, default=20_000)
    parser.add_argument("--queries", type=int, default=1_000)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--nlist", type=int, default=4096, help="IVF lists (lowered to n/39 for small --n)")
    parser.add_argument("--ivf-factory", default="IVF{nlist},PQ{pq}x4fs,RFlat",
                        help="the refined IVF-PQ factory ({nlist}, {pq} = dim/4 are filled in)")
    parser.add_argument("--repeats", type=int, default=3, help="timings per search, best kept")
    parser.add_argument("--threads", type=int, default=0, help="faiss threads (default: all cores)")
    parser.add_argument("--search-threads", type=int, default=0,
                        help="faiss threads while timing searches (default: as --threads); 1 gives steadier "
                             "numbers on a machine shared with other work")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    args.ivf_factory = args.ivf_factory.replace("{pq}", str(args.dim // 4))
    started = time.perf_counter()
    rows = run(args)
    print()
    print(f"n = {args.n:,}, d = {args.dim}, {args.clusters:,} clusters, {args.queries:,} queries, k = {args.k}, "
          f"{os.cpu_count()} CPU cores, search threads {args.search_threads or 'all'}, "
          f"total {time.perf_counter() - started:.0f} s")
    print(markdown(rows, args.k))
    rec = [r for r in rows if r.recommended]
    ok = bool(rec) and rec[0].recall_at_k >= 0.95 and rec[0].speedup >= 10
    if rec:
        print(f"\nrecommended approximate preset: {rec[0].factory} ({rec[0].params}): recall@{args.k} "
              f"{rec[0].recall_at_k:.4f} at {rec[0].speedup:.1f}x exact -> {'meets' if ok else 'MISSES'} the goal "
              f"(recall >= 0.95 at >= 10x)")
    approx = [r for r in rows if r.name != "exact" and r.recall_at_k >= 0.95]
    if approx:
        best = max(approx, key=lambda r: r.qps)
        print(f"fastest approximate setting with recall@{args.k} >= 0.95: {best.factory} ({best.params}): "
              f"{best.qps:,.0f} q/s = {best.speedup:.1f}x exact, recall {best.recall_at_k:.4f}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"args": vars(args), "rows": [asdict(r) for r in rows], "goal_met": ok}, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
