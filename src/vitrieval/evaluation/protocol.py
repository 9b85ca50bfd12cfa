"""Glue from a model and a dataset to the paper's retrieval metrics (El-Nouby et al. 2021, §4 of PAPER.md).

Protocols
---------
Category-level (``sop``, ``cub``, ``inshop``, ``folder``, ``csv``):
    Images of the **test** split are embedded (eval resize ``shorter`` of
    :class:`~vitrieval.data.preprocessing.Preprocessing`, centre crop ``size``). *Leave-one-out* (SOP, CUB,
    folder, csv where every test image is query and gallery): every test image queries all the *other* test
    images. *Query-gallery* (In-Shop): queries search a separate gallery.
    Recall@K = fraction of queries with a same-label item among their K nearest neighbours (cosine); MAP@R as in
    Musgrave et al. (2020). Default K: SOP 1, 10, 100, 1000; CUB 1, 2, 4, 8; In-Shop 1, 10, 20, 30; folder / csv
    1, 2, 4, 8 (default Ks larger than what a query can retrieve are dropped, with a warning; explicit ones are
    errors).

Particular objects (``roxford5k``, ``rparis6k``, revisited protocol of Radenović et al. 2018):
    The whole image is resized to ``size x size`` (eval resize ``square``); queries are first cropped to their
    ``bbx``. The database is the ground truth's ``imlist`` only (a query record is never a database item). mAP and
    mP@1/5/10 under the Easy, Medium and Hard protocols (junk removed, trapezoid AP).

PCA (``PCAOptions.dim``; :mod:`vitrieval.evaluation.pca_fit`):
    Fitted with :meth:`PCAReduction.fit` on the descriptors (before any PCA) of the **training split** of the
    evaluated dataset, or of ``PCAOptions.fit_dataset`` when given; landmark datasets have no training split, so
    without a fit dataset it is fitted on their database (and the JSON says so in ``pca_fitted_on``). It is fitted on
    and applied to the pooled vectors, then the result is L2-normalised (pool → PCA → L2, the paper's §3.2).
    It is used for that evaluation only (the model and its folder are never edited); ``PCAOptions.save_to``
    writes a new model folder, the model plus its PCA (:func:`save_with_pca`), which index / serve then load
    like any model. A model that already carries a PCA is evaluated through it when no PCA dimension is given.

Result layout (stable; fractions in [0, 1], ``null`` for undefined means)::

    category-level: {"dataset", "model", "descriptor_dim", "image_size", "num_queries", "num_gallery",
                     "protocol": "leave-one-out" | "query-gallery", "recall_at_k": {"1": ..}, "map_at_r", "pca"}
    landmarks:      {"dataset", "model", "descriptor_dim", "image_size", "num_queries", "num_gallery",
                     "protocol": "revisited", "map": {"easy", "medium", "hard"},
                     "mp_at_k": {"easy": {"1", "5", "10"}, "medium": {..}, "hard": {..}}, "pca"
                     [, "pca_fitted_on"]}
    "pca": null | {"dim": 128, "whiten": false, "fitted_on": "sop/train"}
           learned whitening (Lw) adds "method": "learned" ({"dim", "whiten": true, "fitted_on", "method"})

  Keys added only when asked for (the layout above is unchanged otherwise):
    "scales": [1.0, 0.707, 0.5]      multi-scale descriptors (:mod:`vitrieval.multiscale`)
    "rerank": {"methods": ["aqe", "dba"], "n": 2, "alpha": 3.0,
               "results": {"aqe": {..}, "aqe+dba": {..}}}   (or {"dba": {..}} for DBA alone)
      each variant holds the metrics of the plain result re-computed after re-ranking: landmarks
      {"map", "mp_at_k"}, category-level {"recall_at_k", "map_at_r"} (:mod:`vitrieval.evaluation.rerank_variants`).
    "distractors": {"count": 1000000, "map": {..}, "mp_at_k": {..}}   landmarks with a distractor set (+R1M,
      plain descriptors only; :mod:`vitrieval.evaluation.distractors`)

Multi-scale (``scales``): each image's descriptor is the L2-normalised mean of the encoder's descriptors of the
pre-processed image resized by each scale (cirtorch's default, power 1), before any PCA; the PCA is fitted on and
applied to those. Re-ranking (``rerank``): αQE / DBA on the final descriptors (after PCA), see
:mod:`vitrieval.evaluation.rerank_variants` for what queries and database are under each protocol.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vitrieval.data.table import ImageTable
from vitrieval.embed import Extraction, ExtractionOptions, extract
from vitrieval.evaluation.pca_fit import PCAOptions, apply_pca, carried_pca_info, fit_pca, normalize_rows
from vitrieval.evaluation.rerank_variants import RerankOptions, category_rerank, reranked_results
from vitrieval.metrics import map_at_r, recall_at_k, revisited_map_from_descriptors
from vitrieval.model import Encoder, at_image_size
from vitrieval.multiscale import MultiScaleEncoder, parse_scales
from vitrieval.pca import PCAReduction

log = logging.getLogger(__name__)

#: The paper's K for Recall@K, per dataset (folder / csv: the CUB values, for small collections).
DEFAULT_KS: dict[str, tuple[int, ...]] = {
    "sop": (1, 10, 100, 1000),
    "cub": (1, 2, 4, 8),
    "inshop": (1, 10, 20, 30),
    "folder": (1, 2, 4, 8),
    "csv": (1, 2, 4, 8),
}
#: Datasets evaluated with the revisited Oxford / Paris protocol.
LANDMARK_DATASETS: tuple[str, ...] = ("roxford5k", "rparis6k")
#: mP@k reported for landmarks (the revisited protocol's kappas).
LANDMARK_KAPPAS: tuple[int, ...] = (1, 5, 10)
_PROTOCOLS = ("easy", "medium", "hard")


# -- the trainer's held-out evaluation ------------------------------------------------------------------------------

def recall_on_table(encoder: torch.nn.Module, table: ImageTable, ks: list[int],
                    options: ExtractionOptions | None = None) -> dict[int, float]:
    """Recall@K of ``encoder`` on the test split of ``table``, embedded with ``options``.

    Leave-one-out (every test image queries all the *other* test images) when every test image is both query and
    gallery (SOP, CUB, folder datasets); queries against a separate gallery otherwise (In-Shop).
    """
    test = table.split("test") if any(r.split == "train" for r in table) else table
    ext = extract(encoder, test, options, desc="embedding test images")
    labels = test.labels[ext.indices]
    if test.is_leave_one_out():
        return recall_at_k(ext.descriptors, labels, ks)
    is_query = np.asarray([test[i].is_query for i in ext.indices])
    is_gallery = np.asarray([test[i].is_gallery for i in ext.indices])
    return recall_at_k(ext.descriptors[is_query], labels[is_query], ks,
                       gallery=ext.descriptors[is_gallery], gallery_labels=labels[is_gallery])


# -- pure metric helpers ------------------------------------------------------------------------------------------

def _finite_or_none(value: float) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def category_metrics(descriptors: np.ndarray, labels: np.ndarray, is_query: np.ndarray, is_gallery: np.ndarray,
                     ks: Sequence[int], leave_one_out: bool) -> dict[str, Any]:
    """Recall@K and MAP@R of test-split descriptors (rows aligned with ``labels`` and the two masks).

    Leave-one-out: every row queries all the other rows (masks ignored). Otherwise rows with ``is_query`` search
    the rows with ``is_gallery``. Returns ``{"protocol", "num_queries", "num_gallery", "recall_at_k": {"K": r},
    "map_at_r"}``.
    """
    if leave_one_out:
        recall = recall_at_k(descriptors, labels, ks)
        mapr = map_at_r(descriptors, labels)
        n_q = n_g = len(labels)
        protocol = "leave-one-out"
    else:
        q, g = descriptors[is_query], descriptors[is_gallery]
        recall = recall_at_k(q, labels[is_query], ks, gallery=g, gallery_labels=labels[is_gallery])
        mapr = map_at_r(q, labels[is_query], gallery=g, gallery_labels=labels[is_gallery])
        n_q, n_g = int(is_query.sum()), int(is_gallery.sum())
        protocol = "query-gallery"
    return {"protocol": protocol, "num_queries": int(n_q), "num_gallery": int(n_g),
            "recall_at_k": {str(k): float(v) for k, v in recall.items()}, "map_at_r": _finite_or_none(mapr)}


def landmark_metrics(database: np.ndarray, queries: np.ndarray, gnd: Sequence[dict]) -> dict[str, Any]:
    """Revisited mAP and mP@1/5/10 (easy / medium / hard) of query descriptors against database descriptors."""
    res = revisited_map_from_descriptors(database, queries, gnd, LANDMARK_KAPPAS)
    return {
        "map": {p: _finite_or_none(res[p]["map"]) for p in _PROTOCOLS},
        "mp_at_k": {p: {str(k): _finite_or_none(v) for k, v in res[p]["mp_at_k"].items()} for p in _PROTOCOLS},
    }


# -- extraction ---------------------------------------------------------------------------------------------------

def extract_all(model: torch.nn.Module, table: ImageTable, options: ExtractionOptions, desc: str) -> Extraction:
    """:func:`~vitrieval.embed.extract` of the pooled vectors (before PCA and L2) of every row, stopping at the
    first unreadable file with its :class:`~vitrieval.data.images.ImageDecodeError` (raised where it was decoded,
    also inside a DataLoader worker)."""
    ext = extract(model, table, dataclasses.replace(options, skip_bad=False, output="pooled"), desc=desc)
    if len(ext.indices) != len(table) or not np.array_equal(ext.indices, np.arange(len(table))):
        raise RuntimeError(f"extraction returned {len(ext.indices)} of {len(table)} rows of {table.name}")
    return ext


# -- the evaluation -------------------------------------------------------------------------------------------------

def default_ks(dataset: str) -> tuple[int, ...]:
    """The paper's Recall@K values for ``dataset`` (1, 2, 4, 8 for unknown category-level datasets)."""
    return DEFAULT_KS.get(dataset, (1, 2, 4, 8))


