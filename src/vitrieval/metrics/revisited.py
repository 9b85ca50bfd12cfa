"""Revisited Oxford / Paris evaluation (Radenović et al., "Revisiting Oxford and Paris", CVPR 2018).

Each query has ground-truth lists ``easy``, ``hard`` and ``junk`` (0-based database indices). Three protocols
choose which images are positives ("ok") and which are ignored ("junk"):

    easy:    ok = easy,         junk = junk + hard
    medium:  ok = easy + hard,  junk = junk
    hard:    ok = hard,         junk = junk + easy

Junk images are removed from the ranking: a positive at 0-based position ``p`` gets the rank
``r = p - #{junk images before p}``. With the positives' ranks ``r_0 < r_1 < ... `` and ``n`` = the length of
the ok list, AP follows the trapezoid rule of the reference code (``compute_ap`` in revisitop):

    AP = (1 / n) * sum_j (P0_j + P1_j) / 2,   P0_j = j / r_j (1 if r_j = 0),   P1_j = (j + 1) / (r_j + 1)

and precision at k uses the 1-based ranks ``r'_j = r_j + 1``:

    P@k = #{j : r'_j <= min(k, max_j r'_j)} / min(k, max_j r'_j)

Queries without positives under a protocol get ``None`` and are left out of the means (mAP and mP@k).
Everything here is vectorised over all queries at once (positions via the inverse of the rankings, runs of
sorted keys, ``searchsorted`` and ``bincount``); there is no loop over queries.
Values match the authors' ``compute_map`` (commit be39832) to floating-point rounding.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["PROTOCOLS", "compute_ap", "revisited_map", "revisited_map_from_descriptors"]

#: Protocol name -> (ground-truth lists that are positives, lists that are junk).
PROTOCOLS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "easy": (("easy",), ("junk", "hard")),
    "medium": (("easy", "hard"), ("junk",)),
    "hard": (("hard",), ("junk", "easy")),
}


def compute_ap(ranks_of_positives: Sequence[int] | np.ndarray, n_positives: int) -> float:
    """Average precision by the trapezoid rule, from the sorted 0-based ranks of the retrieved positives.

        AP = (1 / n_positives) * sum_j (P0_j + P1_j) / 2,
        P0_j = j / r_j  (1 when r_j = 0),   P1_j = (j + 1) / (r_j + 1)

    ``ranks_of_positives`` are the positions ``r_0 < r_1 < ...`` of the positives once junk images are removed;
    ``n_positives`` is the number of positives in the ground truth (positives missing from the ranking lower AP).
    """
    r = np.asarray(ranks_of_positives, dtype=np.float64).reshape(-1)
    if n_positives < 1:
        raise ValueError(f"n_positives must be >= 1, got {n_positives}")
    if r.size and (r.min() < 0 or np.any(np.diff(r) < 0)):
        raise ValueError("ranks_of_positives must be non-negative and sorted in increasing order")
    j = np.arange(r.size, dtype=np.float64)
    p0 = np.divide(j, r, out=np.ones_like(r), where=r != 0)
    p1 = (j + 1.0) / (r + 1.0)
    return float(np.sum((p0 + p1) / 2.0) / n_positives)


def _as_index_list(q: int, key: str, entry: Mapping[str, Any]) -> np.ndarray:
    if key not in entry:
        if key == "junk":
            return np.empty(0, dtype=np.int64)
        raise ValueError(f"gnd[{q}] has no {key!r} list (expected keys 'easy', 'hard', 'junk')")
    arr = np.asarray(entry[key])
    if arr.size == 0:
        return np.empty(0, dtype=np.int64)
    if arr.ndim != 1 or arr.dtype.kind not in "iu":
        raise ValueError(f"gnd[{q}][{key!r}] must be a flat list of integer database indices")
    if arr.min() < 0:
        raise ValueError(f"gnd[{q}][{key!r}] holds a negative database index")
    return arr.astype(np.int64, copy=False)


def _check_ranks(ranks: np.ndarray, n_queries: int) -> np.ndarray:
    ranks = np.asarray(ranks)
    if ranks.ndim != 2:
        raise ValueError(f"ranks must be a 2-D array (n_db x n_queries), got shape {ranks.shape}")
    if ranks.shape[1] != n_queries:
        raise ValueError(f"ranks has {ranks.shape[1]} columns (queries) but gnd describes {n_queries} queries")
    if ranks.size and ranks.dtype.kind not in "iu":
        raise ValueError(f"ranks must hold integer database indices, got dtype {ranks.dtype}")
    if ranks.size and ranks.min() < 0:
        raise ValueError("ranks holds a negative database index")
    return ranks.astype(np.int64, copy=False)


_BLOCK_ENTRIES = 2**23  # (database item x query) entries of the inverse ranking built at a time


def _positions(ranks: np.ndarray, n_items: int) -> np.ndarray:
    """Inverse of the rankings: ``pos[x, i]`` is the 0-based position of database item ``x`` in column ``i``
    (``-1`` if the column does not list it). Raises if a column lists an item twice."""
    n_rows, n_q = ranks.shape
    flat = (ranks * n_q + np.arange(n_q, dtype=np.int64)[None, :]).ravel()
    pos = np.full(n_items * n_q, -1, dtype=np.int64)
    pos[flat] = np.repeat(np.arange(n_rows, dtype=np.int64), n_q)
    # A repeated index in a column overwrites an entry, leaving fewer than n_rows filled positions.
    if np.count_nonzero(pos >= 0) != ranks.size:
        raise ValueError("a column of ranks lists the same database index twice")
    return pos.reshape(n_items, n_q)


def _sorted_keys(pos: np.ndarray, lists: list[np.ndarray], n_rows: int) -> np.ndarray:
    """Sorted unique keys ``query * n_rows + position`` of the listed items found in each query's ranking."""
    if not lists:
        return np.empty(0, dtype=np.int64)
    items = np.concatenate(lists)
    query = np.repeat(np.arange(len(lists)), [len(x) for x in lists])
    p = pos[items, query]
    found = p >= 0
    return np.unique(query[found] * n_rows + p[found])


