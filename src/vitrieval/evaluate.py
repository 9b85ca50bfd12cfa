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

PCA (``pca_dim``):
    Fitted with :meth:`PCAReduction.fit` on the descriptors (before any PCA) of the **training split** of the
    evaluated dataset, or of ``pca_fit_dataset`` when given; landmark datasets have no training split, so without
    ``pca_fit_dataset`` it is fitted on their database (and the JSON says so in ``pca_fitted_on``). It is applied,
    then descriptors are L2-normalised again. With ``model_dir`` (the model folder) it is stored beside the model
    (``pca.safetensors``, ``config.json`` updated) so that ``vitrieval.load`` -- and hence index / serve -- uses the
    same reduction. A model that already carries a PCA is evaluated through it when ``pca_dim`` is not given.

Result layout (stable; fractions in [0, 1], ``null`` for undefined means)::

    category-level: {"dataset", "model", "descriptor_dim", "image_size", "num_queries", "num_gallery",
                     "protocol": "leave-one-out" | "query-gallery", "recall_at_k": {"1": ..}, "map_at_r", "pca"}
    landmarks:      {"dataset", "model", "descriptor_dim", "image_size", "num_queries", "num_gallery",
                     "protocol": "revisited", "map": {"easy", "medium", "hard"},
                     "mp_at_k": {"easy": {"1", "5", "10"}, "medium": {..}, "hard": {..}}, "pca"
                     [, "pca_fitted_on"]}
    "pca": null | {"dim": 128, "whiten": false, "fitted_on": "sop/train"}
