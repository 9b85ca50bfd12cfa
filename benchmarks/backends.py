"""faiss against Milvus Lite on the same descriptors: build time, queries/s and recall@10.

    python benchmarks/backends.py                    # 1,000,000 x 128 (the issue's size; long on 2 cores)
    python benchmarks/backends.py --n 200000 --json out.json

The descriptors are those of ``benchmarks/search.py`` (``--n`` L2-normalised vectors around ``--clusters`` centres,
``--queries`` held-out points). The baseline is the exact faiss Flat index measured in the same run: every row's
speed-up is its queries/s over Flat's, and recall@10 is the share of Flat's top-10 found. faiss rows are the
indexes ``vitrieval index --factory`` builds (HNSW32; the refined IVF-PQ preset,
``vitrieval.index.APPROXIMATE_FACTORY``). Milvus rows go through the backend ``vitrieval index --backend milvus``
uses (:class:`vitrieval.index.milvus_backend.MilvusCollection`: batched inserts of 5,000 rows, metric IP) into a
Milvus Lite file in a temporary folder; their build time runs from the first insert until the collection's vector
index covers every row (Milvus builds it in the background). Queries go as batches of 1,024 per request (faiss:
one batch); best of ``--repeats``. Milvus Lite is embedded, single-process Milvus: a cluster spreads the same
collection over query nodes, so its figures are what one laptop gets, not what a cluster gets.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from search import best_of, build, clustered, recall

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # runs from a checkout without installing


@dataclass
class Row:
    """One backend and index configuration."""

    backend: str
    index: str
    params: str
    build_s: float
    qps: float
    recall_at_k: float
    speedup: float = 1.0


def faiss_rows(xb: np.ndarray, xq: np.ndarray, k: int, repeats: int, nlist: int) -> tuple[list[Row], np.ndarray]:
    """Flat (the baseline and the truth), HNSW32 and the refined IVF-PQ preset."""
    from vitrieval.index import set_search_params

    flat, build_s = build("Flat", xb)
    secs, truth = best_of(repeats, lambda f=flat: f.search(xq, k)[1])
    exact_qps = len(xq) / secs
    rows = [Row("faiss", "Flat", "exact", build_s, exact_qps, 1.0)]
    print(f"  faiss Flat: {exact_qps:,.0f} q/s", flush=True)
    del flat
    plans = [("HNSW32", [{"ef_search": e} for e in (64, 128)]),
             (f"IVF{nlist},PQ{xb.shape[1] // 4}x4fs,RFlat", [{"nprobe": p, "k_factor": 8} for p in (16, 64)])]
    for factory, settings in plans:
        index, build_s = build(factory, xb)
        print(f"  faiss {factory}: built in {build_s:.1f} s", flush=True)
        for params in settings:
            set_search_params(index, **params)
            secs, ids = best_of(repeats, lambda i=index: i.search(xq, k)[1])
            rows.append(Row("faiss", factory, ",".join(f"{p}={v}" for p, v in params.items()), build_s,
                            len(xq) / secs, recall(ids, truth), len(xq) / secs / exact_qps))
            print(f"    {rows[-1].params}: {rows[-1].qps:,.0f} q/s, recall {rows[-1].recall_at_k:.4f}", flush=True)
        del index
    return rows, truth


def wait_indexed(collection, n: int, timeout: float = 7200) -> None:
    """Until Milvus's vector index covers all ``n`` rows."""
    collection.client.flush(collection.name)
    deadline = time.time() + timeout
    while time.time() < deadline:
        state = collection.client.describe_index(collection.name, "vector")
        if int(state.get("indexed_rows", 0)) >= n and int(state.get("pending_index_rows", 0)) == 0:
            return
        time.sleep(0.5)
    raise TimeoutError(f"Milvus did not index {n} rows in {timeout} s")


