"""The revisited protocol with a distractor set added to the database (revisitop's +R1M), in bounded memory.

The database becomes ``[D; X]``: the ``N`` benchmark images then the ``M`` distractors (revisitop's order, so on
equal scores a benchmark image ranks before a distractor: ties by lower index). Distractors are never positives
or junk, so only the positions of the benchmark images matter. For query ``q`` and benchmark image ``j``:

    pos(j) = #{j' in D ranked before j} + #{x in X : qᵀx > qᵀd_j}

and the revisited AP / mP@k (:mod:`vitrieval.metrics.revisited`) follow from those positions: positives at
positions ``p_0 < p_1 < ...``, ``r_k = p_k − #{junk before p_k}``, the trapezoid AP and ``mP@k`` as there. The
counts come from the distractors in blocks of ``block`` rows: for a block the ``queries × block`` scores are
sorted per query and the benchmark scores located in them (``searchsorted``), so memory is about
``queries × block`` floats whatever ``M`` is (the ``(N + M) × queries`` ranking is never built). ``distractors``
may be a memory-mapped ``.npy`` (``np.load(path, mmap_mode="r")``); its rows must be the same descriptors as the
benchmark's (same model, PCA and scales), unit rows.

Measured on the 2-core CPU (shared): 70 queries, 4,993 database images + 1,000,000 memory-mapped 32-d distractors
took 6.9 s wall (1.7 s CPU) and +163 MiB peak resident memory, 128 MiB of it the mapped file's pages.

Extraction: ``vitrieval evaluate --distractors DIR`` embeds a folder of distractor images resumably and sharded
(:mod:`vitrieval.index.descriptor_cache`, cached by model fingerprint and preprocessing) before any PCA;
:class:`ReducedRows` then applies the evaluation's PCA block by block as the counts read them, so the reduced
``M × D`` array is never held whole either.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from vitrieval.metrics.revisited import PROTOCOLS, compute_ap

__all__ = ["ReducedRows", "distractor_counts", "revisited_map_with_distractors"]


class ReducedRows:
    """The rows of ``features`` (e.g. a memory-mapped ``.npy``) through ``reduce`` (the evaluation's PCA; ``None``:
    as they are), computed for the rows a slice asks for: what :func:`distractor_counts` reads block by block."""

    def __init__(self, features: np.ndarray, reduce: Callable[[np.ndarray], np.ndarray] | None = None) -> None:
        if features.ndim != 2 or len(features) == 0:
            raise ValueError(f"distractor features must be a non-empty n x d array, got shape {features.shape}")
        self.features = features
        self.reduce = reduce
        self.ndim = 2
        self.shape = (len(features), int(self[0:1].shape[1]))

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, rows: slice) -> np.ndarray:
        x = np.array(self.features[rows], dtype=np.float32)  # a writable copy of the block (mapped rows are not)
        return x if self.reduce is None else self.reduce(x)


def distractor_counts(database: np.ndarray, queries: np.ndarray, distractors: np.ndarray,
                      block: int = 65_536) -> np.ndarray:
    """``counts[i, j] = #{x in distractors : queries[i]·x > queries[i]·database[j]}`` (float32 scores), as an
    ``n_queries × n_database`` int64 array, from blocks of ``block`` distractor rows."""
    q = np.ascontiguousarray(queries, dtype=np.float32)
    s_db = q @ np.ascontiguousarray(database, dtype=np.float32).T
    counts = np.zeros(s_db.shape, dtype=np.int64)
    for start in range(0, len(distractors), block):
        part = np.ascontiguousarray(distractors[start:start + block], dtype=np.float32)
        s_x = np.sort(q @ part.T, axis=1)  # (n_q, b) increasing
        for i in range(len(q)):
            counts[i] += s_x.shape[1] - np.searchsorted(s_x[i], s_db[i], side="right")
    return counts


def _lists(entry: Mapping[str, Any], keys: Sequence[str]) -> np.ndarray:
    parts = [np.asarray(entry.get(k, []), dtype=np.int64).reshape(-1) for k in keys]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def revisited_map_with_distractors(database: np.ndarray, queries: np.ndarray, distractors: np.ndarray,
                                   gnd: Sequence[Mapping[str, Any]], kappas: Sequence[int] = (1, 5, 10),
                                   block: int = 65_536) -> dict[str, dict[str, Any]]:
    """:func:`vitrieval.metrics.revisited_map_from_descriptors` of ``database`` + ``distractors`` (module
    docstring): ``{protocol: {"map", "aps", "mp_at_k"}}``."""
    db = np.ascontiguousarray(database, dtype=np.float32)
    q = np.ascontiguousarray(queries, dtype=np.float32)
    if distractors.ndim != 2 or distractors.shape[1] != db.shape[1]:
        raise ValueError(f"distractors must be n x {db.shape[1]} (the benchmark's descriptors), got shape "
                         f"{tuple(distractors.shape)}")
    if len(q) != len(gnd):
        raise ValueError(f"{len(q)} queries but gnd describes {len(gnd)}")
    scores = q @ db.T
    order = np.argsort(-scores, axis=1, kind="stable")  # ties by lower database index
    within = np.empty_like(order)
    np.put_along_axis(within, order, np.arange(db.shape[0])[None, :], axis=1)
    positions = within + distractor_counts(db, q, distractors, block)
    results: dict[str, dict[str, Any]] = {}
    for protocol, (ok_keys, junk_keys) in PROTOCOLS.items():
        aps: list[float | None] = []
        prs: list[list[float]] = []
        for i, entry in enumerate(gnd):
            ok = _lists(entry, ok_keys)
            if len(ok) == 0:
                aps.append(None)
                continue
            junk = np.unique(_lists(entry, junk_keys))
            p_ok = np.sort(positions[i, np.unique(ok)])
            p_junk = np.sort(positions[i, junk])
            r = p_ok - np.searchsorted(p_junk, p_ok)  # junk images before each positive removed
            aps.append(compute_ap(r, len(ok)))
            top = r.max() + 1
            prs.append([float(np.sum(r + 1 <= min(k, top)) / min(k, top)) for k in kappas])
        valid = [a for a in aps if a is not None]
        results[protocol] = {
            "map": float(np.mean(valid)) if valid else float("nan"),
            "aps": aps,
            "mp_at_k": {int(k): (float(np.mean([p[j] for p in prs])) if prs else float("nan"))
                        for j, k in enumerate(kappas)},
        }
    return results
