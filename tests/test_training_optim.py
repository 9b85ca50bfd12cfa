"""training/optim.py: the parameter groups (weight-decay exemptions as timm / DeiT, GeM p at 10× lr as cirtorch, the
objective's parameters at their multiplier) and when SyncBatchNorm is used."""

from __future__ import annotations

import pytest
import torch

from vitrieval.config import apply_overrides
from vitrieval.model import Encoder
from vitrieval.presets import load_preset
from vitrieval.training.optim import make_optimizer, parameter_groups, uses_sync_batchnorm

TINY_VIT = ["model.image_size=32", "model.depth=1", "model.embed_dim=32", "model.num_heads=2"]


def _config(*overrides: str, preset: str = "cpu-tiny"):
    return apply_overrides(load_preset(preset), list(overrides))


def _names(encoder: torch.nn.Module, params: list[torch.nn.Parameter]) -> set[str]:
    ids = {id(p) for p in params}
    return {n for n, p in encoder.named_parameters() if id(p) in ids}


def test_default_groups_exempt_norms_biases_position_embedding_and_tokens():
    cfg = _config(*TINY_VIT, "model.name=deit_tiny_distilled_patch16_224", "model.projection_dim=8")
    encoder = Encoder(cfg.model)
    groups = parameter_groups(encoder, cfg)
    no_decay = set().union(*(_names(encoder, g["params"]) for g in groups if g["weight_decay"] == 0))
    decay = set().union(*(_names(encoder, g["params"]) for g in groups if g["weight_decay"] == cfg.train.weight_decay))
    # brute force: a parameter is exempt iff it is 1-d, a bias, or one of the ViT's token / position tensors
    expected = {n for n, p in encoder.named_parameters()
                if p.ndim <= 1 or n.endswith(".bias")
                or n in ("backbone.pos_embed", "backbone.cls_token", "backbone.dist_token")}
    assert {"backbone.pos_embed", "backbone.cls_token", "backbone.dist_token", "backbone.norm.weight",
            "projection.bias"} <= no_decay
    assert no_decay == expected
    assert decay == {n for n, _ in encoder.named_parameters()} - expected
    assert "projection.weight" in decay and "backbone.blocks.0.attn.qkv.weight" in decay


def test_without_the_exemption_every_parameter_decays():
    cfg = _config(*TINY_VIT, "train.weight_decay_exempt=false")
    encoder = Encoder(cfg.model)
    groups = parameter_groups(encoder, cfg)
    assert all(g["weight_decay"] == cfg.train.weight_decay for g in groups)
    assert sum(len(g["params"]) for g in groups) == len(list(encoder.parameters()))


def test_adamw_leaves_exempt_parameters_undecayed():
    """One AdamW step with zero gradients: exempt tensors stay put, the others shrink by exactly 1 − lr·wd."""
    cfg = _config(*TINY_VIT, "train.lr=0.01", "train.weight_decay=0.5")
    encoder = Encoder(cfg.model)
    before = {n: p.detach().clone() for n, p in encoder.named_parameters()}
    optimizer = make_optimizer(parameter_groups(encoder, cfg), cfg)
    for p in encoder.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    for name, p in encoder.named_parameters():
        exempt = p.ndim <= 1 or name in ("backbone.pos_embed", "backbone.cls_token")
        factor = 1.0 if exempt else 1 - 0.01 * 0.5
        torch.testing.assert_close(p.detach(), before[name] * factor, msg=name)


