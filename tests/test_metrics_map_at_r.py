"""MAP@R: a hand-computed case and agreement with pytorch-metric-learning's AccuracyCalculator."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vitrieval.metrics import map_at_r


def on_circle(degrees: list[float]) -> np.ndarray:
    rad = np.deg2rad(np.asarray(degrees, dtype=np.float64))
    return np.stack([np.cos(rad), np.sin(rad)], axis=1).astype(np.float32)


def clustered(n: int, d: int, n_classes: int, noise: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, n_classes, n)  # some classes have a single item: "lone" queries
    centres = rng.standard_normal((n_classes, d))
    x = centres[labels] + noise * rng.standard_normal((n, d))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), labels.astype(np.int64)


def pml_map_at_r(*args, **kwargs) -> float:
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

    calc = AccuracyCalculator(include=("mean_average_precision_at_r",), k="max_bin_count", device=torch.device("cpu"))
    return calc.get_accuracy(*args, **kwargs)["mean_average_precision_at_r"]


def test_map_at_r_by_hand() -> None:
    # Gallery: 10 deg A, 20 deg B, 30 deg A, 40 deg A, 90 deg B.
    # Query 0 deg, label A: R = 3, top 3 = A, B, A -> (1 + 2/3) / 3 = 5/9.
    # Query 45 deg, label B: R = 2, top 2 = A (40), A (30) -> 0.
    # Query label C: no relevant item, left out of the mean.
    g = on_circle([10, 20, 30, 40, 90])
    gl = np.array([0, 1, 0, 0, 1])
    q = on_circle([0, 45, 200])
    assert map_at_r(q, np.array([0, 1, 2]), g, gl) == pytest.approx((5 / 9 + 0) / 2)
    assert map_at_r(q[:1], np.array([0]), g, gl) == pytest.approx(5 / 9)


def test_map_at_r_leave_one_out_by_hand() -> None:
    # Angles 0, 10, 20, 35, 100; labels A, B, A, A, B.
    # item0 (R=2): 10 B, 20 A -> (0 + 1/2) / 2 = 1/4      item1 (R=1): 0 A / 20 A tie at 10 deg -> 0
    # item2 (R=2): 10 B, 35 A -> 1/4                       item3 (R=2): 20 A, 10 B -> 1/2
    # item4 (R=1): 35 A -> 0
    x = on_circle([0, 10, 20, 35, 100])
    labels = np.array([0, 1, 0, 0, 1])
    assert map_at_r(x, labels) == pytest.approx((1 / 4 + 0 + 1 / 4 + 1 / 2 + 0) / 5)


def test_map_at_r_no_relevant_item_is_nan() -> None:
    x = on_circle([0, 10, 20])
    assert math.isnan(map_at_r(x, np.array([0, 1, 2])))


def test_map_at_r_chunking_does_not_change_it() -> None:
    x, labels = clustered(600, 24, 80, noise=1.0, seed=7)
    full = map_at_r(x, labels, chunk_size=len(x))
    assert map_at_r(x, labels, chunk_size=1) == pytest.approx(full, abs=1e-12)
    assert map_at_r(x, labels, chunk_size=77) == pytest.approx(full, abs=1e-12)
    assert map_at_r(x, labels, memory_budget=10_000) == pytest.approx(full, abs=1e-12)


def test_map_at_r_rejects_float_labels() -> None:
    with pytest.raises(ValueError, match="integer class labels"):
        map_at_r(on_circle([0, 10]), np.array([0.0, 0.0]))


def test_map_at_r_matches_pytorch_metric_learning() -> None:
    pytest.importorskip("pytorch_metric_learning")
    x, labels = clustered(1500, 48, 250, noise=1.0, seed=11)
    assert np.any(np.bincount(labels) == 1)  # lone queries are present and must be left out like PML does
    ours = map_at_r(x, labels)
    assert 0.2 < ours < 0.95
    assert ours == pytest.approx(pml_map_at_r(x, labels), abs=1e-9)
    q, ql, g, gl = x[:400], labels[:400], x[400:], labels[400:]
    assert not np.all(np.isin(ql, gl))
    assert map_at_r(q, ql, g, gl) == pytest.approx(pml_map_at_r(q, ql, g, gl, ref_includes_query=False), abs=1e-9)