"""

from __future__ import annotations

import copy
import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vitrieval.data.table import ImageTable
from vitrieval.embed import Extraction, extract
from vitrieval.metrics import map_at_r, recall_at_k, revisited_map_from_descriptors
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
#: Names as the paper's tables print them.
DISPLAY_NAMES: dict[str, str] = {"sop": "SOP", "cub": "CUB", "inshop": "In-Shop", "roxford5k": "ROxf",
                                 "rparis6k": "RPar"}
_PROTOCOLS = ("easy", "medium", "hard")


# -- the trainer's held-out evaluation (unchanged signature) ---------------------------------------------------------

def recall_on_table(encoder: torch.nn.Module, table: ImageTable, ks: list[int], batch_size: int = 64,
                    num_workers: int = 2, amp: str = "auto", resize: str = "shorter",
                    progress: bool = True) -> dict[int, float]:
    """Recall@K of ``encoder`` on the test split of ``table``.

    Leave-one-out (every test image queries all the *other* test images) when every test image is both query and
    gallery (SOP, CUB, folder datasets); queries against a separate gallery otherwise (In-Shop).
    """
    test = table.split("test") if any(r.split == "train" for r in table) else table
    ext = extract(encoder, test, batch_size=batch_size, num_workers=num_workers, amp=amp, resize=resize,
                  progress=progress, desc="embedding test images")
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

def extract_all(encoder: torch.nn.Module, table: ImageTable, *, batch_size: int, num_workers: int, amp: str,
                resize: str, progress: bool, desc: str) -> Extraction:
    """``extract`` with ``skip_bad=False`` and no PCA: every row, or the
    :class:`~vitrieval.data.images.ImageDecodeError` of the first unreadable file (raised where it was decoded,
    also inside a DataLoader worker)."""
    ext = extract(encoder, table, batch_size=batch_size, num_workers=num_workers, amp=amp, resize=resize,
                  skip_bad=False, apply_pca=False, progress=progress, desc=desc)
    if len(ext.indices) != len(table) or not np.array_equal(ext.indices, np.arange(len(table))):
        raise RuntimeError(f"extraction returned {len(ext.indices)} of {len(table)} rows of {table.name}")
    return ext


def at_image_size(encoder: torch.nn.Module, image_size: int | None) -> torch.nn.Module:
    """``encoder`` itself, or a copy whose ViT takes ``image_size`` inputs (position embeddings resampled)."""
    if image_size is None or image_size == int(encoder.data_config["image_size"]):
        return encoder
    if image_size < 1:
        raise ValueError(f"image size must be positive, got {image_size}")
    backbone = encoder.backbone
    if not hasattr(backbone, "set_input_size"):
        raise ValueError(f"{encoder.config.name}: cannot change the input size of this backbone "
                         f"(evaluate at its own size, {encoder.data_config['image_size']})")
    resized = copy.deepcopy(encoder)
    resized.backbone.set_input_size(img_size=(image_size, image_size))
    resized.data_config = {**encoder.data_config, "image_size": int(image_size)}
    return resized


# -- PCA ------------------------------------------------------------------------------------------------------------

@torch.no_grad()
def _apply_pca(pca: PCAReduction, descriptors: np.ndarray) -> np.ndarray:
    """``pca`` (on whatever device its buffers live) applied to numpy descriptors; float32 numpy back."""
    x = torch.from_numpy(np.ascontiguousarray(descriptors, dtype=np.float32)).to(pca.matrix.device)
    return pca(x).cpu().numpy().astype(np.float32, copy=False)


def resolve_model_dir(directory: str | Path) -> Path:
    """The model folder of ``directory`` (itself, or its ``model/`` sub-folder for a training output folder)."""
    from vitrieval.model import CONFIG_FILE

    directory = Path(directory)
    if not (directory / CONFIG_FILE).is_file() and (directory / "model" / CONFIG_FILE).is_file():
        return directory / "model"
    return directory


def _stored_pca_info(model_dir: str | Path | None, pca: PCAReduction) -> dict[str, Any]:
    info: dict[str, Any] = {"dim": pca.out_dim, "whiten": bool(pca.whiten), "fitted_on": "unknown"}
    if model_dir is not None:
        from vitrieval.model import CONFIG_FILE

        cfg = resolve_model_dir(model_dir) / CONFIG_FILE
        try:
            stored = json.loads(cfg.read_text()).get("pca") or {}
        except (OSError, ValueError):
            stored = {}
        if stored.get("dim") == pca.out_dim and stored.get("fitted_on"):
            info["fitted_on"] = str(stored["fitted_on"])
    return info


def save_pca_beside_model(encoder: torch.nn.Module, pca: PCAReduction, model_dir: str | Path,
                          info: dict[str, Any]) -> Path:
    """Attach ``pca`` to ``encoder`` and rewrite its model folder (atomic writes; other config keys are kept).

    ``config.json`` then records ``descriptor_dim``, the new fingerprint and ``"pca": info``; ``vitrieval.load``
    of the folder applies the same reduction.
    """
    from vitrieval.model import CONFIG_FILE

    directory = resolve_model_dir(model_dir)
    standard = {"format", "version", "model", "data_config", "feature_dim", "descriptor_dim", "fingerprint"}
    extra: dict[str, Any] = {}
    if (directory / CONFIG_FILE).is_file():
        old = json.loads((directory / CONFIG_FILE).read_text())
        extra = {k: v for k, v in old.items() if k not in standard}
    extra["pca"] = dict(info)
    encoder.set_pca(pca.to(next(encoder.parameters()).device))
    return encoder.save(directory, extra=extra)


def _fit_table(table: ImageTable) -> tuple[ImageTable, str]:
    """The rows PCA is fitted on: the training split, or every row when there is none."""
    train = table.split("train")
    if len(train):
        return train, "train"
    return table, "all"


# -- the evaluation -------------------------------------------------------------------------------------------------

def default_ks(dataset: str) -> tuple[int, ...]:
    """The paper's Recall@K values for ``dataset`` (1, 2, 4, 8 for unknown category-level datasets)."""
    return DEFAULT_KS.get(dataset, (1, 2, 4, 8))


