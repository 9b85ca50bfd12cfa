"""Report figures as PNG bytes: retrieval grids, similarity histograms (paper Fig. 5), PCA energy (Figs. 2-3),
training curves, plus the pair-similarity sampler they need.

Everything draws on a private :class:`matplotlib.figure.Figure` with the Agg canvas: no pyplot global state, no
display, safe to call from threads and servers.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image, ImageOps

ImageLike = str | Path | Image.Image | np.ndarray

CORRECT_RGB = (0, 170, 0)
WRONG_RGB = (220, 0, 0)
QUERY_RGB = (40, 90, 200)
_DPI = 100
_VARIANT_COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]


def _to_png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI)
    return buf.getvalue()


def _load_image(x: ImageLike) -> Image.Image:
    if isinstance(x, Image.Image):
        return x.convert("RGB")
    if isinstance(x, np.ndarray):
        a = x
        if a.dtype != np.uint8:
            a = np.clip(a * (255.0 if a.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
        return Image.fromarray(a).convert("RGB")
    with Image.open(x) as im:
        return im.convert("RGB")


# --------------------------------------------------------------------------------------------------------------
# retrieval grid

_CELL_IN = 1.2  # cell width (inches) = thumbnail + gaps
_THUMB_IN = 1.0  # thumbnail incl. border (inches)
_TEXT_IN = 0.25  # space for the score under each thumbnail
_LEFT_IN = 0.1
_GAP_IN = 0.25  # extra gap between the query and its neighbours
_TOP_IN = 0.3


def _grid_layout(n_q: int, k: int) -> tuple[tuple[float, float], list[list[tuple[float, float, float, float]]]]:
    """Figure size (inches) and, per row, per column (query first), the thumbnail rectangle as figure fractions
    ``(left, bottom, width, height)``. Shared by :func:`retrieval_grid` and its tests."""
    row_h = _THUMB_IN + _TEXT_IN + 0.1
    width = _LEFT_IN * 2 + _CELL_IN * (k + 1) + _GAP_IN
    height = _TOP_IN + row_h * n_q
    rects = []
    for r in range(n_q):
        top = _TOP_IN + r * row_h
        bottom = height - top - _THUMB_IN
        row = []
        for c in range(k + 1):
            left = _LEFT_IN + c * _CELL_IN + (_GAP_IN if c > 0 else 0.0) + (_CELL_IN - _THUMB_IN) / 2
            row.append((left / width, bottom / height, _THUMB_IN / width, _THUMB_IN / height))
        rects.append(row)
    return (width, height), rects


def _thumbnail(img: Image.Image, colour: tuple[int, int, int], px: int) -> np.ndarray:
    border = max(3, px // 16)
    inner = ImageOps.pad(img, (px - 2 * border, px - 2 * border), method=Image.Resampling.BICUBIC,
                         color=(255, 255, 255))
    return np.asarray(ImageOps.expand(inner, border=border, fill=colour))


def retrieval_grid(query_paths_or_images: Sequence[ImageLike], neighbour_paths_or_images: Sequence[Sequence[ImageLike]],
                   correct: np.ndarray | Sequence[Sequence[bool]], scores: np.ndarray | None = None,
                   title: str | None = None) -> bytes:
    """A grid of retrieval results as PNG bytes.

    Row ``i`` shows query ``i`` (blue border) then its ``k`` nearest neighbours in rank order, each framed green
    if ``correct[i][j]`` else red, with its similarity ``scores[i][j]`` (if given) underneath. Images are paths,
    PIL images or HxWx3 arrays; they are letterboxed to a square thumbnail.
    """
    n_q = len(query_paths_or_images)
    if n_q == 0:
        raise ValueError("retrieval_grid needs at least one query")
    correct_a = np.asarray(correct, dtype=bool)
    k = len(neighbour_paths_or_images[0])
    if len(neighbour_paths_or_images) != n_q or correct_a.shape != (n_q, k):
        raise ValueError(f"expected {n_q} rows of {k} neighbours and a ({n_q}, {k}) correct mask, "
                         f"got {len(neighbour_paths_or_images)} rows and {correct_a.shape}")
    scores_a = None if scores is None else np.asarray(scores, dtype=float)
    if scores_a is not None and scores_a.shape != (n_q, k):
        raise ValueError(f"scores must be ({n_q}, {k}), got {scores_a.shape}")
    (w, h), rects = _grid_layout(n_q, k)
    fig = Figure(figsize=(w, h), dpi=_DPI, facecolor="white")
    px = int(round(_THUMB_IN * _DPI))
    text_dy = (_TEXT_IN * 0.55) / h
    for r in range(n_q):
        row = [query_paths_or_images[r], *neighbour_paths_or_images[r]]
        if len(row) != k + 1:
            raise ValueError(f"row {r} has {len(row) - 1} neighbours, expected {k}")
        for c, item in enumerate(row):
            colour = QUERY_RGB if c == 0 else (CORRECT_RGB if correct_a[r, c - 1] else WRONG_RGB)
            ax = fig.add_axes(rects[r][c])
            ax.imshow(_thumbnail(_load_image(item), colour, px), interpolation="nearest")
            ax.set_axis_off()
            left, bottom, width, _ = rects[r][c]
            if c == 0:
                label = "query"
            else:
                label = f"#{c}" if scores_a is None else f"#{c}  {scores_a[r, c - 1]:.3f}"
            fig.text(left + width / 2, bottom - text_dy, label, ha="center", va="center", fontsize=8,
                     color="#333333" if c == 0 else ("#006400" if correct_a[r, c - 1] else "#a00000"))
    if title:
        fig.text(0.5, 1 - (_TOP_IN * 0.5) / h, title, ha="center", va="center", fontsize=10)
    return _to_png(fig)


# --------------------------------------------------------------------------------------------------------------
# pair similarities and their histograms


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(n, 1e-12)


def pair_similarities(descriptors: np.ndarray, labels: Sequence[int] | np.ndarray, max_pairs: int = 200_000,
                      seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Cosine similarities of positive and negative pairs.

    Returns ``(pos, neg)``: ``pos`` holds every same-label pair ``i < j`` (grouped by label, in index order within
    a label); ``neg`` holds every different-label pair ``i < j`` when there are at most ``max_pairs`` of them,
    otherwise ``max_pairs`` distinct such pairs drawn uniformly at random (reproducible with ``seed``).
    Descriptors are L2-normalised first, so any scale is fine.
    """
    z = _unit(descriptors)
    y = np.asarray(labels)
    n = len(y)
    if z.shape[0] != n:
        raise ValueError(f"{z.shape[0]} descriptors but {n} labels")
    pos_parts = []
    order = np.argsort(y, kind="stable")
    ys = y[order]
    bounds = np.flatnonzero(np.r_[True, ys[1:] != ys[:-1], True])
    n_pos = 0
    for a, b in zip(bounds[:-1], bounds[1:]):
        idx = order[a:b]
        if len(idx) < 2:
            continue
        s = z[idx] @ z[idx].T
        iu = np.triu_indices(len(idx), k=1)
        pos_parts.append(s[iu])
        n_pos += len(iu[0])
    pos = np.concatenate(pos_parts) if pos_parts else np.zeros(0)
    n_neg = n * (n - 1) // 2 - n_pos
    if n_neg <= max_pairs:
        neg_parts = []
        for i in range(n - 1):
            j = np.arange(i + 1, n)
            j = j[y[j] != y[i]]
            if len(j):
                neg_parts.append(z[j] @ z[i])
        neg = np.concatenate(neg_parts) if neg_parts else np.zeros(0)
        return pos, neg
    rng = np.random.default_rng(seed)
    accept = 2.0 * n_neg / (n * n)  # probability that a uniform ordered (i, j) is a negative pair
    chosen = np.zeros(0, dtype=np.int64)  # pair keys i * n + j with i < j
    while len(chosen) < max_pairs:
        m = min(int((max_pairs - len(chosen)) / accept * 1.2) + 16, 20_000_000)
        i = rng.integers(0, n, size=m)
        j = rng.integers(0, n, size=m)
        keep = (i != j) & (y[i] != y[j])
        i, j = np.minimum(i[keep], j[keep]), np.maximum(i[keep], j[keep])
        chosen = np.unique(np.concatenate([chosen, i.astype(np.int64) * n + j]))
    chosen = rng.permutation(chosen)[:max_pairs]
    i, j = chosen // n, chosen % n
    neg = np.einsum("ij,ij->i", z[i], z[j])
    return pos, neg