@dataclass(frozen=True)
class EvaluatedSet:
    """What an evaluation scored, for a closer look (``vitrieval evaluate --report``): the test split, its final
    descriptors (after any PCA, L2-normalised; rows aligned with ``test``), the query / gallery masks, whether the
    protocol is leave-one-out, and the revisited ground truth ``gnd`` (one entry per query, landmarks only)."""

    test: ImageTable
    descriptors: np.ndarray
    is_query: np.ndarray
    is_gallery: np.ndarray
    leave_one_out: bool
    gnd: Sequence[dict] | None = None


def evaluate_model(encoder: Encoder, dataset: str, data_root: str | Path, *, ks: Sequence[int] | None = None,
                   pca: PCAOptions | None = None, extraction: ExtractionOptions | None = None,
                   image_size: int | None = None, resize: str | None = None,
                   reader_options: dict[str, Any] | None = None,
                   model_name: str | None = None, rerank: RerankOptions | None = None,
                   scales: Sequence[float] | None = None,
                   distractors: np.ndarray | None = None,
                   distractor_features: Callable[[torch.nn.Module, ExtractionOptions], np.ndarray] | None = None,
                   inspect: Callable[[EvaluatedSet], None] | None = None
                   ) -> dict[str, Any]:
    """Evaluate ``encoder`` on ``dataset`` read from ``data_root`` with the paper's protocol (module docstring).

    ``image_size`` evaluates at another resolution (ViT position embeddings resampled on a copy of the encoder,
    :func:`vitrieval.model.at_image_size`); ``resize`` overrides the protocol's eval resize (``shorter``
    category-level, ``square`` landmarks); ``reader_options`` go to the dataset reader. ``pca`` (default: none
    fitted) fits a PCA on the fit set :func:`vitrieval.evaluation.pca_fit.fit_pca` chooses, for this evaluation
    only: ``encoder`` and its folder are never changed. With ``pca.save_to`` a *new* model folder is written there:
    a copy of the model with the PCA attached, its own fingerprint (only when the evaluation ran at the model's own
    image size and one scale, so that what is written is what index / serve will compute; the result then names it
    under ``"saved_model"``). A PCA the model already carries is applied when ``pca.dim`` is not given and
    reported with the ``fitted_on`` its folder recorded (:attr:`vitrieval.model.Encoder.pca_info`).
    Unreadable images stop the evaluation with the :class:`~vitrieval.data.images.ImageDecodeError` naming the
    file. ``scales`` (e.g. ``(1, 0.707, 0.5)``) gives multi-scale descriptors (a PCA fitted on them is not stored:
    index / serve extract at one scale); ``rerank`` adds the αQE / DBA variants; ``distractors`` (M × D final
    descriptors of the same model, e.g. ``np.load(path, mmap_mode="r")``) adds the landmark metrics with them in
    the database; ``distractor_features(model, options)`` instead gives their descriptors *before* PCA by the
    evaluation's model (at its image size and scales) embedded with ``options`` (the evaluation's extraction at its
    resize, ``output="normalized"``), reduced here by the evaluation's PCA block by block (``vitrieval evaluate
    --distractors DIR``). ``inspect`` is called once with the :class:`EvaluatedSet` the
    metrics were computed on (``vitrieval evaluate --report``). Returns the JSON-ready result dict.
    """
    from vitrieval.data.readers import read_dataset

    pca_options = pca or PCAOptions()
    ext_options = extraction or ExtractionOptions()
    table = read_dataset(dataset, data_root, **(reader_options or {}))
    landmarks = dataset in LANDMARK_DATASETS or "gnd" in table.extras
    resize = resize or ("square" if landmarks else "shorter")
    model = at_image_size(encoder, image_size)
    size = int(model.data_config["image_size"])
    multi = parse_scales(scales) if scales is not None else (1.0,)
    if multi != (1.0,):
        model = MultiScaleEncoder(model, multi)
    rerank = rerank if rerank is not None and rerank.methods else None

    def embed(rows: ImageTable, what: str) -> np.ndarray:
        return extract_all(model, rows, dataclasses.replace(ext_options, resize=resize),
                           desc=f"embedding {what}").descriptors

    test = table.split("test")
    if len(test) == 0:
        raise ValueError(f"{dataset} at {data_root}: no test images to evaluate")
    if landmarks:
        overlap = [r.path for r in test if r.is_query and r.is_gallery]
        if overlap:
            raise ValueError(f"{dataset}: {len(overlap)} record(s) are both query and database item "
                             f"(first: {overlap[0]}); the revisited protocol keeps queries out of the database")
        if "gnd" not in table.extras:
            raise ValueError(f"{dataset}: the table carries no revisited ground truth (extras['gnd'])")
    feats = embed(test, f"{dataset} test images")

    # PCA: fitted here, or the one the model already carries.
    reduction: PCAReduction | None = None
    pca_info: dict[str, Any] | None = None
    if pca_options.fits:
        reduction, pca_info = fit_pca(pca_options, dataset, data_root, table, test, feats, landmarks,
                                      lambda rows, what: embed(rows, f"{what} for PCA"))
    elif getattr(encoder, "pca", None) is not None:
        reduction = encoder.pca
        pca_info = carried_pca_info(reduction, getattr(encoder, "pca_info", None))
    # pool -> [PCA] -> L2 (§3.2): ``feats`` are the pooled vectors
    descriptors = apply_pca(reduction, feats) if reduction is not None else normalize_rows(feats)

    result: dict[str, Any] = {
        "dataset": dataset,
        "model": model_name or encoder.config.name,
        "descriptor_dim": int(descriptors.shape[1]),
        "image_size": size,
    }
    if multi != (1.0,):
        result["scales"] = list(multi)
    if landmarks:
        is_q = np.asarray([r.is_query for r in test])
        is_g = np.asarray([r.is_gallery for r in test])
        gnd = table.extras["gnd"]
        if int(is_q.sum()) != len(gnd):
            raise ValueError(f"{dataset}: {int(is_q.sum())} query images but the ground truth describes {len(gnd)}")
        metrics = landmark_metrics(descriptors[is_g], descriptors[is_q], gnd)
        result.update({"num_queries": int(is_q.sum()), "num_gallery": int(is_g.sum()), "protocol": "revisited",
                       **metrics, "pca": pca_info})
        if pca_info is not None:
            result["pca_fitted_on"] = pca_info["fitted_on"]
        if rerank is not None:
            result["rerank"] = reranked_results(rerank, descriptors[is_q], descriptors[is_g],
                                                lambda q, db: landmark_metrics(db, q, gnd))
        if distractors is None and distractor_features is not None:
            from vitrieval.evaluation.distractors import ReducedRows

            features = distractor_features(model, dataclasses.replace(ext_options, resize=resize,
                                                                      output="normalized"))
            distractors = ReducedRows(features,
                                      None if reduction is None else lambda x: apply_pca(reduction, x))
        if distractors is not None:
            from vitrieval.evaluation.distractors import revisited_map_with_distractors

            res = revisited_map_with_distractors(descriptors[is_g], descriptors[is_q], distractors, gnd,
                                                 LANDMARK_KAPPAS)
            result["distractors"] = {
                "count": int(len(distractors)),
                "map": {p: _finite_or_none(res[p]["map"]) for p in _PROTOCOLS},
                "mp_at_k": {p: {str(k): _finite_or_none(v) for k, v in res[p]["mp_at_k"].items()}
                            for p in _PROTOCOLS}}
    else:
        if distractors is not None or distractor_features is not None:
            raise ValueError(f"{dataset}: distractors apply to the revisited landmark protocol (roxford5k, "
                             "rparis6k)")
        result.update(_category_result(test, table.is_leave_one_out(), descriptors, dataset, ks, rerank))
        result["pca"] = pca_info
        if "rerank" in result:
            result["rerank"] = result.pop("rerank")  # after "pca": the documented order
    if inspect is not None:
        inspect(EvaluatedSet(test, descriptors, np.asarray([r.is_query for r in test]),
                             np.asarray([r.is_gallery for r in test]), not landmarks and table.is_leave_one_out(),
                             table.extras["gnd"] if landmarks else None))
    # Written only once the metrics are computed, and only to a new folder: the evaluated model is never edited.
    if pca_options.fits and reduction is not None and pca_options.save_to is not None:
        if model is encoder:
            path = save_with_pca(encoder, reduction, pca_info, pca_options.save_to)
            log.info("the model with its %d-d PCA written to %s (fingerprint %s)", reduction.out_dim, path,
                     json.loads((path / "config.json").read_text())["fingerprint"])
            result["saved_model"] = str(path)
        elif multi != (1.0,):
            log.warning("PCA not saved to %s: it was fitted on multi-scale descriptors (scales %s); index and "
                        "serve extract at one scale", pca_options.save_to, ",".join(f"{s:g}" for s in multi))
        else:
            log.warning("PCA not saved to %s: it was fitted at %d px, not at the model's own %d px",
                        pca_options.save_to, size, encoder.data_config["image_size"])
    return result


