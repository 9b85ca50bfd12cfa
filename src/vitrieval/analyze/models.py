"""Per model: test descriptors on a benchmark, their PCA energy and pair histograms; ``analysis.json`` and a
self-contained ``analysis.html`` (Figs 2-3 and Fig 5 of the paper, for your own checkpoints).

Descriptors are computed as ``vitrieval evaluate`` computes them: the test split, the protocol's eval resize
(``shorter`` for category-level sets, ``square`` for landmarks, queries cropped to their box), pool → [PCA] → L2.
The PCA is the one ``pca`` (:class:`~vitrieval.evaluation.pca_fit.PCAOptions`, ``vitrieval analyze --pca 256``)
fits, on the set ``vitrieval evaluate --pca`` fits on (:func:`~vitrieval.evaluation.pca_fit.fit_pca`: the training
split of a category-level set, ``--pca-fit-dataset sfm120k`` for the landmarks as the paper does; Fig 5 is RParis
at 256-d), or else the one the model carries, if any; it is never stored with the model here.
The pair protocol follows the dataset: leave-one-out, query-gallery or revisited
(Medium, junk left out); see :mod:`vitrieval.analyze.descriptors`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from vitrieval.analyze import descriptors as pairs
from vitrieval.evaluation.pca_fit import PCAOptions, apply_pca, carried_pca_info, fit_pca, normalize_rows
from vitrieval.evaluation.protocol import LANDMARK_DATASETS, ExtractionOptions, extract_all
from vitrieval.io_utils import atomic_write_json
from vitrieval.model import Encoder, at_image_size


def benchmark_descriptors(encoder: Encoder, dataset: str, data_root: str | Path, *, image_size: int | None = None,
                          extraction: ExtractionOptions | None = None, pca: PCAOptions | None = None,
                          pca_record: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """The test split's descriptors and the :func:`pair_histograms` keywords of its protocol.

    ``pca`` with a dimension fits that PCA (module docstring); ``pca_record``, a dict, receives the record of the
    PCA applied (``{"dim", "whiten", "fitted_on"}``) under ``"pca"`` (``None``: no PCA)."""
    from vitrieval.data.readers import read_dataset

    options = extraction or ExtractionOptions()
    table = read_dataset(dataset, data_root)
    landmarks = dataset in LANDMARK_DATASETS or "gnd" in table.extras
    test = table.split("test")
    if len(test) == 0:
        raise ValueError(f"{dataset} at {data_root}: no test images")
    model = at_image_size(encoder, image_size)
    resize = "square" if landmarks else "shorter"

    def embed(rows: Any, what: str) -> np.ndarray:
        return extract_all(model, rows, dataclasses.replace(options, resize=resize),
                           desc=f"embedding {what}").descriptors

    pooled = embed(test, f"{dataset} test images")
    reduction, info = None, None
    if pca is not None and pca.fits:
        reduction, info = fit_pca(pca, dataset, data_root, table, test, pooled, landmarks,
                                  lambda rows, what: embed(rows, f"{what} for PCA"))
    elif getattr(encoder, "pca", None) is not None:
        reduction, info = encoder.pca, carried_pca_info(encoder.pca, getattr(encoder, "pca_info", None))
    feats = apply_pca(reduction, pooled) if reduction is not None else normalize_rows(pooled)
    if pca_record is not None:
        pca_record["pca"] = info
    is_q = np.asarray([r.is_query for r in test])
    is_g = np.asarray([r.is_gallery for r in test])
    if landmarks:
        return feats, {"protocol": "revisited", "is_query": is_q, "is_gallery": is_g, "gnd": table.extras["gnd"]}
    if table.is_leave_one_out():
        return feats, {"protocol": "leave-one-out", "labels": test.labels}
    return feats, {"protocol": "query-gallery", "labels": test.labels, "is_query": is_q, "is_gallery": is_g}


def analyze_descriptors(descriptors: np.ndarray, protocol: Mapping[str, Any], bins: int = pairs.DEFAULT_BINS
                        ) -> dict[str, Any]:
    """One model's entry of ``analysis.json``: energy (and components for 50/90/99 %) and the pair histograms."""
    energy = pairs.cumulative_energy(descriptors)
    entry: dict[str, Any] = {"descriptor_dim": int(descriptors.shape[1]), "num_images": int(descriptors.shape[0]),
                             "cumulative_energy": energy,
                             "components_for": {f"{p:g}": pairs.components_for(energy, p) for p in (0.5, 0.9, 0.99)}}
    entry.update(pairs.pair_histograms(descriptors, **protocol, bins=bins))
    return entry


def write_analysis(out: str | Path, dataset: str, descriptors: Mapping[str, np.ndarray],
                   protocols: Mapping[str, Mapping[str, Any]], bins: int = pairs.DEFAULT_BINS,
                   pca: Mapping[str, dict[str, Any] | None] | None = None) -> dict[str, Any]:
    """Write ``out/analysis.json`` and ``out/analysis.html`` for models ``name -> descriptors``; returns the data.
    ``pca`` (model name -> its PCA record or ``None``) adds each model's ``"pca"`` entry."""
    from vitrieval.report.figures import pca_energy
    from vitrieval.report.html import write_report

    out = Path(out)
    models = {name: analyze_descriptors(d, protocols[name], bins) for name, d in descriptors.items()}
    for name, record in (pca or {}).items():
        models[name]["pca"] = record
    data = {"dataset": dataset, "bins": bins,
            "overlap_definition": "histogram intersection sum_b min(p_b, q_b) of the normalised positive and "
                                  "negative histograms (1 = identical, 0 = separable)",
            "models": models}
    atomic_write_json(out / "analysis.json", data)
    notes = []
    for name, m in models.items():
        overlap = "n/a" if m["overlap"] is None else f"{m['overlap']:.3f}"
        notes.append(f"{name}: {m['descriptor_dim']}-d, {m['num_images']} images; 90 % of the energy in "
                     f"{m['components_for']['0.9']} components; {m['positive_pairs']:,} positive / "
                     f"{m['negative_pairs']:,} negative pairs ({m['protocol']}); overlap {overlap}")
    sections = [
        ("Figs 2-3: cumulative PCA energy", "Cumulative explained variance of the test descriptors against the "
         "number of principal components (log scale): a steep rise means collapsed dimensions.",
         pca_energy(dict(descriptors))),
        ("Fig 5: positive and negative pair similarities", "Densities of the cosine similarity of positive (green) "
         "and negative (red) pairs, means dashed; overlap = histogram intersection.",
         pairs.histogram_figure(models)),
    ]
    write_report(out / "analysis.html", f"Descriptor analysis on {dataset}", {}, sections, notes)
    return data
