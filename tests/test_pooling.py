"""Feature-map poolings (MAC, SPoC, GeM, R-MAC) against plain references; TokenPooling unchanged."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vitrieval.pooling import FeatureMapPooling, GeM, TokenPooling, gem, mac, rmac, rmac_regions, spoc


def feature_map(b, c, h, w, seed=0, dtype=torch.float64):
    """A ReLU-like map: positive, without ties (so max and its gradient are well defined)."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, c, h, w, generator=g, dtype=dtype) + 0.05


# -- R-MAC against a region-by-region reference -------------------------------------------------------------------

def reference_rmac(x: np.ndarray, levels: int = 3, eps: float = 1e-6) -> np.ndarray:
    """R-MAC written out from the spec, region by region, in float64 numpy.

    - whole map: one L2-normalised MAC;
    - level l = 1..L: square regions of side floor(2·min(H, W)/(l + 1)); l regions along the shorter side and
      l + extra along the longer one, where extra = s - 1 for the s in 2..7 whose level-1 neighbours (shifted by
      (long - short)/(s - 1)) overlap closest to 40 % of the side; along a side of n cells, the k regions start at
      floor(i·(n - side)/(k - 1)); a level with side 0 has no region;
    - the sum of all the L2-normalised MACs, not normalised again.
    """
    _, _, h, w = x.shape
    short, long = min(h, w), max(h, w)
    extra = 0
    if h != w:
        distance_to_40 = [abs((1.0 - (long - short) / (s - 1) / short) - 0.4) for s in range(2, 8)]
        extra = int(np.argmin(distance_to_40)) + 1
    n_rows_extra = extra if h > w else 0
    n_cols_extra = extra if w > h else 0

    def l2n(v):
        return v / (np.sqrt((v * v).sum(axis=1, keepdims=True)) + eps)

    def starts(n, side, k):
        if k == 1:
            return [0]
        return [math.floor(i * (n - side) / (k - 1)) for i in range(k)]

    total = l2n(x.max(axis=(2, 3)))
    for level in range(1, levels + 1):
        side = math.floor(2 * short / (level + 1))
        if side == 0:
            continue
        for top in starts(h, side, level + n_rows_extra):
            for left in starts(w, side, level + n_cols_extra):
                region = x[:, :, top:top + side, left:left + side]
                assert region.shape[2:] == (side, side)
                total = total + l2n(region.max(axis=(2, 3)))
    return total


SHAPES = [(7, 7), (7, 10), (12, 9), (5, 16), (2, 5), (1, 1), (1, 9), (9, 1), (3, 3), (14, 10)]


