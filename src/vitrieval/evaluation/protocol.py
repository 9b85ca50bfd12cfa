"""Glue from a model and a dataset to the paper's retrieval metrics (El-Nouby et al. 2021, §4 of PAPER.md).

Protocols
---------
Category-level (``sop``, ``cub``, ``inshop``, ``folder``, ``csv``):
    Images of the **test** split are embedded (eval resize ``shorter``: shorter side to ``size / crop_pct``, centre
    crop ``size``). *Leave-one-out* (SOP, CUB, folder, csv where every test image is query and gallery): every test
    image queries all the *other* test images. *Query-gallery* (In-Shop): queries search a separate gallery.
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
    With ``model_dir`` (the model folder) it is attached to the model and
    stored through :meth:`vitrieval.model.Encoder.save` (``pca.safetensors``, ``config.json`` updated, its other
    keys kept) so that ``vitrieval.load`` -- and hence index / serve -- uses the same reduction. A model that
    already carries a PCA is evaluated through it when no PCA dimension is given.

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

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vitrieval.data.table import ImageTable
from vitrieval.embed import FAST_DECODE, Extraction, extract
from vitrieval.evaluation.pca_fit import PCAOptions, apply_pca, carried_pca_info, fit_pca, normalize_rows
from vitrieval.evaluation.rerank_variants import RerankOptions, category_rerank, reranked_results
from vitrieval.metrics import map_at_r, recall_at_k, revisited_map_from_descriptors
from vitrieval.model import Encoder, at_image_size, resolve_model_dir
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


# -- the trainer's held-out evaluation (unchanged signature) ---------------------------------------------------------

def recall_on_table(encoder: torch.nn.Module, table: ImageTable, ks: list[int], batch_size: int = 64,
                    num_workers: int | str = "auto", amp: str = "auto", resize: str = "shorter",
                    progress: bool = True, fast_decode: bool = FAST_DECODE) -> dict[int, float]:
    """Recall@K of ``encoder`` on the test split of ``table``.

    Leave-one-out (every test image queries all the *other* test images) when every test image is both query and
    gallery (SOP, CUB, folder datasets); queries against a separate gallery otherwise (In-Shop).
    """
    test = table.split("test") if any(r.split == "train" for r in table) else table
    ext = extract(encoder, test, batch_size=batch_size, num_workers=num_workers, amp=amp, resize=resize,
                  progress=progress, desc="embedding test images", fast_decode=fast_decode)
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

def extract_all(encoder: torch.nn.Module, table: ImageTable, *, batch_size: int, num_workers: int | str, amp: str,
                resize: str, progress: bool, desc: str, fast_decode: bool = FAST_DECODE) -> Extraction:
    """``extract`` with ``skip_bad=False`` of the pooled vectors (before PCA and L2): every row, or the
    :class:`~vitrieval.data.images.ImageDecodeError` of the first unreadable file (raised where it was decoded,
    also inside a DataLoader worker)."""
    ext = extract(encoder, table, batch_size=batch_size, num_workers=num_workers, amp=amp, resize=resize,
                  skip_bad=False, apply_pca=False, progress=progress, desc=desc, pooled=True,
                  fast_decode=fast_decode)
    if len(ext.indices) != len(table) or not np.array_equal(ext.indices, np.arange(len(table))):
        raise RuntimeError(f"extraction returned {len(ext.indices)} of {len(table)} rows of {table.name}")
    return ext


# -- the evaluation -------------------------------------------------------------------------------------------------

def default_ks(dataset: str) -> tuple[int, ...]:
    """The paper's Recall@K values for ``dataset`` (1, 2, 4, 8 for unknown category-level datasets)."""
    return DEFAULT_KS.get(dataset, (1, 2, 4, 8))