def test_sgd_is_heavy_ball_momentum_with_an_l2_penalty_linear_in_the_gradients():
    """``train.optimizer=sgd``: v_t = μ·v_{t-1} + (g_t + wd·w_{t-1}), w_t = w_{t-1} − lr·v_t (torch's SGD), checked
    by hand over two steps with constant gradients, on a decayed and on an exempt tensor."""
    lr, wd, mu = 0.1, 0.01, 0.9
    cfg = _config(*TINY_VIT, "train.optimizer=sgd", f"train.lr={lr}", f"train.weight_decay={wd}",
                  f"train.sgd_momentum={mu}")
    encoder = Encoder(cfg.model)
    optimizer = make_optimizer(parameter_groups(encoder, cfg), cfg)
    assert isinstance(optimizer, torch.optim.SGD)
    params = dict(encoder.named_parameters())
    weight, bias = params["backbone.blocks.0.attn.qkv.weight"], params["backbone.blocks.0.attn.qkv.bias"]
    grads = {n: torch.full_like(p, 0.5) for n, p in params.items()}
    expected = {}
    for name, decay in (("backbone.blocks.0.attn.qkv.weight", wd), ("backbone.blocks.0.attn.qkv.bias", 0.0)):
        w0 = params[name].detach().clone().double()
        v1 = grads[name].double() + decay * w0
        w1 = w0 - lr * v1
        v2 = mu * v1 + grads[name].double() + decay * w1
        expected[name] = w1 - lr * v2
    for _ in range(2):
        for name, p in params.items():
            p.grad = grads[name].clone()
        optimizer.step()
    torch.testing.assert_close(weight.detach().double(), expected["backbone.blocks.0.attn.qkv.weight"],
                               atol=1e-6, rtol=0)
    torch.testing.assert_close(bias.detach().double(), expected["backbone.blocks.0.attn.qkv.bias"], atol=1e-6, rtol=0)


def test_sgd_momentum_outside_zero_one_is_refused():
    with pytest.raises(ValueError, match="train.sgd_momentum"):
        _config("train.optimizer=sgd", "train.sgd_momentum=1.0").validate(check_model_registry=False)


def test_learnable_gem_p_trains_at_ten_times_the_lr_without_decay_and_proxies_at_their_multiplier():
    cfg = _config("model.gem_learnable=true", "train.lr=1e-4", preset="cpu-tiny-resnet")
    encoder = Encoder(cfg.model)
    proxies = torch.nn.Parameter(torch.randn(5, encoder.feature_dim))
    groups = parameter_groups(encoder, cfg, [proxies], objective_lr_multiplier=3.0)
    (p_param,) = [p for n, p in encoder.named_parameters() if n.startswith("pool.")]
    gem = [g for g in groups if any(p is p_param for p in g["params"])]
    assert len(gem) == 1 and len(gem[0]["params"]) == 1
    assert gem[0]["lr"] == pytest.approx(1e-3) and gem[0]["weight_decay"] == 0.0
    proxy_group = [g for g in groups if any(p is proxies for p in g["params"])]
    assert len(proxy_group) == 1 and proxy_group[0]["lr"] == pytest.approx(3e-4)
    assert sum(len(g["params"]) for g in groups) == len(list(encoder.parameters())) + 1
    optimizer = make_optimizer(groups, cfg)
    assert sorted(g["lr"] for g in optimizer.param_groups)[-1] == pytest.approx(1e-3)


def test_sync_batchnorm_only_for_several_ranks_on_a_gpu_with_batchnorm():
    resnet = Encoder(_config(preset="cpu-tiny-resnet").model)
    vit = Encoder(_config(*TINY_VIT).model)
    cuda = torch.device("cuda")
    assert uses_sync_batchnorm(resnet, 2, cuda, True)
    assert not uses_sync_batchnorm(resnet, 1, cuda, True)  # one process: nothing to synchronise
    assert not uses_sync_batchnorm(resnet, 2, cuda, False)  # train.sync_bn=false
    assert not uses_sync_batchnorm(vit, 2, cuda, True)  # LayerNorm only
    assert not uses_sync_batchnorm(resnet, 2, torch.device("cpu"), True)  # torch's SyncBatchNorm refuses CPU
    converted = torch.nn.SyncBatchNorm.convert_sync_batchnorm(resnet)
    assert converted is resnet and any(isinstance(m, torch.nn.SyncBatchNorm) for m in resnet.modules())