def evaluate_model(encoder: torch.nn.Module, dataset: str, data_root: str | Path, *,
                   ks: Sequence[int] | None = None, pca_dim: int | None = None, whiten: bool = False,
                   image_size: int | None = None, batch_size: int = 64, num_workers: int = 2, amp: str = "auto",
                   progress: bool = True, reader_options: dict[str, Any] | None = None,
                   pca_fit_dataset: str | None = None, pca_fit_root: str | Path | None = None,
                   pca_fit_options: dict[str, Any] | None = None, model_dir: str | Path | None = None,
                   save_pca: bool = True, model_name: str | None = None,
                   resize: str | None = None, pca_fit_max_images: int = 0) -> dict[str, Any]:
    """Evaluate ``encoder`` on ``dataset`` read from ``data_root`` with the paper's protocol (module docstring).

    ``image_size`` evaluates at another resolution (ViT position embeddings resampled on a copy of the encoder);
    ``resize`` overrides the protocol's eval resize (``shorter`` category-level, ``square`` landmarks).
    ``pca_dim`` fits a PCA (``whiten``: whitened) on the training split (or ``pca_fit_dataset`` read from
    ``pca_fit_root`` with ``pca_fit_options``), on at most ``pca_fit_max_images`` of its images (an even
    subsample; 0 = all). ``model_dir`` is the folder ``encoder`` was loaded from: with
    ``save_pca`` the fitted PCA is stored there (only when the evaluation ran at the model's own image size, so
    that what is stored is what index / serve will compute); a PCA the model already carries is reported with the
    ``fitted_on`` its ``config.json`` recorded.
    Unreadable images stop the evaluation with an error naming the file. Returns the JSON-ready result dict.
    """
    from vitrieval.data.readers import read_dataset

    if whiten and not pca_dim:
        raise ValueError("whitening is part of the PCA: give a PCA dimension (--pca) with --whiten")
    if (pca_fit_dataset is None) != (pca_fit_root is None):
        raise ValueError("the PCA fit set needs both a dataset name and a root (--pca-fit-dataset, --pca-fit-root)")
    if pca_fit_dataset is not None and not pca_dim:
        raise ValueError("--pca-fit-dataset / --pca-fit-root only make sense with a PCA dimension (--pca)")
    if batch_size < 1 or num_workers < 0:
        raise ValueError(f"batch size must be >= 1 and workers >= 0, got {batch_size} and {num_workers}")
    table = read_dataset(dataset, data_root, **(reader_options or {}))
    landmarks = dataset in LANDMARK_DATASETS or "gnd" in table.extras
    resize = resize or ("square" if landmarks else "shorter")
    model = at_image_size(encoder, image_size)
    size = int(model.data_config["image_size"])
    opts = dict(batch_size=batch_size, num_workers=num_workers, amp=amp, resize=resize, progress=progress)

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
    ext = extract_all(model, test, desc=f"embedding {dataset} test images", **opts)
    feats = ext.descriptors

    # PCA: fitted here, or the one the model already carries.
    pca: PCAReduction | None = None
    pca_info: dict[str, Any] | None = None
    if pca_dim:
        if pca_fit_dataset is not None:
            fit_src = read_dataset(pca_fit_dataset, pca_fit_root, **(pca_fit_options or {}))
            fit_table, part = _fit_table(fit_src)
            fit_table = fit_table.evenly_subsampled(pca_fit_max_images)
            fitted_on = f"{pca_fit_dataset}/{part}"
            fit_feats = extract_all(model, fit_table, desc=f"embedding {fitted_on} for PCA", **opts).descriptors
        elif landmarks:
            fitted_on = f"{dataset}/database"
            log.warning("PCA fitted on the %s database itself (the paper fits it on SfM-120k; pass "
                        "--pca-fit-dataset/--pca-fit-root to use another set)", dataset)
            fit_feats = feats[np.asarray([r.is_gallery for r in test])]
        else:
            fit_table = table.split("train")
            if len(fit_table) == 0:
                raise ValueError(f"{dataset} at {data_root} has no training split to fit the PCA on; "
                                 "pass --pca-fit-dataset/--pca-fit-root")
            fit_table = fit_table.evenly_subsampled(pca_fit_max_images)
            fitted_on = f"{dataset}/train"
            fit_feats = extract_all(model, fit_table, desc=f"embedding {fitted_on} for PCA", **opts).descriptors
        log.info("PCA %d-d fitted on %d descriptors of %s", int(pca_dim), len(fit_feats), fitted_on)
        pca = PCAReduction.fit(fit_feats, int(pca_dim), whiten)
        pca_info = {"dim": pca.out_dim, "whiten": bool(whiten), "fitted_on": fitted_on}
    elif getattr(encoder, "pca", None) is not None:
        pca = encoder.pca
        pca_info = _stored_pca_info(model_dir, pca)
    descriptors = _apply_pca(pca, feats) if pca is not None else feats

    result: dict[str, Any] = {
        "dataset": dataset,
        "model": model_name or encoder.config.name,
        "descriptor_dim": int(descriptors.shape[1]),
        "image_size": size,
    }
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
    else:
        result.update(_category_result(test, table.is_leave_one_out(), descriptors, dataset, ks))
        result["pca"] = pca_info
    # Stored only once the metrics are computed: a failed evaluation leaves the model folder as it was.
    if pca_dim and pca is not None and pca_info is not None and model_dir is not None and save_pca:
        if model is encoder:
            path = save_pca_beside_model(encoder, pca, model_dir, pca_info)
            log.info("PCA %d-d stored beside the model in %s", pca.out_dim, path)
        else:
            log.warning("PCA not stored in %s: it was fitted at %d px, not at the model's own %d px",
                        model_dir, size, encoder.data_config["image_size"])
    return result