def similarity_histograms(variants: Mapping[str, tuple[np.ndarray, np.ndarray]], bins: int = 100) -> bytes:
    """Paper Fig. 5 as PNG bytes: for each variant, density histograms of the cosine similarity of positive
    (green) and negative (red) pairs on a shared ``[-1, 1]`` axis, with their means marked."""
    if not variants:
        raise ValueError("no variants")
    n = len(variants)
    fig = Figure(figsize=(4.0 * n, 3.2), dpi=_DPI, facecolor="white", layout="constrained")
    axes = fig.subplots(1, n, sharex=True, squeeze=False)[0]
    edges = np.linspace(-1.0, 1.0, bins + 1)
    for ax, (name, (pos, neg)) in zip(axes, variants.items()):
        pos = np.clip(np.asarray(pos, dtype=float), -1, 1)
        neg = np.clip(np.asarray(neg, dtype=float), -1, 1)
        for vals, colour, label in ((neg, "#d62728", "negative"), (pos, "#2ca02c", "positive")):
            if len(vals):
                ax.hist(vals, bins=edges, density=True, color=colour, alpha=0.5, label=f"{label} (n={len(vals):,})")
                ax.axvline(float(vals.mean()), color=colour, lw=1.2, ls="--")
        ax.set_title(name)
        ax.set_xlim(-1, 1)
        ax.set_xticks([-1.0, -0.5, 0.0, 0.5, 1.0])
        ax.set_xlabel("cosine similarity")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")
    axes[0].set_ylabel("density")
    return _to_png(fig)