@pytest.mark.parametrize(("h", "w"), SHAPES)
def test_rmac_matches_region_by_region_reference(h, w):
    x = feature_map(3, 6, h, w, seed=h * 100 + w)
    got = rmac(x)
    assert got.shape == (3, 6) and got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), reference_rmac(x.numpy()), rtol=1e-12, atol=1e-12)
    # float32 input: same up to float32 precision, returned as float32
    got32 = rmac(x.float())
    assert got32.dtype == torch.float32
    np.testing.assert_allclose(got32.double().numpy(), reference_rmac(x.numpy()), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("levels", [0, 1, 2, 4, 5])
def test_rmac_other_numbers_of_levels_match_reference(levels):
    x = feature_map(2, 4, 11, 16, seed=levels)
    np.testing.assert_allclose(rmac(x, levels=levels).numpy(), reference_rmac(x.numpy(), levels), rtol=1e-12)


def test_rmac_region_layouts_by_hand():
    # 7 x 7 (a ResNet at 224 px): square, no extra regions; sides 7, 4, 3
    assert rmac_regions(7, 7) == (
        (0, 0, 7),
        (0, 0, 4), (0, 3, 4), (3, 0, 4), (3, 3, 4),
        (0, 0, 3), (0, 2, 3), (0, 4, 3), (2, 0, 3), (2, 2, 3), (2, 4, 3), (4, 0, 3), (4, 2, 3), (4, 4, 3),
    )
    # 7 x 10: s = 2 level-1 regions (shift 3, overlap 4/7 = 0.57) is closest to 40 %, so one extra column
    # everywhere: 2 regions at level 1, 2 x 3 at level 2 (side 4), 3 x 4 at level 3 (side 3, column starts
    # floor(i·7/3) = 0, 2, 4, 7)
    assert rmac_regions(7, 10) == (
        (0, 0, 7), (0, 3, 7),
        (0, 0, 4), (0, 3, 4), (0, 6, 4), (3, 0, 4), (3, 3, 4), (3, 6, 4),
        (0, 0, 3), (0, 2, 3), (0, 4, 3), (0, 7, 3), (2, 0, 3), (2, 2, 3), (2, 4, 3), (2, 7, 3),
        (4, 0, 3), (4, 2, 3), (4, 4, 3), (4, 7, 3),
    )
    # the transpose lays the extra regions along the rows
    assert sorted(rmac_regions(10, 7)) == sorted((left, top, s) for top, left, s in rmac_regions(7, 10))
    # 2 x 5: 3 extra columns (s = 4, overlap 0.5); levels 2 and 3 have side 1 and repeated starts
    # (level 3 rows floor(i/2) = 0, 0, 1 and columns floor(4i/5) = 0, 0, 1, 2, 3, 4), each repeat counted
    regions = rmac_regions(2, 5)
    assert [r for r in regions if r[2] == 2] == [(0, 0, 2), (0, 1, 2), (0, 2, 2), (0, 3, 2)]
    assert len([r for r in regions if r[2] == 1]) == 2 * 5 + 3 * 6
    assert regions.count((0, 0, 1)) == 1 + 2 * 2  # level 2 once; level 3: row start 0 twice x column start 0 twice


def test_rmac_degenerate_maps_skip_levels_of_side_zero():
    """A 1 x N map: level 1 has side 1, levels >= 2 would have side floor(2/(l+1)) = 0 and are skipped."""
    assert rmac_regions(1, 1) == ((0, 0, 1),)
    # 1 x 9: s = 7 level-1 regions (shift 4/3) is closest to 40 %; starts floor(4i/3)
    assert rmac_regions(1, 9) == tuple((0, left, 1) for left in (0, 1, 2, 4, 5, 6, 8))
    assert rmac_regions(9, 1) == tuple((top, 0, 1) for top in (0, 1, 2, 4, 5, 6, 8))
    # so a 1 x 1 map is twice its normalised value (whole map + the level-1 region)
    x = feature_map(2, 5, 1, 1)
    v = x[:, :, 0, 0]
    torch.testing.assert_close(rmac(x), 2 * v / (v.norm(dim=1, keepdim=True) + 1e-6))
    # a 2 x 2 map (64 px into a ResNet) still has all three levels: sides 2, 1, 1
    assert [s for _, _, s in rmac_regions(2, 2)] == [2] + [1] * 4 + [1] * 9


def test_rmac_layouts_where_cirtorchs_float32_arithmetic_decides():
    """The layout follows cirtorch's float32 evaluation also where exact arithmetic would differ.

    - 6 x 22: s = 5 and s = 6 level-1 regions are both exactly 1/15 from 40 % overlap; cirtorch's float32
      values pick s = 6 (5 extra columns), where a first-on-tie exact rule would pick s = 5.
    - 3 x 64, level 2 (side 2, 8 columns): the last start is 62 = 7 · 62/7 exactly, but float32 computes
      7 · 8.857143 just below 62 and floors it to 61 (the region then misses the last column), as in cirtorch.
    """
    level1 = [r for r in rmac_regions(6, 22) if r[2] == 6]
    assert len(level1) == 6
    level2 = [r for r in rmac_regions(3, 64) if r[2] == 2]
    assert len(level2) == 2 * 8 and (0, 61, 2) in level2 and (0, 62, 2) not in level2


def test_rmac_regions_lie_inside_every_map():
    for h in range(1, 41):
        for w in range(1, 41):
            regions = rmac_regions(h, w)
            assert regions, (h, w)
            assert sum(1 for r in regions if r[2] == min(h, w)) >= 1  # level 1 always present
            for top, left, side in regions:
                assert side >= 1 and 0 <= top and top + side <= h and 0 <= left and left + side <= w, (h, w)


def test_rmac_constant_map_hand_value_and_no_final_normalisation():
    """On a constant map every MAC is the same vector, so R-MAC is (1 + #regions) unit vectors: not normalised."""
    c = 16
    x = torch.full((1, c, 7, 7), 2.5, dtype=torch.float64)
    n_regions = 1 + 4 + 9  # the whole map is counted again as level 1's only region
    expected = (1 + n_regions) * (2.5 / (2.5 * math.sqrt(c) + 1e-6))
    torch.testing.assert_close(rmac(x), torch.full((1, c), expected, dtype=torch.float64))
    assert float(rmac(x).norm()) == pytest.approx(15.0, rel=1e-6)


def test_rmac_gradcheck_float64_and_finite_on_zero_regions():
    x = feature_map(2, 3, 5, 4, seed=3).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: rmac(t), (x,))
    # a map that is zero except one cell: most regions have a zero MAC (norm 0): gradient stays finite
    z = torch.zeros(1, 4, 6, 6, dtype=torch.float64)
    z[0, :, 0, 0] = 1.0
    z.requires_grad_()
    rmac(z).sum().backward()
    assert torch.isfinite(z.grad).all()


# -- MAC, SPoC, GeM ------------------------------------------------------------------------------------------------

