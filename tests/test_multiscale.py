"""MultiScaleEncoder: one scale is the plain encoder; several are the re-normalised mean of single-scale runs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vitrieval.config import ModelConfig
from vitrieval.model import Encoder, at_image_size
from vitrieval.multiscale import MultiScaleEncoder, parse_scales

TINY = dict(name="deit_tiny_patch16_224", pretrained=False, image_size=32, patch_size=8, depth=2)


@pytest.fixture(scope="module")
def encoder() -> Encoder:
    torch.manual_seed(0)
    return Encoder(ModelConfig(**TINY)).eval()


def resized(x: torch.Tensor, size: int) -> torch.Tensor:
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


@torch.no_grad()
def test_scale_one_is_the_plain_encoder(encoder):
    x = torch.randn(3, 3, 32, 32)
    ms = MultiScaleEncoder(encoder, (1,))
    torch.testing.assert_close(ms(x), encoder(x), atol=1e-6, rtol=0)
    assert ms.data_config is encoder.data_config and ms.descriptor_dim == encoder.descriptor_dim


@torch.no_grad()
def test_two_scales_are_the_renormalised_mean_of_two_single_scale_runs(encoder):
    """Scale 0.5 of a 32 px batch: 16 px (two 8 px patches a side) through a copy with resampled positions."""
    x = torch.randn(4, 3, 32, 32)
    half = at_image_size(encoder, 16)(resized(x, 16))
    expected = F.normalize((encoder(x) + half) / 2, dim=-1)
    got = MultiScaleEncoder(encoder, (1.0, 0.5))(x)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
    assert not torch.allclose(got, encoder(x), atol=1e-3)  # the second scale changes the descriptor
    assert int(encoder.data_config["image_size"]) == 32  # the wrapped encoder is untouched


@torch.no_grad()
def test_vit_sizes_round_to_the_patch_grid_and_the_cirtorch_scales_run(encoder):
    ms = MultiScaleEncoder(encoder, (1, 0.707, 0.5))
    assert ms.scaled_size(32, 32, 0.707) == (24, 24) and ms.scaled_size(32, 32, 0.1) == (8, 8)
    x = torch.randn(2, 3, 32, 32)
    expected = F.normalize(encoder(x) + at_image_size(encoder, 24)(resized(x, 24))
                           + at_image_size(encoder, 16)(resized(x, 16)), dim=-1)
    torch.testing.assert_close(ms(x), expected, atol=1e-6, rtol=0)


@torch.no_grad()
def test_a_convnet_takes_the_scaled_batch_directly():
    class Conv(torch.nn.Module):  # stands in for a feature-map backbone: any input size
        data_config = {"image_size": 20}
        feature_dim = descriptor_dim = 4

        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3)

        def forward(self, x):
            return F.normalize(self.conv(x).mean(dim=(2, 3)), dim=-1)

        def reduce(self, z):
            return z

    torch.manual_seed(0)
    net = Conv().eval()
    x = torch.randn(2, 3, 20, 30)
    got = MultiScaleEncoder(net, (1, 0.5))(x)
    small = F.interpolate(x, size=(10, 15), mode="bilinear", align_corners=False, antialias=True)
    torch.testing.assert_close(got, F.normalize(net(x) + net(small), dim=-1), atol=1e-6, rtol=0)


def test_extract_runs_unchanged_through_the_wrapper(encoder, tmp_path):
    """``embed.extract`` with the wrapper gives the wrapper's forward on the pre-processed images."""
    from PIL import Image

    from vitrieval.data.collection import collection_table
    from vitrieval.data.transforms import eval_transform
    from vitrieval.embed import ExtractionOptions, extract

    rng = np.random.default_rng(0)
    paths = []
    for i in range(5):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(paths[-1])
    table = collection_table([str(p) for p in paths])
    ms = MultiScaleEncoder(encoder, (1, 0.5))
    got = extract(ms, table, ExtractionOptions(batch_size=2, num_workers=0, amp="off", resize="square", progress=False))
    transform = eval_transform(encoder.data_config, "square")
    batch = torch.stack([transform(Image.open(p).convert("RGB")) for p in paths])
    with torch.no_grad():
        expected = ms(batch).numpy()
    assert got.indices.tolist() == list(range(5))
    np.testing.assert_allclose(got.descriptors, expected, atol=1e-5)
    with torch.no_grad():
        assert not np.allclose(got.descriptors, encoder(batch).numpy(), atol=1e-3)


def test_parse_scales():
    assert parse_scales("1, 0.707,0.5") == (1.0, 0.707, 0.5)
    assert parse_scales([1, 1, 0.5]) == (1.0, 0.5)
    for bad in ("", "1,x", "1,-0.5", "0"):
        with pytest.raises(ValueError):
            parse_scales(bad)