def _category_result(test: ImageTable, leave_one_out: bool, descriptors: np.ndarray, dataset: str,
                     ks: Sequence[int] | None) -> dict[str, Any]:
    """Recall@K (default Ks that exceed what a query can retrieve are dropped) and MAP@R of the test split."""
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
    return category_metrics(descriptors, labels, is_q, is_g, k_list, leave_one_out)


# -- the paper's table layout ---------------------------------------------------------------------------------------

def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


def format_results(result: dict[str, Any]) -> str:
    """The paper's layout, e.g. ``SOP  R@1 84.0  R@10 93.6  R@100 97.2  R@1000 99.1`` or
    ``ROxf  mAP M 34.0 H 11.5  (E 55.0)  mP@1/5/10 M 90.0/80.0/70.0 H 50.0/40.0/30.0``, then a details line."""
    name = DISPLAY_NAMES.get(result["dataset"], result["dataset"])
    if "map" in result:
        mp = result["mp_at_k"]
        ks = list(mp["medium"])
        mp_text = " ".join(f"{p[0].upper()} " + "/".join(_pct(mp[p][k]) for k in ks) for p in ("medium", "hard"))
        line = (f"{name}  mAP M {_pct(result['map']['medium'])} H {_pct(result['map']['hard'])}  "
                f"(E {_pct(result['map']['easy'])})  mP@{'/'.join(ks)} {mp_text}")
        details = [f"{result['num_queries']} queries vs {result['num_gallery']} database images"]
    else:
        line = f"{name}  " + "  ".join(f"R@{k} {_pct(v)}" for k, v in result["recall_at_k"].items())
        if result["protocol"] == "leave-one-out":
            details = [f"MAP@R {_pct(result.get('map_at_r'))}",
                       f"leave-one-out over {result['num_queries']} test images"]
        else:
            details = [f"MAP@R {_pct(result.get('map_at_r'))}",
                       f"{result['num_queries']} queries vs {result['num_gallery']} gallery images"]
    details += [f"{result['descriptor_dim']}-d", f"{result['image_size']} px"]
    pca = result.get("pca")
    if pca:
        details.append(f"PCA {pca['dim']}{' whitened' if pca['whiten'] else ''} fitted on {pca['fitted_on']}")
    details.append(f"model {result['model']}")
    return line + "\n  " + ", ".join(details)
