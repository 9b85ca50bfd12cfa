"""The evaluation's PCA: its options, the set it is fitted on, and the record a carried PCA is reported with.

The fit set (module docstring of :mod:`vitrieval.evaluation.protocol`): the **training split** of the evaluated dataset,
or ``PCAOptions.fit_dataset`` (its training split, or all of it when it has none); a landmark dataset without a fit
dataset is fitted on its own database (``fitted_on = "<dataset>/database"``, with a warning: the paper fits on
SfM-120k). At most ``fit_max_images`` images are used (an even subsample, ``ImageTable.evenly_subsampled``). The
reduction ``y = normalize(A (x - mu))`` is :class:`~vitrieval.pca.PCAReduction`; ``x`` are the **pooled** vectors,
before the L2 normalisation (:meth:`vitrieval.model.Encoder.pooled`), so the final descriptor is
``L2(PCA(pooled))``, the paper's §3.2 order (pool → PCA → L2, not pool → L2 → PCA → L2).

Learned whitening (``PCAOptions.method = "learned"``, Radenović et al.'s Lw, :mod:`vitrieval.whitening`) is fitted
on the query–positive pairs of ``fit_dataset`` (SfM-120k: ``table.extras["pairs"]["train"]``, indices into its
training split), from the descriptors of the images those pairs use; ``fit_max_images`` then caps the number of
*pairs* (an even subsample). ``dim`` keeps the first components (default: all). Its record adds
``"method": "learned"`` (``{"dim", "whiten": true, "fitted_on": "sfm120k/train", "method": "learned"}``); it is
saved with the model like a PCA (``save_to``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vitrieval.data.table import ImageTable
from vitrieval.pca import PCAReduction

log = logging.getLogger(__name__)

#: ``(table, what) -> pooled vectors`` (before PCA and L2) of every row of ``table`` (``what`` names it in the
#: progress bar).
EmbedTable = Callable[[ImageTable, str], np.ndarray]


@dataclass(frozen=True)
class PCAOptions:
    """How to reduce the descriptors: ``dim`` ``None`` fits nothing (a PCA the model carries is still applied).

    ``whiten``: a whitened PCA. ``method``: ``"pca"`` or ``"learned"`` (Lw from ``fit_dataset``'s matching pairs;
    ``dim`` optional, whitening implied). ``fit_dataset`` read from ``fit_root`` (reader keyword arguments
    ``fit_options``) replaces the default fit set; ``fit_max_images`` caps it (0 = all). ``save_to``: a new folder
    to write the model plus the fitted PCA to (``evaluate --save-pca DIR``); the evaluated model is never edited.
    """

    dim: int | None = None
    whiten: bool = False
    fit_dataset: str | None = None
    fit_root: str | Path | None = None
    fit_options: dict[str, Any] | None = None
    fit_max_images: int = 0
    save_to: str | Path | None = None
    method: str = "pca"

    def __post_init__(self) -> None:
        if self.method not in ("pca", "learned"):
            raise ValueError(f"whitening method must be 'pca' or 'learned', got {self.method!r}")
        if self.method == "learned":
            if self.fit_dataset is None or self.fit_root is None:
                raise ValueError("learned whitening is fitted on matching pairs: give --pca-fit-dataset sfm120k "
                                 "and --pca-fit-root")
            if self.fit_max_images < 0 or (self.dim is not None and self.dim < 1):
                raise ValueError("learned whitening: the dimension must be >= 1 and the pair cap >= 0")
            return
        if self.whiten and not self.dim:
            raise ValueError("whitening is part of the PCA: give a PCA dimension (--pca) with --whiten")
        if (self.fit_dataset is None) != (self.fit_root is None):
            raise ValueError("the PCA fit set needs both a dataset name and a root (--pca-fit-dataset, "
                             "--pca-fit-root)")
        if self.fit_dataset is not None and not self.dim:
            raise ValueError("--pca-fit-dataset / --pca-fit-root only make sense with a PCA dimension (--pca)")
        if self.fit_max_images < 0:
            raise ValueError(f"the PCA fit set cap must be >= 0 images, got {self.fit_max_images}")

    @property
    def fits(self) -> bool:
        """Whether a reduction is fitted (a PCA dimension, or learned whitening)."""
        return bool(self.dim) or self.method == "learned"


def _train_or_all(table: ImageTable) -> tuple[ImageTable, str]:
    """The rows PCA is fitted on: the training split, or every row when there is none."""
    train = table.split("train")
    if len(train):
        return train, "train"
    return table, "all"


def fit_pca(options: PCAOptions, dataset: str, data_root: str | Path, table: ImageTable, test: ImageTable,
            test_descriptors: np.ndarray, landmarks: bool, embed: EmbedTable) -> tuple[PCAReduction, dict[str, Any]]:
    """Fit the ``options.dim``-d PCA on its fit set; returns it and its record ``{"dim", "whiten", "fitted_on"}``.

    ``table`` is the evaluated dataset, ``test`` its test split with descriptors ``test_descriptors`` (a landmark
    database is fitted on those directly); ``embed`` embeds any other fit set.
    """
    from vitrieval.data.readers import read_dataset

    if options.method == "learned":
        return fit_learned_whitening(options, embed)
    if not options.dim:
        raise ValueError("fit_pca needs a PCA dimension")
    if options.fit_dataset is not None:
        source = read_dataset(options.fit_dataset, options.fit_root, **(options.fit_options or {}))
        fit_table, part = _train_or_all(source)
        fitted_on = f"{options.fit_dataset}/{part}"
        fit = embed(fit_table.evenly_subsampled(options.fit_max_images), fitted_on)
    elif landmarks:
        fitted_on = f"{dataset}/database"
        log.warning("PCA fitted on the %s database itself (the paper fits it on SfM-120k; pass "
                    "--pca-fit-dataset/--pca-fit-root to use another set)", dataset)
        fit = test_descriptors[np.asarray([r.is_gallery for r in test])]
    else:
        fit_table = table.split("train")
        if len(fit_table) == 0:
            raise ValueError(f"{dataset} at {data_root} has no training split to fit the PCA on; "
                             "pass --pca-fit-dataset/--pca-fit-root")
        fitted_on = f"{dataset}/train"
        fit = embed(fit_table.evenly_subsampled(options.fit_max_images), fitted_on)
    log.info("PCA %d-d fitted on %d descriptors of %s", int(options.dim), len(fit), fitted_on)
    pca = PCAReduction.fit(fit, int(options.dim), options.whiten)
    return pca, {"dim": pca.out_dim, "whiten": bool(options.whiten), "fitted_on": fitted_on}


def fit_learned_whitening(options: PCAOptions, embed: EmbedTable) -> tuple[PCAReduction, dict[str, Any]]:
    """Lw from the training pairs of ``options.fit_dataset`` (module docstring); returns it and its record."""
    from vitrieval.data.readers import read_dataset
    from vitrieval.whitening import learn_whitening

    source = read_dataset(options.fit_dataset, options.fit_root, **(options.fit_options or {}))
    all_pairs = source.extras.get("pairs")
    if not isinstance(all_pairs, dict) or len(all_pairs.get("train", ())) == 0:
        raise ValueError(f"learned whitening needs query-positive pairs: {options.fit_dataset} at "
                         f"{options.fit_root} has none (SfM-120k carries them)")
    train = source.split("train")
    pairs = np.asarray(all_pairs["train"], dtype=np.int64)
    if options.fit_max_images and len(pairs) > options.fit_max_images:
        pairs = pairs[:: -(-len(pairs) // options.fit_max_images)]
    used = np.unique(pairs)
    keep = np.zeros(len(train), dtype=bool)
    keep[used] = True
    fitted_on = f"{options.fit_dataset}/train"
    descriptors = embed(train.select(keep), f"{fitted_on} pairs")
    remap = np.full(len(train), -1, dtype=np.int64)
    remap[used] = np.arange(len(used))
    lw = learn_whitening(descriptors, remap[pairs], options.dim)
    log.info("learned whitening %d-d fitted on %d pairs (%d images) of %s", lw.out_dim, len(pairs), len(used),
             fitted_on)
    return lw, {"dim": lw.out_dim, "whiten": True, "fitted_on": fitted_on, "method": "learned"}


def carried_pca_info(pca: PCAReduction, stored: dict[str, Any] | None) -> dict[str, Any]:
    """The record of a PCA a model already carries: its own dim / whiten, and the ``fitted_on`` its model folder
    recorded (``stored``, :attr:`vitrieval.model.Encoder.pca_info`) when that describes this PCA, else
    ``"unknown"``."""
    info: dict[str, Any] = {"dim": pca.out_dim, "whiten": bool(pca.whiten), "fitted_on": "unknown"}
    if stored and stored.get("dim") == pca.out_dim and stored.get("fitted_on"):
        info["fitted_on"] = str(stored["fitted_on"])
        if stored.get("method"):
            info["method"] = str(stored["method"])
    return info


def normalize_rows(x: np.ndarray) -> np.ndarray:
    """``x / ‖x‖`` row by row (float32; a zero row stays zero): the descriptor of pooled vectors without a PCA."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


@torch.no_grad()
def apply_pca(pca: PCAReduction, descriptors: np.ndarray) -> np.ndarray:
    """``pca`` (on whatever device its buffers live) applied to numpy pooled vectors, ``L2(PCA(x))``; float32 numpy
    back."""
    x = torch.from_numpy(np.ascontiguousarray(descriptors, dtype=np.float32)).to(pca.matrix.device)
    return pca(x).cpu().numpy().astype(np.float32, copy=False)
