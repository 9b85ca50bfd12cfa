"""Configuration: presets load, overrides are typed, unknown keys and wrong types are named."""

from __future__ import annotations

import pytest

from vitrieval.config import Config, apply_overrides, config_from_dict, load_config, valid_keys
from vitrieval.presets import list_presets, load_preset

PAPER = {"sop": (35000, 59551, 0.0), "cub": (2000, 5864, 0.0), "inshop": (35000, 5176, 0.999)}


def test_every_paper_recipe_is_a_preset_with_the_paper_hyper_parameters():
    names = list_presets()
    for ds, (iters, mem, momentum) in PAPER.items():
        for var, lam in (("irt-l", 0.0), ("irt-r", 0.7)):
            for bb, arch in (("deit-s", "deit_small_patch16_224"),
                             ("deit-s-distilled", "deit_small_distilled_patch16_224"),
                             ("deit-b", "deit_base_patch16_224")):
                cfg = load_preset(f"{ds}-{var}-{bb}")
                assert f"{ds}-{var}-{bb}" in names
                assert (cfg.model.name, cfg.data.dataset, cfg.train.iterations) == (arch, ds, iters)
                assert (cfg.memory.size, cfg.memory.momentum, cfg.loss.koleo_weight) == (mem, momentum, lam)
                assert (cfg.train.lr, cfg.train.weight_decay, cfg.train.batch_size, cfg.loss.margin) == \
                    (3e-5, 5e-4, 64, 0.5)


def test_cpu_tiny_preset_is_small():
    cfg = load_preset("cpu-tiny")
    assert cfg.model.name.startswith("deit_tiny") and cfg.model.image_size <= 64 and cfg.train.batch_size == 32
    assert (cfg.model.image_size // cfg.model.patch_size) ** 2 == 64


def test_overrides_are_parsed_and_typed():
    cfg = apply_overrides(Config(), ["train.iterations=12", "loss.koleo_weight=0.7", "model.pooling=gem",
                                     "train.eval_ks=[1, 5]", "model.pretrained_file=null", "train.lr=1",
                                     "train.weight_decay=5e-4", "train.amp=off", "data.root=123",
                                     "model.name='vit_small'"])
    assert cfg.model.name == "vit_small"
    assert cfg.train.amp == "off" and cfg.data.root == "123"
    assert cfg.train.weight_decay == 5e-4
    assert cfg.train.iterations == 12 and cfg.loss.koleo_weight == 0.7 and cfg.model.pooling == "gem"
    assert cfg.train.eval_ks == [1, 5] and cfg.model.pretrained_file is None
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)


def test_unknown_key_lists_the_valid_keys():
    with pytest.raises(KeyError, match="train.iteratons.*valid keys:.*train.iterations"):
        apply_overrides(Config(), ["train.iteratons=5"])
    with pytest.raises(KeyError, match="unknown config key.*model.colour"):
        config_from_dict({"model": {"colour": "red"}})


def test_wrong_type_names_the_key():
    with pytest.raises(ValueError, match="train.iterations: expected an integer, got 'many'"):
        apply_overrides(Config(), ["train.iterations=many"])
    with pytest.raises(ValueError, match="model.pretrained: expected true/false"):
        apply_overrides(Config(), ["model.pretrained=3"])


def test_invalid_choice_and_batch_multiple():
    with pytest.raises(ValueError, match="model.pooling.*cls, avg, max, gem"):
        apply_overrides(Config(), ["model.pooling=median"])
    with pytest.raises(ValueError, match="multiple of data.images_per_class"):
        apply_overrides(Config(), ["train.batch_size=30"])


def test_yaml_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  iterations: [unclosed\n")
    with pytest.raises(ValueError, match="bad.yaml"):
        load_config(bad)
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        load_config(tmp_path / "missing.yaml")


def test_valid_keys_cover_every_section():
    keys = valid_keys()
    assert {"model.name", "data.root", "loss.margin", "memory.size", "train.seed"} <= set(keys)


def test_tuple_sampler_refuses_a_memory_it_would_ignore():
    cfg = load_preset("sfm120k-irt-r-deit-s")
    assert cfg.train.sampler == "tuples" and cfg.memory.size == 0
    with pytest.raises(ValueError, match="tuple training .* has no cross-batch memory"):
        apply_overrides(cfg, ["memory.size=1000"])
    with pytest.raises(ValueError, match="train.sampler: 'pairs' is not one of classes, tuples"):
        apply_overrides(cfg, ["train.sampler=pairs"])
    with pytest.raises(ValueError, match="config key tuples.per_batch must be > 0"):
        apply_overrides(cfg, ["tuples.per_batch=0"])
