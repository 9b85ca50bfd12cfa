"""The demo's pretraining (:mod:`vitrieval.demo.pretrain`, :func:`vitrieval.demo.data.pretrain_data`): identities of
their own, a classification run with the ordinary trainer, and a weights file that the fine-tuning runs load through
``model.pretrained_file``."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import torch
from safetensors.torch import load_file

from vitrieval.data.readers import read_dataset
from vitrieval.data.readers.folder import read_folder
from vitrieval.data.table import ImageTable, Record
from vitrieval.demo import data as demo_data
from vitrieval.demo.data import PRETRAIN_SEED, PRODUCTS_SEED, SYNTHETIC, SyntheticSpec, pretrain_data
from vitrieval.demo.pretrain import WEIGHTS_FILE, write_backbone_weights
from vitrieval.demo.variants import DEMO_PRESET, QUICK_PRESET, finetune_config, pretrain_config
from vitrieval.model import Encoder, load
from vitrieval.training import train
from vitrieval.training.pk_trainer import Trainer

TINY_RUN = ("train.iterations=4", "train.batch_size=8", "data.num_workers=0", "train.log_every=2",
            "train.checkpoint_every=100")


def _object_digest(identity: int, seed: int) -> str:
    from vitrieval.data.synthetic import _object_rgba

    return hashlib.sha1(np.asarray(_object_rgba(identity, seed, 32)).tobytes()).hexdigest()


def test_no_pretraining_identity_is_a_finetuning_or_test_identity() -> None:
    """Identity ``k`` is drawn from ``(seed, k)``: the pretraining set (seed 1) shares no object with the products
    the demo fine-tunes and tests on (seed 0), at the full demo's sizes."""
    spec = SYNTHETIC[DEMO_PRESET]
    demo = [_object_digest(k, PRODUCTS_SEED) for k in range(spec.num_classes)]
    pretraining = [_object_digest(k, PRETRAIN_SEED) for k in range(spec.pretrain_classes)]
    assert len(set(demo)) == spec.num_classes and len(set(pretraining)) == spec.pretrain_classes
    assert not set(demo) & set(pretraining)
    assert [_object_digest(k, PRODUCTS_SEED) for k in range(5)] == demo[:5]  # the digest does find equal objects
    assert SYNTHETIC[QUICK_PRESET].pretrain_classes <= spec.pretrain_classes
    assert SYNTHETIC[QUICK_PRESET].num_classes <= spec.num_classes  # the quick sets are parts of those checked


def test_pretrain_data_is_all_training_classes_generated_with_its_own_seed(tmp_path, monkeypatch) -> None:
    monkeypatch.setitem(demo_data.SYNTHETIC, QUICK_PRESET, SyntheticSpec(4, 2, 2, pretrain_classes=5,
                                                                          pretrain_views=3))
    table, source = pretrain_data(tmp_path, QUICK_PRESET, 32, progress=False)
    assert len(table) == 15 and {r.split for r in table} == {"train"}
    assert sorted(table.class_counts().values()) == [3] * 5
    assert json.loads((tmp_path / "pretrain" / "GENERATED.json").read_text())["seed"] == PRETRAIN_SEED
    assert "5 generated identities x 3 views" in source
    written = read_dataset("csv", tmp_path / "pretrain_table.csv")
    assert [(r.path, r.label, r.split) for r in written] == [(r.path, r.label, r.split) for r in table]


def _csv(table: ImageTable, path, split_of) -> object:
    ImageTable([Record(r.path, r.label, split_of(r.label)) for r in table], "t").to_csv(path)
    return path


def test_finetuning_starts_from_the_pretrained_weights_file(tmp_path, products_32) -> None:
    """Pretrain (classification, the ordinary trainer), write the backbone file, and a fine-tuning run's initial
    weights are exactly the file's, which are the pretraining run's final weights and not a fresh initialisation."""
    folder = read_folder(products_32)
    pre_csv = _csv(folder, tmp_path / "pre.csv", lambda label: "train")
    cfg = pretrain_config(QUICK_PRESET, pre_csv, 0, TINY_RUN)
    assert cfg.loss.objective == "nsoftmax" and cfg.memory.size == 0 and cfg.model.pretrained_file is None
    result = train(cfg, tmp_path / "pretrain", progress=False)
    assert result.iterations == 4
    weights = write_backbone_weights(tmp_path / "pretrain" / "model", tmp_path / "pretrain" / WEIGHTS_FILE)
    from_file = load_file(str(weights))
    pretrained = load(tmp_path / "pretrain").backbone.state_dict()
    assert from_file.keys() == pretrained.keys()
    assert all(torch.equal(from_file[k], pretrained[k]) for k in pretrained)

    torch.manual_seed(0)
    fresh = Encoder(cfg.model).backbone.state_dict()  # the pretraining run's own initial weights (seed 0)
    assert any(not torch.equal(fresh[k], from_file[k]) for k in fresh)

    ft_csv = _csv(folder, tmp_path / "ft.csv", lambda label: "train" if label < 10 else "test")
    ft_cfg = finetune_config(QUICK_PRESET, ft_csv, 0, 0.0, "ft", weights, [*TINY_RUN, "memory.size=0"])
    assert ft_cfg.model.pretrained_file == str(weights)
    trainer = Trainer(ft_cfg, tmp_path / "ft", progress=False)
    initial = trainer.encoder.backbone.state_dict()
    assert initial.keys() == from_file.keys()
    assert all(torch.equal(initial[k], from_file[k]) for k in initial)
    assert trainer.run().iterations == 4
