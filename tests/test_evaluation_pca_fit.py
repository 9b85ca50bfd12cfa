"""vitrieval.evaluation.pca_fit: the PCA options, the set the evaluation's PCA is fitted on, a carried PCA's record.

The fit set is checked with a stand-in embedding (each row's descriptor is a fixed random vector of its path), so
the rules are pinned without a model: the fitted PCA must equal one fitted directly on the expected rows.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from vitrieval.data.table import ImageTable, Record
from vitrieval.evaluation.pca_fit import PCAOptions, apply_pca, carried_pca_info, fit_pca
from vitrieval.pca import PCAReduction

DIM = 6


def _vector(path: str) -> np.ndarray:
    return np.random.default_rng(zlib.crc32(path.encode())).standard_normal(DIM).astype(np.float32)


class _Embedder:
    """``embed(table, what)`` of fit_pca: records what it was asked to embed."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], str]] = []

    def __call__(self, table: ImageTable, what: str) -> np.ndarray:
        self.calls.append((table.paths, what))
        return np.stack([_vector(p) for p in table.paths])


def _category_table(n_train: int = 10, n_test: int = 6) -> ImageTable:
    rows = [Record(f"train_{i}.jpg", i % 3, split="train") for i in range(n_train)]
    rows += [Record(f"test_{i}.jpg", i % 2, split="test") for i in range(n_test)]
    return ImageTable(rows, name="shapes")


def _same_pca(a: PCAReduction, b: PCAReduction) -> bool:
    return torch.allclose(a.matrix, b.matrix, atol=1e-6) and torch.allclose(a.bias, b.bias, atol=1e-6)


def test_options_refuse_what_the_command_refuses() -> None:
    assert PCAOptions() == PCAOptions(dim=None, whiten=False, fit_dataset=None, fit_root=None, fit_options=None,
                                      fit_max_images=0, save_to=None)
    with pytest.raises(ValueError, match="give a PCA dimension \\(--pca\\) with --whiten"):
        PCAOptions(whiten=True)
    with pytest.raises(ValueError, match="both a dataset name and a root"):
        PCAOptions(dim=4, fit_dataset="folder")
    with pytest.raises(ValueError, match="both a dataset name and a root"):
        PCAOptions(dim=4, fit_root="/data")
    with pytest.raises(ValueError, match="only make sense with a PCA dimension"):
        PCAOptions(fit_dataset="folder", fit_root="/data")
    with pytest.raises(ValueError, match=">= 0"):
        PCAOptions(dim=4, fit_max_images=-1)


def test_category_level_fits_on_the_training_split_capped_evenly() -> None:
    table = _category_table()
    test = table.split("test")
    embed = _Embedder()
    pca, info = fit_pca(PCAOptions(dim=3), "shapes", "/data", table, test, np.zeros((6, DIM)), False, embed)
    assert info == {"dim": 3, "whiten": False, "fitted_on": "shapes/train"}
    assert embed.calls == [([f"train_{i}.jpg" for i in range(10)], "shapes/train")]
    assert _same_pca(pca, PCAReduction.fit(np.stack([_vector(f"train_{i}.jpg") for i in range(10)]), 3))

    embed = _Embedder()
    capped, _ = fit_pca(PCAOptions(dim=3, fit_max_images=4, whiten=True), "shapes", "/data", table, test,
                        np.zeros((6, DIM)), False, embed)
    assert embed.calls[0][0] == ["train_0.jpg", "train_3.jpg", "train_6.jpg", "train_9.jpg"]  # every 3rd of 10
    assert capped.whiten
    with pytest.raises(ValueError, match="no training split to fit the PCA on"):
        fit_pca(PCAOptions(dim=3), "shapes", "/data", test, test, np.zeros((6, DIM)), False, _Embedder())


