"""The demo's report: the Recall@K table as text, and ``OUT/report.html`` (retrieval grids of IRT_O vs IRT_R,
similarity histograms, PCA energy, training curves) drawn with :mod:`vitrieval.report`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vitrieval.config import Config
from vitrieval.demo.variants import KOLEO_WEIGHT, LABELS, VARIANTS

GRID_QUERIES = 6
GRID_NEIGHBOURS = 8
CURVE_SMOOTHING = 3
"""Training-curve loss terms: moving average over this many logged values (one every ``train.log_every`` steps)."""
ALL_PAIRS_LIMIT = 2_000_000
"""Similarity histograms use every pair of test images up to this many pairs (else a sample of 200,000)."""


def format_table(results: dict[str, Any]) -> str:
    """The Recall@K table of ``results`` (as ``run_demo`` returns it) as aligned text, in percent."""
    ks = sorted({k for v in VARIANTS for k in results[v]["recall_at_k"]}, key=int)
    width = max(len(LABELS[v]) for v in VARIANTS)
    lines = [f"{'variant':<{width}}  " + "  ".join(f"{'R@' + k:>6}" for k in ks)]
    for v in VARIANTS:
        rec = results[v]["recall_at_k"]
        lines.append(f"{LABELS[v]:<{width}}  " + "  ".join(
            f"{100 * rec[k]:6.1f}" if k in rec else f"{'-':>6}" for k in ks))
    return "\n".join(lines)


def koleo_verdict(results: dict[str, Any]) -> str:
    """One sentence on whether KoLeo helped in this run: IRT_R's R@1 against IRT_L's, said plainly either way."""
    r_l, r_r = (100 * results[v]["recall_at_k"]["1"] for v in ("IRT_L", "IRT_R"))
    diff = r_r - r_l
    if diff > 0:
        verdict = f"KoLeo helped in this run: IRT_R's R@1 is {diff:.1f} points above IRT_L's"
    elif diff < 0:
        verdict = f"KoLeo did not help in this run: IRT_R's R@1 is {-diff:.1f} points below IRT_L's"
    else:
        verdict = "KoLeo made no difference to R@1 in this run"
    return (f"{verdict} ({r_r:.1f}% vs {r_l:.1f}%); one seed: compare with the spread over seeds "
            "(benchmarks/demo_seeds.py, in the README) before reading anything into it.")


def _grid_queries(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """``n`` test images of ``n`` different classes (the first image of randomly drawn classes), seeded."""
    classes = np.unique(labels)
    rng = np.random.default_rng(seed)
    picked = rng.choice(classes, size=min(n, len(classes)), replace=False)
    return np.asarray([int(np.flatnonzero(labels == c)[0]) for c in sorted(picked)])


def _grid(desc: np.ndarray, labels: np.ndarray, paths: Sequence[str], queries: np.ndarray, title: str) -> bytes:
    from vitrieval.metrics import exact_knn
    from vitrieval.report import retrieval_grid

    k = min(GRID_NEIGHBOURS, len(desc) - 1)
    scores, idx = exact_knn(desc, k, exclude_self=True)
    scores, idx = scores[queries], idx[queries]
    correct = labels[idx] == labels[queries][:, None]
    return retrieval_grid([paths[q] for q in queries], [[paths[j] for j in row] for row in idx], correct, scores,
                          title=title)


def _curve_rows(rows: Sequence[dict[str, Any]], cfg: Config, window: int) -> list[dict[str, Any]]:
    """Metric rows for the training-curve figure: loss terms smoothed by a trailing moving average over ``window``
    logged rows; the memory term only from ``memory.start_iteration`` on and KoLeo only if λ > 0 (elsewhere they
    are not part of the objective and are logged as 0)."""
    loss_rows = [r for r in rows if "loss" in r]
    out: list[dict[str, Any]] = [r for r in rows if "loss" not in r]
    keys = ("loss", "loss_contrastive", "loss_memory", "loss_koleo")
    koleo_on = any(r.get("loss_koleo", 0.0) for r in loss_rows)
    for i, r in enumerate(loss_rows):
        row: dict[str, Any] = {"iteration": r["iteration"]}
        for key in keys:
            if key not in r or (key == "loss_koleo" and not koleo_on):
                continue
            if key == "loss_memory" and r["iteration"] <= cfg.memory.start_iteration:
                continue
            window_rows = [w for w in loss_rows[max(0, i - window + 1):i + 1] if key in w and not (
                key == "loss_memory" and w["iteration"] <= cfg.memory.start_iteration)]
            row[key] = float(np.mean([w[key] for w in window_rows]))
        out.append(row)
    return out


def write_demo_report(out: Path, results: dict[str, Any], descriptors: dict[str, np.ndarray], labels: np.ndarray,
                  paths: Sequence[str], metrics: dict[str, list[dict[str, Any]]], cfg: Config, seed: int) -> Path:
    """``OUT/report.html``: the Recall@K table, retrieval grids IRT_O vs IRT_R, histograms, PCA energy, curves."""
    from vitrieval.report import pair_similarities, pca_energy, similarity_histograms, training_curves, write_report

    info, pre = results["data"], results["pretrained"]
    table = {LABELS[v]: results[v]["recall_at_k"] for v in VARIANTS}
    queries = _grid_queries(labels, GRID_QUERIES, seed)
    trained = ("IRT_O", "IRT_L", "IRT_R")
    r1 = {v: 100 * results[v]["recall_at_k"]["1"] for v in VARIANTS}
    n = len(labels)
    max_pairs = ALL_PAIRS_LIMIT if n * (n - 1) // 2 <= ALL_PAIRS_LIMIT else 200_000
    pairs = {LABELS[v]: pair_similarities(descriptors[v], labels, max_pairs=max_pairs, seed=seed) for v in trained}
    sections = [
        (f"Retrieval with IRT_O, the pretrained encoder as is (R@1 {r1['IRT_O']:.1f}%)",
         f"{len(queries)} test queries (blue) of unseen classes and their top {GRID_NEIGHBOURS} neighbours among the "
         "other test images (cosine); green = same class, red = another class.",
         _grid(descriptors["IRT_O"], labels, paths, queries, "IRT_O (pretrained encoder)")),
        (f"Retrieval with IRT_R (R@1 {r1['IRT_R']:.1f}%)",
         "The same queries, after fine-tuning with the contrastive loss, the cross-batch memory and KoLeo "
         f"(λ = {KOLEO_WEIGHT:g}).",
         _grid(descriptors["IRT_R"], labels, paths, queries, f"IRT_R (λ = {KOLEO_WEIGHT:g})")),
        ("Similarity of positive and negative pairs (paper Fig. 5)",
         "Cosine similarity of the positive pairs (same class, green) and negative pairs (red) among the test "
         f"images ({'all pairs' if max_pairs == ALL_PAIRS_LIMIT else 'negatives: a sample of 200,000'}); dashed "
         "lines are the means. Training separates the two; KoLeo spreads the negatives.",
         similarity_histograms(pairs)),
        ("Cumulative PCA energy of the descriptors (paper Figs. 2-3)",
         "Share of the variance of the test descriptors captured by the first n principal components; a curve "
         "that rises steeply means the descriptor uses few directions (collapsed dimensions). The legend gives the "
         "number of components that reach 90%.",
         pca_energy({LABELS[v]: descriptors[v] for v in trained})),
        ("Training curves",
         "Loss terms (contrastive within the batch, against the cross-batch memory before its weight "
         f"{cfg.memory.weight:g}, KoLeo before λ; each a moving average over {CURVE_SMOOTHING} logged values) and "
         "Recall@1 on the unseen test classes over the iterations, from each run's metrics.jsonl. A term is drawn "
         "only where it is part of the objective (the memory from its first iteration, KoLeo for IRT_R).",
         training_curves({LABELS[v]: _curve_rows(rows, cfg, CURVE_SMOOTHING) for v, rows in metrics.items()})),
    ]
    m, t, mem = cfg.model, cfg.train, cfg.memory
    arch = (f"{m.name} family, {m.depth or 'all'} blocks x {m.embed_dim or 'default'} wide "
            f"({m.num_heads or 'default'} heads), {m.image_size} px images in {m.patch_size or 16}-px patches, "
            f"{m.pooling} token; batch {t.batch_size} ({t.batch_size // cfg.data.images_per_class} classes x "
            f"{cfg.data.images_per_class} images), AdamW lr {t.lr:g}, {t.iterations} iterations; cross-batch memory "
            f"of {mem.size} at weight {mem.weight:g} from iteration {mem.start_iteration}")
    notes = [
        f"Data: {info['source']}. Training: {info['train_images']} images of {info['train_classes']} classes; "
        f"test: {info['test_images']} images of {info['test_classes']} classes never seen in training.",
        f"Protocol: {info['protocol']}; Recall@K = share of queries with a same-class image among their K nearest "
        "neighbours (cosine).",
        f"Raw-pixel baseline: Recall@1 = {r1['raw_pixels']:.1f}% ({results['raw_pixels']['descriptor']}), "
        f"against {r1['IRT_R']:.1f}% for IRT_R and {r1['IRT_L']:.1f}% for IRT_L.",
        f"Model and training ({results['preset']} preset): {arch}.",
        f"Pretraining (the demo's stand-in for ImageNet): {pre['objective']} of {pre['data']}, from random "
        f"weights, {pre['iterations']} iterations of {pre['batch_size']} images (lr {pre['lr']:g}), seed {seed}; "
        f"the backbone's weights are saved as {pre['weights']} and loaded through model.pretrained_file.",
        f"IRT_O is that pretrained encoder as is (the initial weights of IRT_L and IRT_R); IRT_L: λ = 0, IRT_R: "
        f"λ = {KOLEO_WEIGHT:g}; {results['IRT_L'].get('iterations', '?')} fine-tuning iterations each.",
        koleo_verdict(results),
        f"Time: {results['seconds']:.0f} s so far when this report was written (pretraining "
        f"{pre['train_seconds']:.0f} s, training IRT_L "
        f"{results['IRT_L'].get('train_seconds', 0):.0f} s, IRT_R {results['IRT_R'].get('train_seconds', 0):.0f} s).",
        f"Search the test images with the trained model: vitrieval search --index {results['index']} IMAGE; "
        f"browse them: vitrieval serve --index {results['index']}",
    ]
    return write_report(out / "report.html", f"vitrieval demo: {info['test_classes']} unseen classes", table,
                        sections, notes)