def test_mac_spoc_gem_hand_values():
    x = torch.tensor([[[[1.0, 8.0]], [[2.0, 2.0]]]], dtype=torch.float64)  # (1, 2, 1, 2)
    torch.testing.assert_close(mac(x), torch.tensor([[8.0, 2.0]], dtype=torch.float64))
    torch.testing.assert_close(spoc(x), torch.tensor([[4.5, 2.0]], dtype=torch.float64))
    torch.testing.assert_close(gem(x), torch.tensor([[(513 / 2) ** (1 / 3), 2.0]], dtype=torch.float64))
    # negative activations are clamped to eps before the power
    neg = torch.tensor([[[[-1.0, 1.0]]]], dtype=torch.float64)
    assert float(gem(neg, p=1.0)) == pytest.approx((1e-6 + 1.0) / 2)


def test_gem_limits_spoc_and_mac():
    x = feature_map(3, 5, 4, 6, seed=7)
    torch.testing.assert_close(gem(x, p=1.0), spoc(x))
    # p -> infinity: (mean x^p)^(1/p) -> max; with 24 cells the gap is at most 24^(-1/p)
    big = gem(x, p=1000.0)
    assert torch.all(big <= mac(x) + 1e-12) and torch.all(big >= mac(x) * 24 ** (-1 / 1000) - 1e-12)
    assert torch.all(gem(x, p=3.0) >= spoc(x)) and torch.all(gem(x, p=3.0) <= mac(x))  # power-mean inequality


def test_gem_gradcheck_float64_in_x_and_p():
    x = feature_map(2, 3, 3, 4, seed=8).requires_grad_()
    p = torch.tensor(2.7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t, q: gem(t, q), (x, p))


def test_low_precision_inputs_pool_in_float32():
    x = feature_map(2, 8, 7, 10, seed=9, dtype=torch.float32)
    xb = x.to(torch.bfloat16)
    for fn in (gem, rmac):
        out = fn(xb)
        assert out.dtype == torch.bfloat16
        torch.testing.assert_close(out.float(), fn(xb.float()), rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("fn", [mac, spoc, gem, rmac])
def test_poolings_reject_non_maps(fn):
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        fn(torch.ones(2, 3, 4))


# -- the module ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("kind", "fn"), [("mac", mac), ("spoc", spoc), ("gem", gem), ("rmac", rmac)])
def test_feature_map_pooling_is_the_function(kind, fn):
    x = feature_map(2, 6, 5, 7, seed=10, dtype=torch.float32)
    torch.testing.assert_close(FeatureMapPooling(kind)(x), fn(x))


def test_feature_map_pooling_options_and_errors():
    x = feature_map(2, 6, 5, 7, seed=11, dtype=torch.float32)
    torch.testing.assert_close(FeatureMapPooling("rmac", rmac_levels=2)(x), rmac(x, levels=2))
    torch.testing.assert_close(FeatureMapPooling("gem", gem_p=4.0)(x), gem(x, p=4.0))
    # GeM on the map equals the token GeM on the map's cells taken as tokens
    tokens = x.flatten(2).transpose(1, 2)  # (B, HW, C)
    torch.testing.assert_close(FeatureMapPooling("gem")(x), GeM()(tokens))
    with pytest.raises(ValueError, match="mac, spoc, gem, rmac"):
        FeatureMapPooling("cls")


def test_feature_map_gem_learnable_p_is_a_parameter_that_learns():
    pool = FeatureMapPooling("gem", gem_p=3.0, gem_learnable=True)
    assert [name for name, _ in pool.named_parameters()] == ["gem.p"]
    pool(feature_map(2, 4, 3, 3, seed=12, dtype=torch.float32)).sum().backward()
    assert pool.gem.p.grad is not None and torch.isfinite(pool.gem.p.grad)
    fixed = FeatureMapPooling("gem")
    assert list(fixed.parameters()) == [] and "gem.p" in fixed.state_dict()


# -- TokenPooling: unchanged ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("num_prefix", [1, 2])
def test_token_pooling_unchanged(num_prefix):
    tokens = torch.randn(3, 10, 8, generator=torch.Generator().manual_seed(13))
    patches = tokens[:, num_prefix:]
    expected = {
        "cls": tokens[:, 0],
        "avg": patches.mean(1),
        "max": patches.amax(1),
        "gem": patches.clamp(min=1e-6).pow(3).mean(1).pow(1 / 3),
    }
    for kind, want in expected.items():
        torch.testing.assert_close(TokenPooling(kind, num_prefix)(tokens), want)
    learnable = TokenPooling("gem", num_prefix, gem_p=2.0, gem_learnable=True)
    assert [name for name, _ in learnable.named_parameters()] == ["gem.p"]
    with pytest.raises(ValueError, match="cls, avg, max, gem"):
        TokenPooling("rmac", num_prefix)
    with pytest.raises(ValueError, match="class token"):
        TokenPooling("cls", 0)
