"""Cost of αQE and DBA re-ranking (:mod:`vitrieval.rerank`) against the plain exact search, in one run.

    python benchmarks/rerank.py                         # 1,000,000 x 128 database, 1,000 queries
    python benchmarks/rerank.py --n 200000 --json out.json

The database is ``--n`` unit vectors around ``--clusters`` random centres (``benchmarks/search.py``'s generator),
the queries ``--queries`` more drawn the same way. Rows (each timed once, in this order, in one process):

- ``plain``: exact top-``--k`` inner-product search of the queries (:func:`vitrieval.metrics.exact_knn`);
- ``+aQE``: ``alpha_query_expansion(queries, db)`` then the same search with the expanded queries;
- ``DBA (offline)``: ``database_side_augmentation(db)``, once per database: every vector's own top-n search,
  i.e. an N × N exact search in chunks (never the N × N matrix) -- this is the expensive part, O(N² d);
- ``+aQE on DBA db``: αQE against the augmented database, then the search in it (the per-query cost once DBA
  is done);
- ``Index.search``: the same queries through :meth:`vitrieval.index.Index.search` on an index of the database
  (``--index-factory``, default ``Flat``: faiss's exact inner-product search; hits as ``Hit`` objects);
- ``Index.search aqe``: ``Index.search(..., rerank="aqe")``: each query's top-n from the index, its stored
  vectors read back, αQE, the final search (:mod:`vitrieval.index.query_rerank`); its ratio is against
  ``Index.search``.

``--no-dba`` leaves the two DBA rows out (DBA's O(N²) pass dominates the run).

Time is wall and CPU (user + system, all threads); memory is the increase of the peak resident set (``VmHWM``,
reset through ``/proc/self/clear_refs`` before each row) over the resident set before the row, so the arrays
that exist before it (database, queries) are not counted. The ratios are against ``plain``.

Measured (``--n 200000``, 2-core CPU shared with other jobs, load average about 10, ``nice 10``; CPU time is the
steadier figure): plain 1.36 s CPU / +171 MiB; +aQE 2.57 s (1.9x) / +222 MiB; DBA 239 s CPU (176x; 588 s wall)
/ +249 MiB; +aQE on the DBA database 2.89 s (2.1x) / +200 MiB. The peaks stay at the k-NN chunk budget (256 MiB)
whatever N is; DBA's time grows as N², so 1M x 128 is about 25x the 200k figure (some 6,000 CPU seconds here,
not run on this machine).

``Index.search(rerank="aqe")`` against ``Index.search`` (Flat; 2-core CPU shared with six other jobs, load 10-20,
``nice 10``): ``--n 1000000 --queries 200 --no-dba`` 8.65 s vs 4.50 s CPU (1.92x; wall 29.3 s vs 15.0 s) and
+2.8 vs +2.7 MiB peak; ``--n 100000 --queries 200`` 0.97 s vs 0.44 s CPU (2.23x; DBA there 56 s CPU, 226x the
plain search). Its top-100 equals the exact ``+aQE`` row's in both runs (overlap 1.000): two index searches per
query plus the αQE of n stored vectors.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from eval_knn import cpu_seconds, reset_peak, status_kib  # the sibling benchmark's memory / CPU probes
from search import clustered  # the sibling benchmark's generator


def measure(name: str, fn, rows: list[dict]) -> object:
    base = status_kib("VmRSS" if reset_peak() else "VmHWM")
    c0, t0 = cpu_seconds(), time.perf_counter()
    out = fn()
    wall, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    rows.append({"row": name, "wall_s": wall, "cpu_s": cpu, "peak_increase_mib": (status_kib("VmHWM") - base) / 1024})
    print(f"{name:<16} {wall:9.2f} s wall {cpu:9.2f} s CPU  peak +{rows[-1]['peak_increase_mib']:8.1f} MiB",
          flush=True)
    return out


def _index(db: np.ndarray, factory: str):
    """An :class:`~vitrieval.index.Index` of ``db`` (ids = rows) without a model: queried with descriptors."""
    from vitrieval.index import Index, IndexEntry
    from vitrieval.index.faiss_utils import make_faiss_index, train_faiss_index

    faiss_index = make_faiss_index(factory, db.shape[1])
    if not faiss_index.is_trained:
        train_faiss_index(faiss_index, factory, [db])
    faiss_index.add_with_ids(db, np.arange(len(db), dtype=np.int64))
    entries = [IndexEntry(i, f"/benchmark/{i}.jpg") for i in range(len(db))]
    return Index(faiss_index, entries, {"descriptor_dim": db.shape[1], "fingerprint": "benchmark",
                                        "factory": factory})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000, help="database size (default 1,000,000)")
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--clusters", type=int, default=20_000)
    ap.add_argument("--k", type=int, default=100, help="neighbours returned by each search (default 100)")
    ap.add_argument("--rerank-n", type=int, default=2)
    ap.add_argument("--alpha", type=float, default=3.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--index-factory", default="Flat", help="faiss factory of the Index rows (default Flat)")
    ap.add_argument("--no-dba", dest="dba", action="store_false", help="leave the DBA rows out")
    ap.add_argument("--json", help="also write the rows as JSON here")
    args = ap.parse_args(argv)

    import torch

    from vitrieval.metrics import exact_knn
    from vitrieval.rerank import RerankOptions, alpha_query_expansion, database_side_augmentation

    data = clustered(args.n + args.queries, args.dim, args.clusters, args.seed)
    db, q = data[: args.n], data[args.n:]
    del data
    n, a, k = args.rerank_n, args.alpha, args.k
    rows: list[dict] = []
    print(f"database {args.n:,} x {args.dim}, {args.queries:,} queries, top-{k}, n = {n}, alpha = {a:g}, "
          f"torch threads {torch.get_num_threads()}", flush=True)
    exact_knn(q[:8], 1, db[:1000])  # warm-up: first-call allocations are nobody's cost
    alpha_query_expansion(q[:8], db[:1000], n, a)
    _, plain_idx = measure("plain", lambda: exact_knn(q, k, db), rows)
    _, aqe_idx = measure("+aQE", lambda: exact_knn(alpha_query_expansion(q, db, n, a), k, db), rows)
    overlap = {"aqe": float(np.mean([len(set(x) & set(y)) / k for x, y in zip(plain_idx, aqe_idx)]))}
    if args.dba:
        db2 = measure("DBA (offline)", lambda: database_side_augmentation(db, n, a), rows)
        _, both_idx = measure("+aQE on DBA db", lambda: exact_knn(alpha_query_expansion(q, db2, n, a), k, db2),
                              rows)
        overlap["aqe+dba"] = float(np.mean([len(set(x) & set(y)) / k for x, y in zip(plain_idx, both_idx)]))
        del db2
    index = _index(db, args.index_factory)
    index.search(q[:8], k=k, rerank="aqe")  # warm-up
    plain_hits = measure("Index.search", lambda: index.search(q, k=k), rows)
    aqe_hits = measure("Index.search aqe", lambda: index.search(q, k=k, rerank=RerankOptions(("aqe",), n, a)), rows)
    overlap["index_aqe_vs_exact_aqe"] = float(np.mean([len({h.id for h in hits} & set(y)) / k
                                                        for hits, y in zip(aqe_hits, aqe_idx)]))
    overlap["index_vs_exact"] = float(np.mean([len({h.id for h in hits} & set(y)) / k
                                               for hits, y in zip(plain_hits, plain_idx)]))
    base, index_base = rows[0], next(r for r in rows if r["row"] == "Index.search")
    for r in rows:
        ref = index_base if r["row"].startswith("Index.") else base
        r["baseline"] = ref["row"]
        r["wall_ratio"] = r["wall_s"] / ref["wall_s"]
        r["cpu_ratio"] = r["cpu_s"] / ref["cpu_s"]
    print("\n| row | wall (s) | CPU (s) | peak RSS increase (MiB) | wall / baseline | CPU / baseline | baseline |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for r in rows:
        print(f"| {r['row']} | {r['wall_s']:.2f} | {r['cpu_s']:.2f} | {r['peak_increase_mib']:.1f} | "
              f"{r['wall_ratio']:.2f} | {r['cpu_ratio']:.2f} | {r['baseline']} |")
    print(f"\ntop-{k} overlap with the plain search: " + ", ".join(f"{key} {v:.3f}" for key, v in overlap.items()))
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows, "overlap_with_plain": overlap},
                                              indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