def test_landmarks_fit_on_their_database_rows_without_embedding_again(caplog: pytest.LogCaptureFixture) -> None:
    test = ImageTable([Record("q0.jpg", 0, is_gallery=False)] + [Record(f"db{i}.jpg", 1, is_query=False)
                                                                  for i in range(8)] +
                      [Record("q1.jpg", 0, is_gallery=False)], name="roxford5k")
    feats = np.stack([_vector(p) for p in test.paths])
    embed = _Embedder()
    pca, info = fit_pca(PCAOptions(dim=4), "roxford5k", "/data", test, test, feats, True, embed)
    assert info["fitted_on"] == "roxford5k/database" and embed.calls == []
    assert _same_pca(pca, PCAReduction.fit(feats[1:9], 4))
    assert "fitted on the roxford5k database itself" in caplog.text


def test_a_fit_dataset_uses_its_training_split_or_all_of_it(tmp_path: Path) -> None:
    from vitrieval.data.readers import read_dataset

    root = tmp_path / "fit"
    for c in range(4):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(3):
            (root / f"class{c}" / f"{i}.png").write_bytes(b"")  # never decoded: the embedding is a stand-in
    source = read_dataset("folder", root)
    table = _category_table()
    embed = _Embedder()
    _, info = fit_pca(PCAOptions(dim=2, fit_dataset="folder", fit_root=root, fit_max_images=3), "shapes",
                      "/data", table, table.split("test"), np.zeros((6, DIM)), False, embed)
    train = source.split("train")
    assert len(train) and info["fitted_on"] == "folder/train"
    assert embed.calls == [(train.evenly_subsampled(3).paths, "folder/train")]


def test_a_carried_pca_is_reported_with_the_record_that_describes_it() -> None:
    pca = PCAReduction(np.eye(4, 8, dtype=np.float32), np.zeros(4, np.float32), whiten=True)
    record = {"dim": 4, "whiten": True, "fitted_on": "sop/train"}
    assert carried_pca_info(pca, record) == record
    assert carried_pca_info(pca, None) == {"dim": 4, "whiten": True, "fitted_on": "unknown"}
    assert carried_pca_info(pca, {**record, "dim": 8})["fitted_on"] == "unknown"  # describes another PCA
    assert carried_pca_info(pca, {"dim": 4})["fitted_on"] == "unknown"


def test_apply_pca_is_the_module_on_numpy() -> None:
    x = np.random.default_rng(0).standard_normal((20, DIM)).astype(np.float32)
    pca = PCAReduction.fit(x, 3)
    y = apply_pca(pca, x.astype(np.float64))
    assert y.dtype == np.float32 and y.shape == (20, 3)
    assert np.allclose(y, pca.apply_numpy(x), atol=1e-6)


def test_a_fit_dataset_without_a_training_split_is_fitted_on_all_its_rows(tmp_path: Path) -> None:
    paths = [tmp_path / f"{i}.png" for i in range(5)]
    for p in paths:
        p.write_bytes(b"")
    (tmp_path / "fit.csv").write_text("path,label,split\n" + "".join(f"{p},{i % 2},test\n" for i, p in
                                                                     enumerate(paths)))
    table = _category_table()
    embed = _Embedder()
    _, info = fit_pca(PCAOptions(dim=2, fit_dataset="csv", fit_root=tmp_path / "fit.csv"), "shapes", "/data",
                      table, table.split("test"), np.zeros((6, DIM)), False, embed)
    assert info["fitted_on"] == "csv/all"
    assert embed.calls == [([str(p) for p in paths], "csv/all")]


def test_learned_whitening_options() -> None:
    """``method="learned"``: fitted without a PCA dimension, but only from a fit set (its matching pairs)."""
    from vitrieval.evaluation.pca_fit import PCAOptions

    assert PCAOptions(method="learned", fit_dataset="sfm120k", fit_root="/data/sfm").fits
    assert not PCAOptions().fits and PCAOptions(dim=8).fits
    with pytest.raises(ValueError, match="matching pairs"):
        PCAOptions(method="learned")
    with pytest.raises(ValueError, match="'pca' or 'learned'"):
        PCAOptions(dim=8, method="zca")