@dataclass(frozen=True)
class ExtractionOptions:
    """How images are embedded: ``batch_size`` images per forward pass, ``num_workers`` decoding workers, the
    autocast policy ``amp`` (:func:`vitrieval.amp.autocast_context`), a progress bar, and ``fast_decode``
    (``data.fast_decode``: large JPEGs decoded at a reduced DCT scale that still covers the eval resize)."""

    batch_size: int = 64
    num_workers: int | str = "auto"
    amp: str = "auto"
    progress: bool = True
    fast_decode: bool = FAST_DECODE

    def __post_init__(self) -> None:
        if self.batch_size < 1 or (self.num_workers != "auto" and self.num_workers < 0):
            raise ValueError(f"batch size must be >= 1 and workers >= 0, got {self.batch_size} and "
                             f"{self.num_workers}")


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
                   reader_options: dict[str, Any] | None = None, model_dir: str | Path | None = None,
                   model_name: str | None = None, rerank: RerankOptions | None = None,
                   scales: Sequence[float] | None = None,
                   distractors: np.ndarray | None = None,
                   distractor_features: Callable[[torch.nn.Module, str], np.ndarray] | None = None,
                   inspect: Callable[[EvaluatedSet], None] | None = None
                   ) -> dict[str, Any]:
    """Evaluate ``encoder`` on ``dataset`` read from ``data_root`` with the paper's protocol (module docstring).

    ``image_size`` evaluates at another resolution (ViT position embeddings resampled on a copy of the encoder,
    :func:`vitrieval.model.at_image_size`); ``resize`` overrides the protocol's eval resize (``shorter``
    category-level, ``square`` landmarks); ``reader_options`` go to the dataset reader. ``pca`` (default: none
    fitted) fits a PCA on the fit set :func:`vitrieval.evaluation.pca_fit.fit_pca` chooses. ``model_dir`` is the folder
    ``encoder`` was loaded from (a run folder or its ``model/``): with ``pca.save`` the fitted PCA is attached and
    the model saved there (only when the evaluation ran at the model's own image size, so that what is stored is
    what index / serve will compute). A PCA the model already carries is applied when ``pca.dim`` is not given and
    reported with the ``fitted_on`` its folder recorded (:attr:`vitrieval.model.Encoder.pca_info`).
    Unreadable images stop the evaluation with the :class:`~vitrieval.data.images.ImageDecodeError` naming the
    file. ``scales`` (e.g. ``(1, 0.707, 0.5)``) gives multi-scale descriptors (a PCA fitted on them is not stored:
    index / serve extract at one scale); ``rerank`` adds the αQE / DBA variants; ``distractors`` (M × D final
    descriptors of the same model, e.g. ``np.load(path, mmap_mode="r")``) adds the landmark metrics with them in
    the database; ``distractor_features(model, resize)`` instead gives their descriptors *before* PCA by the
    evaluation's model (at its image size and scales), reduced here by the evaluation's PCA block by block
    (``vitrieval evaluate --distractors DIR``). ``inspect`` is called once with the :class:`EvaluatedSet` the
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
        return extract_all(model, rows, batch_size=ext_options.batch_size, num_workers=ext_options.num_workers,
                           amp=ext_options.amp, resize=resize, progress=ext_options.progress,
                           desc=f"embedding {what}", fast_decode=ext_options.fast_decode).descriptors

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

            distractors = ReducedRows(distractor_features(model, resize),
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
    # Stored only once the metrics are computed: a failed evaluation leaves the model folder as it was.
    if pca_options.fits and reduction is not None and model_dir is not None and pca_options.save:
        if model is encoder:
            encoder.set_pca(reduction.to(next(encoder.parameters()).device), pca_info)
            path = encoder.save(resolve_model_dir(model_dir))
            log.info("PCA %d-d stored beside the model in %s", reduction.out_dim, path)
        elif multi != (1.0,):
            log.warning("PCA not stored in %s: it was fitted on multi-scale descriptors (scales %s); index and "
                        "serve extract at one scale", model_dir, ",".join(f"{s:g}" for s in multi))
        else:
            log.warning("PCA not stored in %s: it was fitted at %d px, not at the model's own %d px",
                        model_dir, size, encoder.data_config["image_size"])
    return result


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