def milvus_rows(xb: np.ndarray, xq: np.ndarray, truth: np.ndarray, k: int, repeats: int, exact_qps: float,
                folder: Path, nlist: int) -> list[Row]:
    """Milvus Lite HNSW (M=32, as faiss HNSW32) and IVF_FLAT / IVF_SQ8 (``nlist`` lists)."""
    from vitrieval.index.milvus_backend import open_collection

    plans = [("HNSW", {"M": 32, "efConstruction": 40}, [{"ef": e} for e in (64, 128)]),
             ("IVF_FLAT", {"nlist": nlist}, [{"nprobe": p} for p in (16, 64)]),
             ("IVF_SQ8", {"nlist": nlist}, [{"nprobe": p} for p in (16, 64)])]
    rows = []
    ids = np.arange(len(xb), dtype=np.int64)
    paths, labels = [f"{i}.jpg" for i in range(len(xb))], [-1] * len(xb)
    for index_type, build_params, settings in plans:
        collection = open_collection(str(folder / f"{index_type.lower()}.db"), "bench")
        collection.create(xb.shape[1], "benchmark", "benchmark", index_type, build_params)
        t = time.perf_counter()
        collection.insert(ids, xb, paths, labels)
        inserted = time.perf_counter() - t
        wait_indexed(collection, len(xb))
        build_s = time.perf_counter() - t
        print(f"  Milvus Lite {index_type}: inserted in {inserted:.1f} s, indexed in {build_s:.1f} s", flush=True)
        for params in settings:
            secs, found = best_of(repeats, lambda c=collection, p=params: c.search(xq, k, p)[1])
            rows.append(Row("Milvus Lite", index_type, ",".join(f"{p}={v}" for p, v in params.items()), build_s,
                            len(xq) / secs, recall(found, truth), len(xq) / secs / exact_qps))
            print(f"    {rows[-1].params}: {rows[-1].qps:,.0f} q/s, recall {rows[-1].recall_at_k:.4f}", flush=True)
        collection.client.close()  # the temporary folder goes with it (no drop: Lite may still be compacting)
    return rows


def markdown(rows: list[Row], k: int) -> str:
    lines = [f"| backend | index | search params | build s | queries/s | vs faiss Flat | recall@{k} |",
             "|---|---|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r.backend} | `{r.index}` | {r.params} | {r.build_s:.1f} | {r.qps:,.0f} | {r.speedup:.2f}x "
                     f"| {r.recall_at_k:.4f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000, help="collection size (default 1,000,000)")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--clusters", type=int, default=20_000)
    parser.add_argument("--queries", type=int, default=1_000)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--nlist", type=int, default=4096, help="IVF lists, both backends (lowered to n/39)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="faiss threads (default: all cores)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    import faiss

    if args.threads:
        faiss.omp_set_num_threads(args.threads)
    started = time.perf_counter()
    data = clustered(args.n + args.queries, args.dim, args.clusters, args.seed)
    held_out = np.random.default_rng(args.seed + 1).choice(len(data), args.queries, replace=False)
    mask = np.ones(len(data), dtype=bool)
    mask[held_out] = False
    xq, xb = np.ascontiguousarray(data[held_out]), np.ascontiguousarray(data[mask])
    del data
    nlist = min(args.nlist, max(1, len(xb) // 39))
    print(f"data: {len(xb):,} x {args.dim}, {len(xq):,} queries, nlist {nlist}", flush=True)
    rows, truth = faiss_rows(xb, xq, args.k, args.repeats, nlist)
    with tempfile.TemporaryDirectory(prefix="vitrieval-backends-") as tmp:
        rows += milvus_rows(xb, xq, truth, args.k, args.repeats, rows[0].qps, Path(tmp), nlist)
    print()
    print(f"n = {len(xb):,}, d = {args.dim}, {args.queries:,} queries, k = {args.k}, {os.cpu_count()} CPU cores "
          f"(shared), faiss {faiss.__version__}, total {time.perf_counter() - started:.0f} s")
    print(markdown(rows, args.k))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"args": vars(args), "rows": [asdict(r) for r in rows]}, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
