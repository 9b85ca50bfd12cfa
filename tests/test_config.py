"""Configuration: presets load, overrides are typed, unknown keys and wrong types are named, and every value that
cannot work is refused before any work starts (issue 14, case 8)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from vitrieval.config import (
    Config,
    apply_overrides,
    config_from_dict,
    load_config,
    valid_keys,
)
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
                                     "model.name='vit_small_patch16_224'"])
    assert cfg.model.name == "vit_small_patch16_224"
    assert cfg.train.amp == "off" and cfg.data.root == "123"
    assert cfg.train.weight_decay == 5e-4
    assert cfg.train.iterations == 12 and cfg.loss.koleo_weight == 0.7 and cfg.model.pooling == "gem"
    assert cfg.train.eval_ks == [1, 5] and cfg.model.pretrained_file is None
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)


@pytest.mark.parametrize("typo, hint", [
    ("train.iteratons", "did you mean train.iterations?"),
    ("train.iters", "did you mean train.iterations?"),
    ("memory.start_iter", "did you mean memory.start_iteration?"),
    ("model.pretrained_fle", "did you mean model.pretrained_file or model.pretrained?"),
    ("trian.lr", "did you mean train.lr?"),          # a misspelt section
    ("lr", "did you mean train.lr?"),                # a key without its section
])
def test_an_unknown_key_gets_a_did_you_mean(typo, hint):
    with pytest.raises(KeyError) as raised:
        apply_overrides(Config(), [f"{typo}=5"])
    assert raised.value.args[0] == f"unknown config key {typo!r}; {hint}"


def test_an_unknown_key_without_a_close_one_names_its_section_or_the_sections():
    """A short line, not the ~1,250-character list of every key."""
    with pytest.raises(KeyError) as raised:
        apply_overrides(Config(), ["memory.zzz=5"])
    memory_keys = [k.split(".", 1)[1] for k in valid_keys() if k.startswith("memory.")]
    assert raised.value.args[0] == f"unknown config key 'memory.zzz'; the keys of memory: {', '.join(memory_keys)}"
    with pytest.raises(KeyError) as raised:
        apply_overrides(Config(), ["colour=red"])
    message = raised.value.args[0]
    assert "SECTION one of model, data, loss, memory, tuples, train" in message and len(message) < 200
    with pytest.raises(KeyError, match=r"unknown config key\(s\) model.colour \(model.colour: the keys of model: "):
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


CANNOT_WORK = [  # (overrides, what the message says)
    (["train.checkpoint_every=0"], "config key train.checkpoint_every must be > 0, got 0"),
    (["train.log_every=0"], "config key train.log_every must be > 0, got 0"),
    (["train.log_every=-10"], "config key train.log_every must be > 0, got -10"),
    (["train.device=tpu"], "config key train.device: 'tpu' is not one of auto, cpu, cuda, cuda:N"),
    (["train.device=gpu"], "config key train.device: 'gpu' is not one of"),
    (["train.device=cuda:one"], "config key train.device: 'cuda:one' is not one of"),
    (["train.amp=fp16", "train.device=cpu"], "train.amp: fp16 autocast needs a CUDA device"),
    (["model.name=not_a_model"], "config key model.name: 'not_a_model' is not a timm model; e.g. deit_small"),
    (["model.name=deit_smal_patch16_224"], "'deit_smal_patch16_224' is not a timm model; close matches: "
                                           "deit_small_patch16_224"),
    (["model.name=deit_small_patch16_224.bogus"], "no pretrained tag 'bogus' in timm; deit_small_patch16_224's "
                                                  "are: fb_in1k"),
    (["memory.size=-1"], "config key memory.size must be >= 0, got -1"),
    (["memory.weight=-0.5"], "config key memory.weight must be >= 0, got -0.5"),
    (["memory.start_iteration=-1"], "config key memory.start_iteration must be >= 0, got -1"),
    (["data.images_per_class=1", "train.batch_size=8"],
     "config key data.images_per_class must be >= 2 with train.sampler=classes, got 1: .* positive pair"),
    (["train.lr=0"], "config key train.lr must be > 0, got 0"),
    (["train.lr=-3e-5"], "config key train.lr must be > 0, got -3e-05"),
    (["train.weight_decay=-0.0005"], "config key train.weight_decay must be >= 0, got -0.0005"),
    (["train.gem_p_lr_multiplier=0"], "config key train.gem_p_lr_multiplier must be > 0, got 0"),
    (["train.weight_decay_exempt=maybe"], "config key train.weight_decay_exempt: expected"),
    (["train.sampler=tuples", "memory.size=0", "train.log_gradient_noise=true"],
     "config key train.log_gradient_noise: gamma of Eq. 1 is logged by the P x K trainer"),
    (["train.grad_clip=-1"], "config key train.grad_clip must be >= 0"),
    (["train.eval_every=-1"], "config key train.eval_every must be >= 0"),
    (["train.eval_max_images=-1"], "config key train.eval_max_images must be >= 0"),
    (["train.eval_ks=[]"], "config key train.eval_ks must be a non-empty list of integers > 0"),
    (["train.eval_ks=[0, 1]"], "config key train.eval_ks must be a non-empty list of integers > 0"),
    (["train.seed=-1"], r"config key train.seed must be in \[0, 2\*\*32\)"),
    (["loss.koleo_weight=-0.7"], "config key loss.koleo_weight must be >= 0, got -0.7"),
    (["loss.koleo_eps=0"], "config key loss.koleo_eps must be > 0"),
    (["loss.margin=1.0"], r"config key loss.margin must be in \(-1, 1\) with train.sampler=classes"),
    (["loss.margin=-1.5"], r"config key loss.margin must be in \(-1, 1\)"),
    (["data.train_fraction=0"], r"config key data.train_fraction must be in \(0, 1\), got 0"),
    (["data.train_fraction=1"], r"config key data.train_fraction must be in \(0, 1\), got 1"),
    (["data.train_fraction=1.5"], r"config key data.train_fraction must be in \(0, 1\)"),
    (["data.train_resize_ratio=0.5"], "config key data.train_resize_ratio must be >= 1"),
    (["data.num_workers=-1"], "config key data.num_workers must be >= 0"),
    (["data.dataset=imagenet"], "config key data.dataset: 'imagenet' is not one of .*folder.*sop"),
    (["model.gem_p=0"], "config key model.gem_p must be > 0"),
    (["model.drop_path_rate=1.0"], r"config key model.drop_path_rate must be in \[0, 1\)"),
    (["model.projection_dim=-8"], "config key model.projection_dim must be >= 0"),
    (["model.patch_size=0"], r"config key model.patch_size must be > 0 \(or null"),
    (["model.depth=-2"], "config key model.depth must be > 0"),
    (["model.embed_dim=100", "model.num_heads=3"], "model.embed_dim .100. and model.num_heads .3.: the width must "
                                                   "be a multiple"),
    (["tuples.lr_decay=-0.01"], "config key tuples.lr_decay must be >= 0"),
]


@pytest.mark.parametrize(("overrides", "message"), CANNOT_WORK, ids=[" ".join(o) for o, _ in CANNOT_WORK])
def test_values_that_cannot_work_are_refused_naming_the_key(overrides: list[str], message: str) -> None:
    """Refused when the values are read, or (the model name, against timm's registry) by the full check the
    trainer runs before any work starts."""
    with pytest.raises(ValueError, match=message):
        apply_overrides(Config(), overrides).validate()


def test_tuple_training_margins_are_distances() -> None:
    cfg = load_preset("sfm120k-irt-r-deit-s")
    for bad in ("0", "-0.1", "2.5"):
        with pytest.raises(ValueError, match=r"loss.margin must be in \(0, 2\] with train.sampler=tuples"):
            apply_overrides(cfg, [f"loss.margin={bad}"])
    assert apply_overrides(cfg, ["loss.margin=2"]).loss.margin == 2.0
    # K is not used by tuple training: not refused there
    assert apply_overrides(cfg, ["data.images_per_class=1"]).data.images_per_class == 1


@pytest.mark.parametrize("override", [
    "train.eval_every=0", "memory.size=0", "train.grad_clip=0", "model.projection_dim=0", "loss.koleo_weight=0",
    "train.weight_decay=0", "memory.start_iteration=0", "loss.margin=0", "loss.margin=-0.5", "train.seed=0",
    "train.device=auto", "train.device=cpu", "train.device=cuda", "train.device=cuda:0", "train.device=cuda:3",
    "train.device=mps", "model.name=deit_small_patch16_224.fb_in1k", "model.name=vit_tiny_patch16_224",
    "model.name=hf-hub:timm/deit_small_patch16_224.fb_in1k", "data.train_resize_ratio=1",
    "data.images_per_class=2", "model.patch_size=null", "data.dataset=sop",
])
def test_values_that_mean_off_or_are_real_are_accepted(override: str) -> None:
    apply_overrides(Config(), [override])


def test_the_presets_model_names_are_timm_models_without_importing_timm_to_list_them() -> None:
    for name in list_presets():
        load_preset(name).validate()  # the full check, timm's registry included
    import vitrieval

    src = str(Path(vitrieval.__file__).resolve().parents[1])  # this checkout's package, not an installed one
    code = "import sys; from vitrieval.presets import list_presets; list_presets(); print('timm' in sys.modules)"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout
    assert out.strip() == "False"


@pytest.mark.parametrize(("override", "message"), [
    ("train.checkpoint_every=0", "train.checkpoint_every must be > 0, got 0"),
    ("train.log_every=0", "train.log_every must be > 0, got 0"),
    ("train.device=tpu", "train.device: 'tpu' is not one of auto, cpu, cuda, cuda:N"),
    ("model.name=not_a_model", "model.name: 'not_a_model' is not a timm model"),
    ("memory.size=-1", "memory.size must be >= 0, got -1"),
    ("data.images_per_class=1", "data.images_per_class must be >= 2 with train.sampler=classes"),
])
def test_the_cli_reports_a_setting_that_cannot_work_in_one_line_exit_2(tmp_path, capsys, override: str,
                                                                        message: str) -> None:
    from vitrieval.cli import main

    data = tmp_path / "data"
    data.mkdir()
    out = tmp_path / "run"
    code = main(["train", "--preset", "cpu-tiny", "--data-root", str(data), "--output", str(out), "--no-progress",
                 "--set", "train.batch_size=8", "--set", override])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("vitrieval train: error: config key ") and message in err, err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists()  # refused before any work started


def test_every_convnet_and_objective_row_of_tables_1_4_5_7_is_a_preset():
    names = list_presets()
    r50, r101 = "resnet50.tv_in1k", "resnet101.tv_in1k"  # torchvision's weights: Table 1's top-1 76.2 / 77.4
    table4 = {("sop-irt-l-r50", r50, "contrastive"), ("sop-irt-l-deit-s", "deit_small_patch16_224", "contrastive"),
              ("sop-nsoftmax-r50", r50, "nsoftmax"), ("sop-nsoftmax-deit-s", "deit_small_patch16_224", "nsoftmax"),
              ("sop-snca-r50", r50, "snca"), ("sop-snca-deit-s", "deit_small_patch16_224", "snca")}
    for name, arch, objective in table4:
        cfg = load_preset(name)
        assert (cfg.model.name, cfg.loss.objective, cfg.data.dataset, cfg.loss.koleo_weight) == \
            (arch, objective, "sop", 0.0), name
        assert (cfg.train.lr, cfg.train.weight_decay, cfg.train.batch_size, cfg.train.iterations) == \
            (3e-5, 5e-4, 64, 35000), name
        assert cfg.memory.size == (59551 if objective == "contrastive" else 0), name
        if objective != "contrastive":
            assert cfg.loss.temperature == 0.05 and "Table 4" in cfg.description and "github.com" in cfg.description
    assert load_preset("sop-nsoftmax-r50").loss.proxy_lr_multiplier == 1.0
    assert load_preset("sop-snca-deit-s").loss.snca_momentum == 0.5
    # Table 5's R50 half: its base preset; the 25 cells are `--set loss.margin=β --set loss.koleo_weight=λ` on it
    # (vitrieval reproduce 5, tests/test_reproduce_paper.py)
    cfg = load_preset("sop-irt-l-r50")
    assert (cfg.model.name, cfg.model.pooling, cfg.memory.size) == (r50, "spoc", 59551)
    table7 = [(r50, "gem", 224, "r50-gem"), (r50, "rmac", 224, "r50-rmac"), (r101, "gem", 224, "r101-gem"),
              (r101, "rmac", 224, "r101-rmac"), (r101, "gem", 384, "r101-gem-384"),
              (r101, "rmac", 384, "r101-rmac-384")]
    for arch, pool, size, row in table7:
        name = f"sfm120k-irt-l-{row}"
        cfg = load_preset(name)
        assert (cfg.model.name, cfg.model.pooling, cfg.model.image_size) == (arch, pool, size), name
        assert (cfg.train.sampler, cfg.train.optimizer, cfg.train.lr, cfg.loss.margin, cfg.data.train_resize) == \
            ("tuples", "adam", 5e-7, 0.85, "square"), name
        assert cfg.model.gem_learnable == (pool == "gem") and "Table 7" in cfg.description
    for bb, arch in {"r50": r50, "r101": r101, "deit-s": "deit_small_patch16_224",
                     "deit-s-distilled": "deit_small_distilled_patch16_224", "deit-b": "deit_base_patch16_224",
                     "deit-b-distilled": "deit_base_distilled_patch16_224"}.items():  # Table 1
        assert load_preset(f"table1-{bb}").model.name == arch and f"table1-{bb}" in names
    assert "extension" in load_preset("cpu-tiny-resnet").description


def test_cpu_tiny_resnet_is_a_small_random_init_convnet_with_gem():
    cfg = load_preset("cpu-tiny-resnet")
    assert (cfg.model.name, cfg.model.pretrained, cfg.model.image_size, cfg.model.pooling) == \
        ("resnet18", False, 64, "gem")
    assert cfg.model.patch_size is None and cfg.train.batch_size == 32 and cfg.loss.objective == "contrastive"


def test_train_batchnorm_is_train_or_frozen_and_the_table7_convnets_freeze_it():
    assert Config().train.batchnorm == "train"
    with pytest.raises(ValueError, match="train.batchnorm: 'off' is not one of train, frozen"):
        apply_overrides(Config(), ["train.batchnorm=off"])
    assert load_preset("sfm120k-irt-l-r101-gem-384").train.batchnorm == "frozen"
    assert load_preset("sop-irt-l-r50").train.batchnorm == "train"
