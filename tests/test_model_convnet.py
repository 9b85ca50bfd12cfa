"""The convnet path of the encoder: feature map -> MAC / SPoC / GeM / R-MAC -> [projection] -> L2 [-> PCA];
offline weights and their errors; resizing; train -> evaluate -> PCA -> index -> search -> serve end to end."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

import vitrieval
from vitrieval.config import ModelConfig, apply_overrides
from vitrieval.model import Encoder, PretrainedWeightsError, at_image_size
from vitrieval.pooling import gem, mac, rmac, spoc

RESNET = dict(name="resnet18", pretrained=False, image_size=64)


def resnet(**kw) -> Encoder:
    torch.manual_seed(0)
    return Encoder(ModelConfig(**{**RESNET, **kw})).eval()


@pytest.mark.parametrize("pooling", ["mac", "spoc", "gem", "rmac"])
def test_descriptor_is_the_l2_normalised_pooling_of_the_feature_map(pooling):
    enc = resnet(pooling=pooling)
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        fmap = enc.backbone.forward_features(x)
        z = enc(x)
    assert enc.family == "feature_map" and fmap.shape == (3, 512, 2, 2)
    ref = {"mac": mac, "spoc": spoc, "gem": gem, "rmac": rmac}[pooling](fmap)
    assert z.shape == (3, 512) and enc.descriptor_dim == 512
    assert torch.allclose(z, F.normalize(ref, dim=1), atol=1e-6)
    if pooling == "gem":  # p = 3 by hand
        hand = fmap.clamp(min=1e-6).pow(3).mean(dim=(2, 3)).pow(1 / 3)
        assert torch.allclose(z, F.normalize(hand, dim=1), atol=1e-5)


def test_vit_is_the_token_family():
    enc = Encoder(ModelConfig(name="deit_tiny_patch16_224", pretrained=False, image_size=32, patch_size=8))
    assert enc.family == "tokens" and type(enc.pool).__name__ == "TokenPooling"


def test_projection_and_learnable_gem_on_a_convnet_get_gradients():
    enc = resnet(pooling="gem", gem_learnable=True, projection_dim=32)
    assert enc.descriptor_dim == 32 and isinstance(enc.pool.gem.p, torch.nn.Parameter)
    enc.train()
    enc(torch.randn(4, 3, 64, 64)).sum().backward()
    assert enc.pool.gem.p.grad is not None and torch.isfinite(enc.pool.gem.p.grad)
    assert enc.projection.weight.grad is not None


@pytest.mark.parametrize(("name", "pooling", "match"), [
    ("resnet18", "cls", r"'cls' does not apply to resnet18, a feature-map \(convnet\) backbone; its poolings are "
                        r"mac, spoc, gem, rmac"),
    ("deit_tiny_patch16_224", "rmac", r"'rmac' does not apply to deit_tiny_patch16_224, a token \(ViT\) backbone; "
                                      r"its poolings are cls, avg, max, gem"),
])
def test_a_pooling_of_the_other_family_is_refused_naming_the_choices(name, pooling, match):
    with pytest.raises(ValueError, match=match):
        Encoder(ModelConfig(name=name, pretrained=False, image_size=32, pooling=pooling))


def test_vit_only_settings_on_a_convnet_are_refused():
    with pytest.raises(ValueError, match=r"model\.patch_size, model\.depth: only a ViT backbone takes these; "
                                         r"resnet18 is not one"):
        Encoder(ModelConfig(**RESNET, pooling="gem", patch_size=8, depth=2))


def test_offline_convnet_weights_load_through_pretrained_file(tmp_path):
    torch.manual_seed(3)
    source = timm.create_model("resnet18", pretrained=False)  # with its classifier, as a real checkpoint
    sd = {k: v.contiguous() for k, v in source.state_dict().items()}
    for ext in ("safetensors", "pth"):
        path = tmp_path / f"r18.{ext}"
        save_file(sd, str(path)) if ext == "safetensors" else torch.save({"state_dict": sd}, path)
        enc = Encoder(ModelConfig(**{**RESNET, "pooling": "gem", "pretrained": True, "pretrained_file": str(path)}))
        assert torch.equal(enc.backbone.conv1.weight, source.conv1.weight)
        assert torch.equal(enc.backbone.layer4[1].bn2.running_var, source.layer4[1].bn2.running_var)


def test_weights_of_a_vit_into_a_resnet_fail_naming_the_file(tmp_path):
    other = timm.create_model("deit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8)
    path = tmp_path / "deit.safetensors"
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(path))
    with pytest.raises(PretrainedWeightsError,
                       match=r"deit\.safetensors do not fit resnet18 .*missing key\(s\): bn1\.bias.*unexpected key"):
        Encoder(ModelConfig(**{**RESNET, "pooling": "gem", "pretrained": True, "pretrained_file": str(path)}))


def test_at_image_size_of_a_convnet_changes_only_the_preprocessing_on_a_copy():
    enc = resnet(pooling="gem")
    big = at_image_size(enc, 96)
    assert big is not enc and big.data_config["image_size"] == 96 and enc.data_config["image_size"] == 64
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        assert torch.equal(big(x), enc(x))  # same weights; a convnet takes any size


def test_save_load_round_trip_keeps_the_family_and_the_descriptor(tmp_path):
    enc = resnet(pooling="rmac")
    enc.save(tmp_path / "m")
    back = vitrieval.load(tmp_path / "m")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert back.family == "feature_map" and torch.equal(back(x), enc(x))
    assert json.loads((tmp_path / "m" / "config.json").read_text())["model"]["pooling"] == "rmac"


def test_convnet_end_to_end_train_evaluate_pca_index_search_serve(products_32, tmp_path):
    """cpu-tiny-resnet at 32 px on 16 generated identities: a few steps, then every command on the result."""
    from fastapi.testclient import TestClient

    from vitrieval.evaluation.pca_fit import PCAOptions
    from vitrieval.evaluation.protocol import ExtractionOptions, evaluate_model
    from vitrieval.index import Index
    from vitrieval.presets import load_preset
    from vitrieval.serve.app import create_app
    from vitrieval.training import train

    cfg = apply_overrides(load_preset("cpu-tiny-resnet"), [
        f"data.root={products_32}", "model.image_size=32", "train.batch_size=16", "train.iterations=6",
        "train.eval_every=0", "train.checkpoint_every=3", "train.log_every=2", "data.num_workers=0",
        "train.amp=off", "train.batchnorm=frozen"])
    out = tmp_path / "run"
    result = train(cfg, out, progress=False)
    assert result.iterations == 6 and 0.0 <= result.recall_at_k["1"] <= 1.0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["loss"]) for r in rows if "loss" in r)
    enc = vitrieval.load(out)
    assert enc.family == "feature_map" and enc.descriptor_dim == 512
    bn = enc.backbone.layer4[1].bn2  # train.batchnorm=frozen: the initial statistics, untouched by 6 steps
    assert torch.equal(bn.running_mean, torch.zeros_like(bn.running_mean)) and int(bn.num_batches_tracked) == 0

    res = evaluate_model(enc, "folder", products_32, ks=[1, 2], pca=PCAOptions(dim=16, save_to=tmp_path / "pca16"),
                         extraction=ExtractionOptions(batch_size=16, num_workers=0, progress=False))
    assert res["descriptor_dim"] == 16 and 0.0 <= res["recall_at_k"]["1"] <= 1.0
    reduced = vitrieval.load(tmp_path / "pca16")
    assert reduced.descriptor_dim == 16 and vitrieval.load(out).descriptor_dim == 512

    images = sorted(products_32.rglob("*.png"))[:12]
    index = Index.build(tmp_path / "pca16", images, tmp_path / "idx", factory="Flat", num_workers=0, progress=False)
    hits = index.search([images[0]], k=3)[0]
    assert len(index) == 12 and hits[0].path == str(images[0]) and hits[0].score == pytest.approx(1.0, abs=1e-4)

    client = TestClient(create_app(tmp_path / "idx"))
    health = client.get("/healthz").json()
    assert health["count"] == 12 and health["descriptor_dim"] == 16
    answer = client.post("/search", files={"file": ("q.png", images[0].read_bytes(), "image/png")},
                         params={"k": 2})
    assert answer.status_code == 200, answer.text
    assert answer.json()["results"][0]["path"] == images[0].relative_to(products_32).as_posix()  # under the root


def test_a_vit_file_missing_blocks_is_refused_not_half_loaded(tmp_path):
    """timm loads non-strictly once the classifier is dropped; a file that sets only some weights must stop."""
    shallow = timm.create_model("deit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=2)
    path = tmp_path / "two-blocks.safetensors"
    save_file({k: v.contiguous() for k, v in shallow.state_dict().items()}, str(path))
    with pytest.raises(PretrainedWeightsError, match=r"two-blocks\.safetensors do not fit deit_tiny_patch16_224 .*"
                                                     r"missing key\(s\): blocks\.10\."):
        Encoder(ModelConfig(name="deit_tiny_patch16_224", pretrained=True, pretrained_file=str(path), image_size=32,
                            patch_size=8))


@pytest.mark.parametrize(("preset", "millions"), [("table1-r50", 23), ("table1-r101", 46), ("table1-deit-s", 22),
                                                  ("table1-deit-s-distilled", 22), ("table1-deit-b", 87),
                                                  ("table1-deit-b-distilled", 87)])
def test_table1_presets_build_the_papers_backbones(preset, millions):
    """Parameters of each Table 1 backbone without its classifier (built on the meta device: no weights, no
    download), within 10 % of the paper's count (R101: 42.5M here vs the paper's 46M, the largest gap)."""
    from vitrieval.model import create_backbone
    from vitrieval.presets import load_preset

    cfg = dataclasses.replace(load_preset(preset).model, pretrained=False)
    with torch.device("meta"):
        backbone = create_backbone(cfg)
    count = sum(p.numel() for p in backbone.parameters()) / 1e6
    assert abs(count - millions) <= 0.1 * millions, count
    assert int(backbone.num_features) == (2048 if "r" in preset.split("-")[1] else 384 if "-s" in preset else 768)


def test_frozen_batchnorm_keeps_its_statistics_while_the_rest_trains():
    enc = resnet(pooling="gem")
    enc.batchnorm_frozen = True
    stats = enc.backbone.bn1.running_mean.clone()
    enc.train()
    assert enc.training and enc.backbone.layer1[0].conv1.training and not enc.backbone.bn1.training
    enc(torch.randn(4, 3, 64, 64)).sum().backward()
    assert torch.equal(enc.backbone.bn1.running_mean, stats) and enc.backbone.bn1.weight.grad is not None
    enc.batchnorm_frozen = False
    enc.train()
    assert enc.backbone.bn1.training
    enc(torch.randn(4, 3, 64, 64))
    assert not torch.equal(enc.backbone.bn1.running_mean, stats)
