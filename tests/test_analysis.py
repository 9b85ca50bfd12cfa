"""``vitrieval analyze``: PCA energy, pair counts and histograms against independent numpy computations; Table 1's
cost measurement against a hand count."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from vitrieval.analyze.descriptors import components_for, cumulative_energy, pair_histograms


def _brute_histograms(z: np.ndarray, pairs: list[tuple[int, int, bool]], other: np.ndarray | None = None,
                      bins: int = 200) -> tuple[np.ndarray, np.ndarray]:
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    o = z if other is None else other / np.linalg.norm(other, axis=1, keepdims=True)
    edges = np.linspace(-1, 1, bins + 1)
    pos = [float(z[i] @ o[j]) for i, j, p in pairs if p]
    neg = [float(z[i] @ o[j]) for i, j, p in pairs if not p]
    return np.histogram(pos, edges)[0], np.histogram(neg, edges)[0]


@pytest.mark.parametrize(("n", "d"), [(50, 8), (6, 10)])
def test_cumulative_energy_is_the_covariance_spectrum(n: int, d: int) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, d)) * np.linspace(3, 0.1, d)
    ev = np.sort(np.linalg.eigvalsh(np.cov(x.T)))[::-1][: min(n, d)]
    expected = np.cumsum(ev) / np.linalg.eigvalsh(np.cov(x.T)).sum()
    energy = cumulative_energy(x)
    assert len(energy) == min(n, d) and energy[-1] == 1.0
    np.testing.assert_allclose(energy, expected, atol=1e-9)
    assert components_for(energy, 0.9) == int(np.argmax(expected >= 0.9 - 1e-12)) + 1


def test_leave_one_out_counts_every_unordered_pair_once() -> None:
    rng = np.random.default_rng(1)
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 3])
    z = rng.normal(size=(10, 5))
    res = pair_histograms(z, labels, block=3)  # blocks of 3 rows: pairs across block borders counted once
    pairs = [(i, j, bool(labels[i] == labels[j])) for i in range(10) for j in range(i + 1, 10)]
    assert res["positive_pairs"] == 3 + 1 + 6 == sum(p for *_, p in pairs)
    assert res["negative_pairs"] == 45 - 10
    pos, neg = _brute_histograms(z, pairs)
    assert res["positive_counts"] == pos.tolist() and res["negative_counts"] == neg.tolist()
    zn = z / np.linalg.norm(z, axis=1, keepdims=True)
    assert res["positive_mean"] == pytest.approx(np.mean([zn[i] @ zn[j] for i, j, p in pairs if p]), abs=1e-6)


def test_query_gallery_counts_every_query_gallery_pair() -> None:
    rng = np.random.default_rng(2)
    labels = np.array([0, 1, 2, 0, 0, 1, 2, 2, 3])
    is_q = np.array([1, 1, 1, 0, 0, 0, 0, 0, 0], bool)
    z = rng.normal(size=(9, 4))
    res = pair_histograms(z, labels, protocol="query-gallery", is_query=is_q, is_gallery=~is_q, block=2)
    assert (res["positive_pairs"], res["negative_pairs"]) == (2 + 1 + 2, 3 * 6 - 5)
    q, g = np.flatnonzero(is_q), np.flatnonzero(~is_q)
    pairs = [(a, b, bool(labels[q[a]] == labels[g[b]])) for a in range(3) for b in range(6)]
    pos, neg = _brute_histograms(z[q], pairs, z[g])
    assert res["positive_counts"] == pos.tolist() and res["negative_counts"] == neg.tolist()


def test_revisited_medium_leaves_junk_out() -> None:
    rng = np.random.default_rng(3)
    z = rng.normal(size=(2 + 8, 6))
    is_q = np.array([True, True] + [False] * 8)
    gnd = [{"easy": [0, 1], "hard": [2], "junk": [3, 4]}, {"easy": [], "hard": [5], "junk": []}]
    res = pair_histograms(z, protocol="revisited", is_query=is_q, is_gallery=~is_q, gnd=gnd)
    assert res["protocol"] == "revisited (medium)"
    assert (res["positive_pairs"], res["negative_pairs"]) == (3 + 1, (8 - 3 - 2) + (8 - 1))
    pairs = [(0, j, j in (0, 1, 2)) for j in range(8) if j not in (3, 4)] + [(1, j, j == 5) for j in range(8)]
    pos, neg = _brute_histograms(z[:2], pairs, z[2:])
    assert res["positive_counts"] == pos.tolist() and res["negative_counts"] == neg.tolist()


def test_overlap_is_the_histogram_intersection() -> None:
    same = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    res = pair_histograms(same, np.array([0, 0, 1, 1]))  # every pair has cosine 1: identical distributions
    assert res["overlap"] == pytest.approx(1.0)
    apart = np.array([[1.0, 0.0], [1.0, 0.0], [-1.0, 0.0], [-1.0, 0.0]])
    res = pair_histograms(apart, np.array([0, 0, 1, 1]))  # positives at +1; negatives at -1
    assert res["overlap"] == 0.0 and res["negative_mean"] == pytest.approx(-1.0)


def test_cli_analyze_two_models_on_a_folder(products_32: Path, tmp_path: Path) -> None:
    import torch

    from vitrieval.cli import main
    from vitrieval.config import ModelConfig
    from vitrieval.data.readers import read_dataset
    from vitrieval.model import Encoder

    for seed in (0, 1):
        torch.manual_seed(seed)
        Encoder(ModelConfig(name="deit_tiny_patch16_224", pretrained=False, image_size=32, patch_size=8,
                            depth=1, embed_dim=64, num_heads=2)).save(tmp_path / f"m{seed}")
    out = tmp_path / "an"
    assert main(["analyze", "--checkpoint", str(tmp_path / "m0"), "--checkpoint", str(tmp_path / "m1"),
                 "--dataset", "folder", "--data-root", str(products_32), "--output", str(out), "--workers", "0",
                 "--no-progress"]) == 0
    data = json.loads((out / "analysis.json").read_text())
    test = read_dataset("folder", products_32).split("test")
    sizes = np.bincount(test.labels)
    n = len(test)
    assert list(data["models"]) == ["m0", "m1"]
    for m in data["models"].values():
        assert m["protocol"] == "leave-one-out" and m["num_images"] == n
        assert m["positive_pairs"] == int((sizes * (sizes - 1) // 2).sum())
        assert m["positive_pairs"] + m["negative_pairs"] == n * (n - 1) // 2
        assert m["cumulative_energy"][-1] == 1.0 and len(m["cumulative_energy"]) == min(n, 64)
        assert 0.0 <= m["overlap"] <= 1.0
    page = (out / "analysis.html").read_text()
    assert page.count("data:image/png;base64,") == 2 and "<script" not in page



def test_cli_analyze_full_decode_reaches_the_extraction(products_32: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """``analyze --full-decode`` embeds with ``fast_decode=False`` (default: fast decoding, as evaluate)."""
    import torch

    import vitrieval.analyze.models as models
    from vitrieval.cli import main
    from vitrieval.config import ModelConfig
    from vitrieval.model import Encoder

    torch.manual_seed(0)
    Encoder(ModelConfig(name="deit_tiny_patch16_224", pretrained=False, image_size=32, patch_size=8,
                        depth=1, embed_dim=64, num_heads=2)).save(tmp_path / "m")
    seen: list[bool] = []
    real = models.extract_all
    monkeypatch.setattr(models, "extract_all", lambda *a, **k: seen.append(a[2].fast_decode) or real(*a, **k))
    base = ["analyze", "--checkpoint", str(tmp_path / "m"), "--dataset", "folder", "--data-root", str(products_32),
            "--workers", "0", "--no-progress"]
    assert main([*base, "--output", str(tmp_path / "fast")]) == 0
    assert main([*base, "--output", str(tmp_path / "full"), "--full-decode"]) == 0
    assert seen == [True, False]


def test_cost_counts_parameters_and_flops_by_hand(tmp_path: Path) -> None:
    from vitrieval.analyze.cost import measure
    from vitrieval.config import ModelConfig

    depth, dim, patch, size = 2, 64, 8, 32
    cfg = ModelConfig(name="deit_tiny_patch16_224", pretrained=False, image_size=size, patch_size=patch,
                      depth=depth, embed_dim=dim, num_heads=2)
    res = measure(cfg, batch_size=2, repeats=1)
    tokens = (size // patch) ** 2 + 1
    block_params = 12 * dim * dim + 13 * dim  # qkv, proj, MLP (4x) weights and biases, two LayerNorms
    embed_params = 3 * patch * patch * dim + dim + dim + tokens * dim  # patch conv, CLS token, position embedding
    assert res["params"] == depth * block_params + embed_params + 2 * dim  # + the final LayerNorm
    linear = 2 * tokens * 12 * dim * dim * depth
    attention = 2 * 2 * tokens * tokens * dim * depth  # q k^T and attn v
    patch_embed = 2 * (size // patch) ** 2 * 3 * patch * patch * dim
    assert res["flops"] == linear + attention + patch_embed
    assert res["gflops_without_attention"] * 1e9 == pytest.approx(linear + patch_embed)  # the paper's count
    assert res["images_per_s"] > 0 and res["image_size"] == size


def test_gradient_noise_is_the_nuclear_norm_of_the_direction_covariance() -> None:
    import torch

    from vitrieval.analyze.gradient_noise import gradient_directions, gradient_noise

    rng = np.random.default_rng(4)
    z = rng.normal(size=(12, 6))
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    y = np.repeat(np.arange(4), 3)
    beta = 0.1
    # Eq. 1 by hand: dL/dz_k = 2/N [ -sum_{j in P(k)} z_j + sum_{j in N(k), s_kj > beta} z_j ]
    s = z @ z.T
    grad = np.zeros_like(z)
    for k in range(12):
        for j in range(12):
            if j != k and y[j] == y[k]:
                grad[k] -= z[j]
            elif y[j] != y[k] and s[k, j] > beta:
                grad[k] += z[j]
    grad *= 2 / 12
    directions = grad / np.linalg.norm(grad, axis=1, keepdims=True)
    got = gradient_directions(torch.from_numpy(z), torch.from_numpy(y), beta).numpy()
    np.testing.assert_allclose(got, directions, atol=1e-9)
    cov = np.cov(directions.T, bias=True)
    expected = np.linalg.svd(cov, compute_uv=False).sum()
    gamma = gradient_noise(torch.from_numpy(z), torch.from_numpy(y), beta)
    assert gamma == pytest.approx(expected, abs=1e-9)
    assert gamma == pytest.approx(1 - np.linalg.norm(directions.mean(0)) ** 2, abs=1e-9)


def test_cli_analyze_with_pca_reduces_by_a_pca_fitted_on_the_training_split(products_32: Path, tmp_path: Path) -> None:
    """``--pca 8`` (Fig 5 uses 256): each model's test descriptors are L2(PCA(pooled)), the PCA fitted on the
    *training* split's pooled vectors (numpy's eigenvectors here), before the energies and histograms; bad options
    are one-line errors."""
    import torch

    from vitrieval.cli import main
    from vitrieval.config import ModelConfig
    from vitrieval.data.readers import read_dataset
    from vitrieval.embed import ExtractionOptions, extract
    from vitrieval.model import Encoder

    torch.manual_seed(0)
    encoder = Encoder(ModelConfig(name="deit_tiny_patch16_224", pretrained=False, image_size=32, patch_size=8,
                                  depth=1, embed_dim=64, num_heads=2, pooling="avg"))
    encoder.save(tmp_path / "m")
    out = tmp_path / "an"
    assert main(["analyze", "--checkpoint", str(tmp_path / "m"), "--dataset", "folder", "--data-root",
                 str(products_32), "--pca", "8", "--output", str(out), "--workers", "0", "--amp", "off",
                 "--no-progress"]) == 0
    entry = json.loads((out / "analysis.json").read_text())["models"]["m"]
    assert entry["descriptor_dim"] == 8 and entry["pca"] == {"dim": 8, "whiten": False, "fitted_on": "folder/train"}

    table = read_dataset("folder", products_32)
    opts = ExtractionOptions(num_workers=0, amp="off", output="pooled", progress=False)
    train = extract(encoder, table.split("train"), opts).descriptors.astype(np.float64)
    test = extract(encoder, table.split("test"), opts).descriptors.astype(np.float64)
    mu = train.mean(axis=0)
    eigval, eigvec = np.linalg.eigh(np.cov((train - mu).T, bias=True))
    y = (test - mu) @ eigvec[:, np.argsort(eigval)[::-1][:8]]
    z = y / np.linalg.norm(y, axis=1, keepdims=True)
    ev = np.sort(np.linalg.eigvalsh(np.cov(z.T)))[::-1]
    np.testing.assert_allclose(entry["cumulative_energy"], np.cumsum(ev) / ev.sum(), atol=1e-4)
    test_labels = table.split("test").labels
    pairs = [(i, j, test_labels[i] == test_labels[j]) for i in range(len(z)) for j in range(i + 1, len(z))]
    pos, neg = _brute_histograms(z, pairs, bins=200)
    assert entry["positive_pairs"] == int(pos.sum()) and entry["negative_pairs"] == int(neg.sum())
    assert np.abs(np.asarray(entry["positive_counts"]) - pos).sum() <= 2  # float32 vs float64 at bin edges
    assert np.abs(np.asarray(entry["negative_counts"]) - neg).sum() <= 2

    assert main(["analyze", "--checkpoint", str(tmp_path / "m"), "--dataset", "folder", "--data-root",
                 str(products_32), "--pca", "0", "--output", str(out)]) == 2
    assert main(["analyze", "--checkpoint", str(tmp_path / "m"), "--dataset", "folder", "--data-root",
                 str(products_32), "--pca-fit-dataset", "sop", "--pca-fit-root", str(products_32),
                 "--output", str(out)]) == 2