# --------------------------------------------------------------------------------------------------------------
# PCA energy


def explained_energy(descriptors: np.ndarray) -> np.ndarray:
    """Cumulative explained variance ratio of the principal components of ``descriptors`` (n x d): a
    non-decreasing array of ``min(n, d)`` values ending at 1 (entry ``i`` = energy of the first ``i + 1``)."""
    x = np.asarray(descriptors, dtype=np.float64)
    x = x - x.mean(axis=0, keepdims=True)
    if x.shape[0] > x.shape[1]:
        ev = np.linalg.eigvalsh(x.T @ x)[::-1]
    else:
        ev = np.linalg.svd(x, compute_uv=False) ** 2
    ev = np.clip(ev, 0, None)
    total = ev.sum()
    if total <= 0:
        return np.ones(len(ev))
    return np.cumsum(ev) / total


def pca_energy(variants: Mapping[str, np.ndarray], marks: Sequence[float] = (0.9,)) -> bytes:
    """Paper Figs. 2-3 as PNG bytes: cumulative PCA energy vs number of components, one curve per variant.

    A curve that rises steeply means a few directions carry the descriptor (collapsed dimensions); KoLeo should
    flatten it. The legend gives, per variant, the number of components reaching each energy in ``marks``.
    """
    if not variants:
        raise ValueError("no variants")
    fig = Figure(figsize=(6.4, 4.0), dpi=_DPI, facecolor="white", layout="constrained")
    ax = fig.subplots()
    max_d = 1
    for i, (name, desc) in enumerate(variants.items()):
        e = explained_energy(desc)
        comps = np.arange(1, len(e) + 1)
        max_d = max(max_d, len(e))
        info = ", ".join(f"{int(m * 100)}%: {int(np.searchsorted(e, m - 1e-12) + 1)}" for m in marks)
        ax.plot(comps, e, color=_VARIANT_COLOURS[i % len(_VARIANT_COLOURS)], lw=1.8,
                label=f"{name} (d={np.asarray(desc).shape[1]}; {info})")
    for m in marks:
        ax.axhline(m, color="grey", lw=0.8, ls=":")
    ax.set_xscale("log")
    ax.set_xlim(1, max_d)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("number of principal components")
    ax.set_ylabel("cumulative explained variance (energy)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="lower right")
    return _to_png(fig)


# --------------------------------------------------------------------------------------------------------------
# training curves

_LOSS_STYLES = {"loss": "-", "loss_contrastive": "--", "loss_memory": "-.", "loss_koleo": ":"}


def training_curves(metrics_by_variant: Mapping[str, Sequence[Mapping[str, float]]],
                    recall_key: str = "recall@1") -> bytes:
    """Training curves as PNG bytes: loss terms vs iteration (left; colour = variant, line style = term) and
    Recall@1 vs iteration (right, in percent; values <= 1 are read as fractions).

    Rows are JSONL metric dicts with an ``iteration`` key; any of ``loss``, ``loss_contrastive``,
    ``loss_memory``, ``loss_koleo`` and ``recall@1`` may be missing from a row (a term is plotted over the rows
    that have it). Non-finite values are skipped.
    """
    fig = Figure(figsize=(11.0, 4.0), dpi=_DPI, facecolor="white", layout="constrained")
    ax_loss, ax_rec = fig.subplots(1, 2)
    any_loss = any_rec = False
    extra_terms = sorted({k for rows in metrics_by_variant.values() for r in rows for k in r
                          if k.startswith("loss_") and k not in _LOSS_STYLES})
    styles = dict(_LOSS_STYLES, **{t: (0, (1, 1, 3, 1)) for t in extra_terms})

    def series(rows: Sequence[Mapping[str, float]], key: str) -> tuple[np.ndarray, np.ndarray]:
        pts = [(float(r["iteration"]), float(r[key])) for r in rows
               if "iteration" in r and key in r and r[key] is not None and math.isfinite(float(r[key]))]
        pts.sort()
        return np.array([p[0] for p in pts]), np.array([p[1] for p in pts])

    for i, (name, rows) in enumerate(metrics_by_variant.items()):
        colour = _VARIANT_COLOURS[i % len(_VARIANT_COLOURS)]
        for term, ls in styles.items():
            x, y = series(rows, term)
            if len(x):
                ax_loss.plot(x, y, color=colour, ls=ls, lw=1.5, marker="." if len(x) < 30 else None,
                             label=f"{name}: {term}")
                any_loss = True
        x, y = series(rows, recall_key)
        if len(x):
            if np.all(y <= 1.0):
                y = y * 100.0
            ax_rec.plot(x, y, color=colour, lw=1.8, marker="o" if len(x) < 30 else None, ms=3, label=name)
            any_rec = True
    ax_loss.set_title("loss terms")
    ax_loss.set_xlabel("iteration")
    ax_loss.grid(alpha=0.3)
    ax_rec.set_title(recall_key.replace("recall@", "Recall@"))
    ax_rec.set_xlabel("iteration")
    ax_rec.set_ylabel("%")
    ax_rec.grid(alpha=0.3)
    if any_loss:
        ax_loss.legend(fontsize=7, ncol=1 + (len(metrics_by_variant) > 2))
    else:
        ax_loss.text(0.5, 0.5, "no loss values", ha="center", va="center", transform=ax_loss.transAxes)
    if any_rec:
        ax_rec.legend(fontsize=8)
    else:
        ax_rec.text(0.5, 0.5, "no recall values", ha="center", va="center", transform=ax_rec.transAxes)
    return _to_png(fig)


def metric_curves(rows_by_run: Mapping[str, Sequence[Mapping[str, float]]], key: str, ylabel: str,
                  x_key: str = "iteration", title: str | None = None) -> bytes:
    """One metric against ``x_key`` for several runs (one line each), as PNG bytes; rows without it are skipped.

    E.g. the mean distance of mined negatives per epoch in tuple training (``key="negative_distance"``,
    ``x_key="epoch"``), or the learning rate.
    """
    fig = Figure(figsize=(6.0, 3.6), dpi=_DPI, facecolor="white", layout="constrained")
    ax = fig.subplots()
    drawn = False
    for i, (name, rows) in enumerate(rows_by_run.items()):
        pts = sorted((float(r[x_key]), float(r[key])) for r in rows
                     if x_key in r and r.get(key) is not None and math.isfinite(float(r[key])))
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], color=_VARIANT_COLOURS[i % len(_VARIANT_COLOURS)],
                    lw=1.8, marker="o" if len(pts) < 40 else None, ms=3, label=name)
            drawn = True
    ax.set_title(title or key)
    ax.set_xlabel(x_key)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if drawn:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, f"no {key} values", ha="center", va="center", transform=ax.transAxes)
    return _to_png(fig)
