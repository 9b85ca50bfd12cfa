"""Benchmark: revisited Oxford / Paris mAP on ROxford5k-sized inputs (70 queries x 4,993 images).

Times :func:`vitrieval.metrics.revisited_map` (vectorised over all queries) and
:func:`vitrieval.metrics.revisited_map_from_descriptors` against a straightforward reference written here: the
authors' ``compute_map`` loop (per query: ``np.isin`` over the whole ranking, a Python loop to discount junk
images, a Python loop for the trapezoid AP), fed by a full ``argsort`` per query when starting from
descriptors. Both must give the same numbers (asserted to 1e-9) and match the golden expectations.

    python benchmarks/revisited_map.py [--case oxford_sized] [--repeats 20]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from vitrieval.metrics import revisited_map, revisited_map_from_descriptors

GOLDEN = Path(__file__).resolve().parents[1].parent / "shared" / "golden" / "revisited_map"
PROTOCOLS = {
    "easy": (("easy",), ("junk", "hard")),
    "medium": (("easy", "hard"), ("junk",)),
    "hard": (("hard",), ("junk", "easy")),
}


# ---------------------------------------------------------------------------------------------- reference


def reference_ap(ranks_of_positives: np.ndarray, n_positives: int) -> float:
    ap = 0.0
    recall_step = 1.0 / n_positives
    for j, rank in enumerate(ranks_of_positives):
        precision_0 = 1.0 if rank == 0 else float(j) / rank
        precision_1 = float(j + 1) / (rank + 1)
        ap += (precision_0 + precision_1) * recall_step / 2.0
    return ap


def reference_compute_map(ranks: np.ndarray, gnd: list[dict],
                          kappas: list[int]) -> tuple[float, np.ndarray, np.ndarray]:
    """revisitop's compute_map, written plainly: one query at a time."""
    n_q = len(gnd)
    aps = np.full(n_q, np.nan)
    prs = np.full((n_q, len(kappas)), np.nan)
    total_ap, total_pr, n_empty = 0.0, np.zeros(len(kappas)), 0
    for i in range(n_q):
        ok = np.asarray(gnd[i]["ok"], dtype=np.int64)
        if ok.size == 0:
            n_empty += 1
            continue
        junk_items = np.asarray(gnd[i]["junk"], dtype=np.int64)
        pos = np.arange(ranks.shape[0])[np.isin(ranks[:, i], ok)]
        junk = np.arange(ranks.shape[0])[np.isin(ranks[:, i], junk_items)]
        n_junk_before, ij = 0, 0
        for ip in range(len(pos)):
            while ij < len(junk) and pos[ip] > junk[ij]:
                n_junk_before += 1
                ij += 1
            pos[ip] -= n_junk_before
        aps[i] = reference_ap(pos, len(ok))
        total_ap += aps[i]
        pos = pos + 1
        for j, kappa in enumerate(kappas):
            kq = min(max(pos), kappa)
            prs[i, j] = (pos <= kq).sum() / kq
        total_pr += prs[i]
    return total_ap / (n_q - n_empty), aps, total_pr / (n_q - n_empty)


def reference_revisited(ranks: np.ndarray, gnd: list[dict], kappas: list[int]) -> dict[str, dict[str, Any]]:
    out = {}
    for protocol, (ok_keys, junk_keys) in PROTOCOLS.items():
        g = [{"ok": sum((list(e[k]) for k in ok_keys), []), "junk": sum((list(e[k]) for k in junk_keys), [])}
             for e in gnd]
        mean_ap, aps, mp = reference_compute_map(ranks, g, kappas)
        out[protocol] = {
            "map": mean_ap,
            "aps": [None if np.isnan(a) else float(a) for a in aps],
            "mp_at_k": {int(k): float(v) for k, v in zip(kappas, mp)},
        }
    return out


def reference_from_descriptors(database: np.ndarray, queries: np.ndarray, gnd: list[dict], kappas: list[int]) -> dict:
    ranks = np.empty((database.shape[0], queries.shape[0]), dtype=np.int64)
    for i in range(queries.shape[0]):
        ranks[:, i] = np.argsort(-(database @ queries[i]))  # full argsort per query
    return reference_revisited(ranks, gnd, kappas)


# ---------------------------------------------------------------------------------------------- harness


def max_difference(a: dict, b: dict) -> float:
    worst = 0.0
    for protocol in PROTOCOLS:
        worst = max(worst, abs(a[protocol]["map"] - b[protocol]["map"]))
        for x, y in zip(a[protocol]["aps"], b[protocol]["aps"], strict=True):
            assert (x is None) == (y is None)
            if x is not None:
                worst = max(worst, abs(x - y))
        for k in b[protocol]["mp_at_k"]:
            worst = max(worst, abs(a[protocol]["mp_at_k"][int(k)] - b[protocol]["mp_at_k"][k]))
    return worst


def best_time(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--case", default="oxford_sized", help="golden case name (tiny, medium, oxford_sized)")
    p.add_argument("--repeats", type=int, default=20, help="timing repeats (best of)")
    args = p.parse_args(argv)

    npz, js = GOLDEN / f"{args.case}.npz", GOLDEN / f"{args.case}.json"
    if not npz.is_file():
        raise SystemExit(f"golden case not found: {npz}")
    with np.load(npz) as data:
        database, queries, ranks = data["database"], data["queries"], data["ranks"]
    case = json.loads(js.read_text())
    gnd, kappas = case["gnd"], case["kappas"]
    expected = {p_: {**v, "mp_at_k": {int(k): x for k, x in v["mp_at_k"].items()}}
                for p_, v in case["expected"].items()}

    rows = []
    t_ref, out_ref = best_time(lambda: reference_revisited(ranks, gnd, kappas), args.repeats)
    t_vit, out_vit = best_time(lambda: revisited_map(ranks, gnd, kappas), args.repeats)
    rows.append(("from ranks", t_ref, t_vit, max_difference(out_vit, out_ref), max_difference(out_vit, expected)))
    t_ref_d, out_ref_d = best_time(lambda: reference_from_descriptors(database, queries, gnd, kappas), args.repeats)
    t_vit_d, out_vit_d = best_time(
        lambda: revisited_map_from_descriptors(database, queries, gnd, kappas), args.repeats
    )
    rows.append(("from descriptors", t_ref_d, t_vit_d, max_difference(out_vit_d, out_ref_d),
                 max_difference(out_vit_d, expected)))

    n_db, n_q = ranks.shape
    print(f"# revisited mAP, case {args.case}: {n_q} queries x {n_db} database images; best of {args.repeats}")
    print()
    print("| input | reference (ms) | vitrieval (ms) | speed-up | max abs diff vs reference | max abs diff vs golden |")
    print("|---|---|---|---|---|---|")
    for name, t_r, t_v, d_ref, d_gold in rows:
        print(f"| {name} | {t_r * 1e3:.1f} | {t_v * 1e3:.1f} | {t_r / t_v:.1f}x | {d_ref:.1e} | {d_gold:.1e} |")
        assert d_ref < 1e-9 and d_gold < 1e-9, (name, d_ref, d_gold)
    print()
    print(
        "mAP (E / M / H): "
        + " / ".join(f"{100 * out_vit[p_]['map']:.2f}" for p_ in PROTOCOLS)
        + "; mP@10 (E / M / H): "
        + " / ".join(f"{100 * out_vit[p_]['mp_at_k'][10]:.2f}" for p_ in PROTOCOLS if 10 in out_vit[p_]["mp_at_k"])
    )


if __name__ == "__main__":
    main()
