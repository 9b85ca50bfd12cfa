"""Descriptor analysis of the paper's Figs 2, 3 and 5: PCA energy and the positive / negative pair similarities.

Pure numpy on descriptors (rows L2-normalised here, so any scale is fine):

- :func:`cumulative_energy` (Figs 2-3): the eigenvalues ``e_1 ≥ … ≥ e_m`` of the covariance of the *centred*
  descriptors (``m = min(n, d)``); entry ``k`` is ``(e_1 + … + e_{k+1}) / Σ e``, so the list rises to 1.0. A curve
  that reaches 0.9 in a few components means collapsed dimensions; KoLeo flattens it.
- :func:`pair_histograms` (Fig 5): histograms over ``[-1, 1]`` of the cosine ``s_ij = z_iᵀ z_j`` of positive and
  negative pairs, accumulated in blocks (SOP's 1.8e9 pairs never sit in memory), with the pairs counted as:

  * ``leave-one-out`` (SOP, CUB, folder): every unordered pair ``{i, j}``, ``i ≠ j``, of test images;
    positive iff same label;
  * ``query-gallery`` (In-Shop): every query × gallery pair; positive iff same label;
  * ``revisited`` (ROxford5k / RParis6k): every query × database pair under the **Medium** protocol: positive
    iff the image is in the query's ``easy`` or ``hard`` list, **junk left out** (not counted at all), negative
    otherwise.

- The **overlap** of the two distributions is the histogram intersection ``Σ_b min(p_b, q_b)`` of the two
  normalised histograms (``p_b`` = fraction of positive pairs in bin ``b``, ``q_b`` the same for negatives):
  1.0 for identical distributions, 0.0 when no bin holds both (perfectly separable at the bin width).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

DEFAULT_BINS = 200


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def cumulative_energy(descriptors: np.ndarray) -> list[float]:
    """Cumulative explained variance of the principal components of ``descriptors`` (n × d), ending at 1.0."""
    x = np.asarray(descriptors, dtype=np.float64)
    x = x - x.mean(axis=0, keepdims=True)
    ev = np.linalg.eigvalsh(x.T @ x)[::-1] if x.shape[0] > x.shape[1] else np.linalg.svd(x, compute_uv=False) ** 2
    ev = np.clip(ev, 0.0, None)
    total = float(ev.sum())
    if total <= 0.0:
        return [1.0] * len(ev)
    out = (np.cumsum(ev) / total).tolist()
    out[-1] = 1.0
    return out


def components_for(energy: Sequence[float], fraction: float) -> int:
    """The number of components whose cumulative energy first reaches ``fraction``."""
    return int(np.searchsorted(np.asarray(energy), fraction - 1e-12) + 1)


class _Histograms:
    def __init__(self, bins: int) -> None:
        self.bins = bins
        self.pos = np.zeros(bins, dtype=np.int64)
        self.neg = np.zeros(bins, dtype=np.int64)
        self.sums = [0.0, 0.0]

    def _index(self, s: np.ndarray) -> np.ndarray:
        return np.clip(((s + 1.0) * 0.5 * self.bins).astype(np.int64), 0, self.bins - 1)

    def add(self, sims: np.ndarray, positive: np.ndarray, keep: np.ndarray | None = None) -> None:
        if keep is not None:
            sims, positive = sims[keep], positive[keep]
        idx = self._index(sims)
        self.pos += np.bincount(idx[positive], minlength=self.bins)
        self.neg += np.bincount(idx[~positive], minlength=self.bins)
        self.sums[0] += float(sims[positive].sum(dtype=np.float64))
        self.sums[1] += float(sims[~positive].sum(dtype=np.float64))

    def result(self, protocol: str) -> dict[str, Any]:
        n_pos, n_neg = int(self.pos.sum()), int(self.neg.sum())
        p = self.pos / max(n_pos, 1)
        q = self.neg / max(n_neg, 1)
        return {
            "protocol": protocol, "bins": self.bins, "edges": np.linspace(-1.0, 1.0, self.bins + 1).tolist(),
            "positive_pairs": n_pos, "negative_pairs": n_neg,
            "positive_counts": self.pos.tolist(), "negative_counts": self.neg.tolist(),
            "positive_mean": self.sums[0] / n_pos if n_pos else None,
            "negative_mean": self.sums[1] / n_neg if n_neg else None,
            "overlap": float(np.minimum(p, q).sum()) if n_pos and n_neg else None,
        }


def pair_histograms(descriptors: np.ndarray, labels: np.ndarray | None = None, *, protocol: str = "leave-one-out",
                    is_query: np.ndarray | None = None, is_gallery: np.ndarray | None = None,
                    gnd: Sequence[dict] | None = None, bins: int = DEFAULT_BINS,
                    block: int = 1024) -> dict[str, Any]:
    """Positive / negative pair cosine histograms of test descriptors under ``protocol`` (module docstring).

    ``leave-one-out`` uses ``labels``; ``query-gallery`` also the two masks; ``revisited`` the masks (query rows in
    the order of ``gnd``, database rows in ``imlist`` order) and ``gnd``. Returns ``{"protocol", "bins", "edges",
    "positive_pairs", "negative_pairs", "positive_counts", "negative_counts", "positive_mean", "negative_mean",
    "overlap"}``.
    """
    z = _unit(descriptors)
    hist = _Histograms(bins)
    if protocol == "leave-one-out":
        y = np.asarray(labels)
        n = len(z)
        for a in range(0, n, block):
            b = min(a + block, n)
            sims = z[a:b] @ z[a:].T  # rows i in [a, b), columns j in [a, n)
            upper = np.arange(a, n)[None, :] > np.arange(a, b)[:, None]  # j > i: every unordered pair once
            hist.add(sims[upper], (y[a:b, None] == y[None, a:])[upper])
        return hist.result(protocol)
    if is_query is None or is_gallery is None:
        raise ValueError(f"protocol {protocol!r} needs is_query and is_gallery")
    q, g = z[np.asarray(is_query)], z[np.asarray(is_gallery)]
    if protocol == "query-gallery":
        y = np.asarray(labels)
        yq, yg = y[np.asarray(is_query)], y[np.asarray(is_gallery)]
        for a in range(0, len(q), block):
            b = min(a + block, len(q))
            hist.add((q[a:b] @ g.T).ravel(), (yq[a:b, None] == yg[None, :]).ravel())
        return hist.result(protocol)
    if protocol == "revisited":
        if gnd is None or len(gnd) != len(q):
            raise ValueError(f"revisited: {len(q)} queries but ground truth for {0 if gnd is None else len(gnd)}")
        for i, entry in enumerate(gnd):
            positive = np.zeros(len(g), dtype=bool)
            positive[np.concatenate([np.asarray(entry.get("easy", []), dtype=np.int64),
                                     np.asarray(entry.get("hard", []), dtype=np.int64)])] = True
            keep = np.ones(len(g), dtype=bool)
            keep[np.asarray(entry.get("junk", []), dtype=np.int64)] = False  # Medium: junk = junk
            hist.add(g @ q[i], positive, keep)
        return hist.result("revisited (medium)")
    raise ValueError(f"unknown protocol {protocol!r}: leave-one-out | query-gallery | revisited")


def histogram_figure(results: dict[str, dict[str, Any]]) -> bytes:
    """Fig 5 as PNG bytes from :func:`pair_histograms` results (one panel per model; densities, means dashed)."""
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = len(results)
    fig = Figure(figsize=(4.2 * n, 3.3), dpi=100, facecolor="white", layout="constrained")
    axes = fig.subplots(1, n, squeeze=False)[0]
    for ax, (name, res) in zip(axes, results.items()):
        edges = np.asarray(res["edges"])
        width = edges[1] - edges[0]
        for key, colour, label in (("negative", "#d62728", "negative"), ("positive", "#2ca02c", "positive")):
            counts = np.asarray(res[f"{key}_counts"], dtype=float)
            total = counts.sum()
            if total:
                ax.stairs(counts / (total * width), edges, fill=True, alpha=0.5, color=colour,
                          label=f"{label} (n={int(total):,})")
                ax.axvline(res[f"{key}_mean"], color=colour, ls="--", lw=1.2)
        overlap = res["overlap"]
        ax.set_title(f"{name}\noverlap {overlap:.3f}" if overlap is not None else name, fontsize=9)
        ax.set_xlim(-1, 1)
        ax.set_xlabel("cosine similarity")
        ax.legend(fontsize=7, loc="upper left")
    axes[0].set_ylabel("density")
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
