"""The page of ``vitrieval evaluate --report FILE.html``: one self-contained HTML file showing where a model fails.

It holds the metric table (what ``evaluate`` prints), the worst queries (:mod:`vitrieval.evaluation.failures`),
each as one strip of thumbnails (query, then its top k framed green when correct, red when not:
:func:`~vitrieval.report.figures.retrieval_grid`), Recall@K per class (worst first; category-level sets) and the
positive / negative similarity histograms (:func:`~vitrieval.report.figures.similarity_histograms`). Images are
embedded PNG data URIs (:mod:`vitrieval.report.html`): no script, stylesheet, font or image is fetched.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from vitrieval.evaluation.failures import (
    FailedQuery,
    medium_positives,
    per_class_recall,
    query_first_ranks,
    worst_queries,
)
from vitrieval.evaluation.format import DISPLAY_NAMES, format_results
from vitrieval.evaluation.protocol import EvaluatedSet
from vitrieval.report.figures import pair_similarities, retrieval_grid, similarity_histograms
from vitrieval.report.html import table_html, write_report

#: Classes listed in the per-class table (the worst ones).
MAX_CLASSES = 50


def _image(evaluated: EvaluatedSet, row: int) -> Image.Image | str:
    """The test image of ``row`` as the evaluation saw it: cropped to its box when it has one."""
    record = evaluated.test[row]
    if record.bbox is None:
        return record.path
    with Image.open(record.path) as im:
        return im.convert("RGB").crop(tuple(int(round(v)) for v in record.bbox))


def _short(path: str) -> str:
    """``folder/file``: the file name with its folder, which is often the class."""
    p = Path(path)
    return f"{p.parent.name}/{p.name}" if p.parent.name else p.name


def _failure_section(evaluated: EvaluatedSet, i: int, f: FailedQuery) -> tuple[str, str, bytes]:
    record = evaluated.test[f.row]
    if f.ap is not None:
        how = f"AP (Medium) {100 * f.ap:.1f}"
    elif f.first_correct_rank >= (len(evaluated.test) - 1 if evaluated.leave_one_out
                                  else int(evaluated.is_gallery.sum())):
        how = "no correct image anywhere in the ranking"
    else:
        how = f"first correct neighbour at rank {f.first_correct_rank + 1}"
    png = retrieval_grid([_image(evaluated, f.row)], [[evaluated.test[int(r)].path for r in f.neighbours]],
                         f.correct[None, :], f.scores[None, :])
    names = ", ".join(f"#{j + 1} {_short(evaluated.test[int(r)].path)}{'' if ok else ' (wrong)'}"
                      for j, (r, ok) in enumerate(zip(f.neighbours, f.correct)))
    label = "" if evaluated.gnd is not None else f", class {record.label}"
    return (f"{i + 1}. {_short(record.path)}{label}: {how}",
            f"{record.path}. Top {len(f.neighbours)}: {names}.", png)


def pair_similarity_sets(evaluated: EvaluatedSet, max_pairs: int = 200_000) -> tuple[np.ndarray, np.ndarray]:
    """Cosine similarities of positive and negative pairs for the histograms (paper Fig. 5).

    Category-level: :func:`~vitrieval.report.figures.pair_similarities` over the test split (same label = positive).
    Landmarks: each query against the database, a positive being a Medium positive (``easy`` or ``hard``), a
    negative any image not listed in its ground truth (junk left out).
    """
    if evaluated.gnd is None:
        return pair_similarities(evaluated.descriptors, evaluated.test.labels, max_pairs=max_pairs)
    q_rows, g_rows = np.flatnonzero(evaluated.is_query), np.flatnonzero(evaluated.is_gallery)
    s = evaluated.descriptors[q_rows] @ evaluated.descriptors[g_rows].T

    def mask(lists: list[np.ndarray]) -> np.ndarray:
        m = np.zeros(s.shape, dtype=bool)
        m[np.repeat(np.arange(len(lists)), [len(x) for x in lists]), np.concatenate(lists)] = True
        return m

    positive = mask([medium_positives(e) for e in evaluated.gnd])
    junk = mask([np.asarray(e.get("junk", []), dtype=np.int64).reshape(-1) for e in evaluated.gnd])
    return s[positive], s[~positive & ~junk]


def _landmark_table(result: dict[str, Any]) -> str:
    ks = list(result["mp_at_k"]["medium"])
    rows = [[p, *(None if v is None else 100 * v for v in [result["map"][p], *result["mp_at_k"][p].values()])]
            for p in ("easy", "medium", "hard")]
    return table_html(["protocol", "mAP", *(f"mP@{k}" for k in ks)], rows)


def evaluation_report(path: str | Path, result: dict[str, Any], evaluated: EvaluatedSet, *, worst: int = 8,
                      k: int = 6) -> Path:
    """Write the page for ``result`` (:func:`~vitrieval.evaluation.protocol.evaluate_model`'s dict) and the
    :class:`~vitrieval.evaluation.protocol.EvaluatedSet` it was computed on: ``worst`` failed queries with their
    top ``k``. Returns the path. One ``<img>`` per failed query plus one for the histograms."""
    name = DISPLAY_NAMES.get(result["dataset"], result["dataset"])
    notes = format_results(result).splitlines()
    tables: list[tuple[str, str]] = []
    recall_table: dict[str, dict[str, float]] = {}
    ranks = None
    if evaluated.gnd is None:
        recall_table = {str(result["model"]): result["recall_at_k"]}
        ranks = query_first_ranks(evaluated)
        ks = [int(k_) for k_ in result["recall_at_k"]]
        classes = per_class_recall(evaluated.test.labels[ranks[0]], ranks[1], ks)
        shown = classes[:MAX_CLASSES]
        folder = {}  # label -> the folder of its first image (a class-per-folder set's class name)
        for r in evaluated.test:
            folder.setdefault(r.label, Path(r.path).parent.name)
        rows = [[c.label, folder[c.label], c.num_queries, *(100 * c.recall[k_] for k_ in ks)] for c in shown]
        heading = (f"Recall@K per class (%), worst first ({len(shown)} of {len(classes)} classes)"
                   if len(shown) < len(classes) else "Recall@K per class (%), worst first")
        tables.append((heading, table_html(["class", "folder", "queries", *(f"R@{k_}" for k_ in ks)], rows)))
    else:
        tables.append(("mAP and mP@k (%), revisited protocol", _landmark_table(result)))
    failures = worst_queries(evaluated, worst, k, ranks=ranks)
    order = ("lowest AP under the Medium protocol (positives: easy and hard images; junk counts as wrong here)"
             if evaluated.gnd is not None else "latest first correct neighbour")
    notes.append(f"Below: the {len(failures)} worst queries by {order}, each with its top {k} (green: correct, "
                 "red: wrong; the cosine score under each).")
    sections = [_failure_section(evaluated, i, f) for i, f in enumerate(failures)]
    pos, neg = pair_similarity_sets(evaluated)
    sections.append(("Similarity of positive and negative pairs", (
        f"Cosine similarity of {len(pos):,} positive and {len(neg):,} negative pairs (dashed: the means). "
        "The less the two overlap, the better a single threshold separates matches."),
        similarity_histograms({name: (np.asarray(pos), np.asarray(neg))})))
    return write_report(path, f"{name}: where {result['model']} fails", recall_table, sections, notes, tables)