def save_with_pca(encoder: Encoder, reduction: PCAReduction, pca_info: dict[str, Any] | None,
                  directory: str | Path) -> Path:
    """Write a new model folder at ``directory``: a copy of ``encoder`` with ``reduction`` attached (its own
    fingerprint); ``encoder`` itself is left as it was. Refuses a folder that already holds a model."""
    target = Path(directory).expanduser()
    if (target / "config.json").exists() or (target / "model" / "config.json").exists():
        raise ValueError(f"--save-pca {directory}: a model folder is already there; give a new folder")
    derived = copy.deepcopy(encoder)
    derived.set_pca(reduction.to(next(derived.parameters()).device), pca_info)
    return derived.save(target, extra={"derived_from": encoder.fingerprint()})


def _category_result(test: ImageTable, leave_one_out: bool, descriptors: np.ndarray, dataset: str,
                     ks: Sequence[int] | None, rerank: RerankOptions | None = None) -> dict[str, Any]:
    """Recall@K (default Ks that exceed what a query can retrieve are dropped) and MAP@R of the test split
    (and of its re-ranked variants under ``"rerank"``)."""
    labels = test.labels
    is_q = np.asarray([r.is_query for r in test])
    is_g = np.asarray([r.is_gallery for r in test])
    if not leave_one_out and (not is_q.any() or not is_g.any()):
        raise ValueError(f"{dataset}: the test split needs query and gallery images "
                         f"({int(is_q.sum())} queries, {int(is_g.sum())} gallery)")
    candidates = len(test) - 1 if leave_one_out else int(is_g.sum())
    if ks is None:
        wanted = default_ks(dataset)
        k_list = [k for k in wanted if k <= candidates]
        if len(k_list) < len(wanted):
            log.warning("%s: Recall@%s dropped (a query can retrieve only %d images)", dataset,
                        ",".join(str(k) for k in wanted if k > candidates), candidates)
        if not k_list:
            raise ValueError(f"{dataset}: too few test images for Recall@K ({candidates} candidates per query)")
    else:
        k_list = sorted({int(k) for k in ks})
    out = category_metrics(descriptors, labels, is_q, is_g, k_list, leave_one_out)
    if rerank is not None:
        out["rerank"] = category_rerank(rerank, descriptors, labels, is_q, is_g, k_list, leave_one_out)
    return out