def _protocol_stats(
    ranks: np.ndarray, lists: dict[str, list[np.ndarray]], n_items: int, kappas: np.ndarray
) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per protocol: (AP per query, precision at each kappa (n_kappas x n_q), query has positives).

    Works on the positions of the listed images only: with ``key = query * n_rows + position`` sorted, the
    positives of a query are a contiguous run, ``j`` is the offset in that run and the junk images before a
    positive are counted with ``searchsorted`` on the sorted junk keys.
    """
    n_rows, n_q = ranks.shape
    pos = _positions(ranks, n_items)
    out = {}
    for protocol, (ok_keys, junk_keys) in PROTOCOLS.items():
        ok_lists = [np.concatenate(parts) for parts in zip(*(lists[key] for key in ok_keys))]
        junk_lists = [np.concatenate(parts) for parts in zip(*(lists[key] for key in junk_keys))]
        n_ok = np.array([len(x) for x in ok_lists], dtype=np.int64)  # duplicates counted, as in revisitop
        ok = _sorted_keys(pos, ok_lists, n_rows)
        junk = _sorted_keys(pos, junk_lists, n_rows)
        query, position = np.divmod(ok, max(n_rows, 1))
        junk_before = np.searchsorted(junk, ok, side="left") - np.searchsorted(junk, query * n_rows, side="left")
        rank = (position - junk_before).astype(np.float64)  # junk-free 0-based rank of each positive
        run_start = np.searchsorted(ok, query * n_rows, side="left")
        j = (np.arange(len(ok)) - run_start).astype(np.float64)  # index of the positive among the positives
        p0 = np.divide(j, rank, out=np.ones_like(rank), where=rank != 0)
        p1 = (j + 1.0) / (rank + 1.0)
        ap = np.bincount(query, weights=(p0 + p1) / 2.0, minlength=n_q) / np.maximum(n_ok, 1)

        rank1 = rank + 1.0  # 1-based, non-decreasing within a query's run: its last entry is the largest
        max_rank = np.zeros(n_q)
        run_end = np.flatnonzero(np.diff(query, append=-1) != 0)
        max_rank[query[run_end]] = rank1[run_end]
        kq = np.minimum(max_rank[None, :], kappas[:, None])  # (n_kappas x n_q)
        within = np.zeros(kq.shape)
        for i in range(len(kappas)):
            within[i] = np.bincount(query, weights=rank1 <= kq[i][query], minlength=n_q)
        prs = np.divide(within, kq, out=np.zeros(kq.shape), where=kq > 0)
        out[protocol] = (ap, prs, n_ok > 0)
    return out


def revisited_map(
    ranks: np.ndarray,
    gnd: Sequence[Mapping[str, Any]],
    kappas: Sequence[int] = (1, 5, 10),
) -> dict[str, dict[str, Any]]:
    """mAP, per-query AP and mean precision at k under the easy, medium and hard protocols.

    ``ranks`` is ``n_db x n_queries``: column ``i`` lists database indices by decreasing similarity to query
    ``i`` (a column may be a truncated ranking; each index at most once). ``gnd[i]`` has the 0-based lists
    ``easy``, ``hard`` and ``junk``. For each protocol (ok / junk lists as in the module docstring)::

        r_j   = p_j - #{junk before p_j}            (p_j: positions of the positives in column i)
        AP_i  = (1 / n_ok) * sum_j (j / r_j + (j + 1) / (r_j + 1)) / 2     (j / r_j := 1 when r_j = 0)
        mAP   = mean of AP_i over queries with n_ok > 0
        mP@k  = mean over the same queries of #{j : r_j + 1 <= k_i} / k_i,   k_i = min(k, max_j r_j + 1)

    Returns ``{protocol: {"map": float, "aps": [float | None per query], "mp_at_k": {k: float}}}`` for
    ``protocol`` in ``"easy"``, ``"medium"``, ``"hard"``; ``aps`` is ``None`` for a query without positives
    and means over no query are ``nan``.
    """
    n_q = len(gnd)
    ranks = _check_ranks(ranks, n_q)
    kappa_arr = np.asarray(list(kappas), dtype=np.int64)
    if kappa_arr.ndim != 1 or np.any(kappa_arr < 1):
        raise ValueError(f"kappas must be positive integers, got {list(kappas)!r}")
    lists = {key: [_as_index_list(q, key, entry) for q, entry in enumerate(gnd)] for key in ("easy", "hard", "junk")}
    n_items = 1 + max([int(ranks.max()) if ranks.size else -1]
                      + [int(x.max()) for v in lists.values() for x in v if x.size])

    # Blocks of query columns keep the (n_db x block) inverse ranking small even for R1M-sized databases;
    # ROxford / RParis fit in one block.
    block = max(1, _BLOCK_ENTRIES // max(1, n_items))
    parts = [
        _protocol_stats(ranks[:, s : s + block], {key: v[s : s + block] for key, v in lists.items()}, n_items,
                        kappa_arr)
        for s in range(0, n_q, block)
    ]
    results: dict[str, dict[str, Any]] = {}
    for protocol in PROTOCOLS:
        ap = np.concatenate([part[protocol][0] for part in parts]) if parts else np.zeros(0)
        prs = np.concatenate([part[protocol][1] for part in parts], axis=1) if parts else np.zeros((len(kappa_arr), 0))
        has_pos = np.concatenate([part[protocol][2] for part in parts]) if parts else np.zeros(0, dtype=bool)
        n_valid = int(has_pos.sum())
        results[protocol] = {
            "map": float(ap[has_pos].sum() / n_valid) if n_valid else float("nan"),
            "aps": [float(a) if h else None for a, h in zip(ap, has_pos)],
            "mp_at_k": {
                int(k): (float(prs[i, has_pos].sum() / n_valid) if n_valid else float("nan"))
                for i, k in enumerate(kappa_arr)
            },
        }
    return results


def revisited_map_from_descriptors(
    database: np.ndarray,
    queries: np.ndarray,
    gnd: Sequence[Mapping[str, Any]],
    kappas: Sequence[int] = (1, 5, 10),
) -> dict[str, dict[str, Any]]:
    """:func:`revisited_map` of the ranking by inner product (cosine for L2-normalised descriptors).

        ranks[:, i] = argsort_stable(-(database @ queries[i]))      (ties by lower database index)

    ``database`` is ``n_db x d``, ``queries`` is ``n_queries x d`` (computed in their common float precision,
    at least float32). Returns the same dictionary as :func:`revisited_map`.
    """
    database = np.asarray(database)
    queries = np.asarray(queries)
    if database.ndim != 2 or queries.ndim != 2:
        raise ValueError(f"database and queries must be 2-D, got shapes {database.shape} and {queries.shape}")
    if database.shape[1] != queries.shape[1]:
        raise ValueError(f"database has dimension {database.shape[1]} but queries have dimension {queries.shape[1]}")
    if queries.shape[0] != len(gnd):
        raise ValueError(f"{queries.shape[0]} queries but gnd describes {len(gnd)}")
    dtype = np.result_type(database.dtype, queries.dtype, np.float32)
    neg = -(queries.astype(dtype, copy=False) @ database.astype(dtype, copy=False).T)  # (n_q x n_db), rows contiguous
    if not np.all(np.isfinite(neg)):
        raise ValueError("database or queries contain NaN or infinite values")
    order = np.argsort(neg, axis=1)  # introsort: fast but not stable...
    if neg.shape[1] > 1:
        tied = (np.diff(np.take_along_axis(neg, order, axis=1), axis=1) == 0).any(axis=1)
        if tied.any():  # ...so rows holding equal scores are redone with a stable sort (ties by lower index)
            order[tied] = np.argsort(neg[tied], axis=1, kind="stable")
    return revisited_map(order.T, gnd, kappas)
