"""Tuple training (the landmark track): mined tuples on an SfM-120k-layout fixture, resume, presets, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import vitrieval
from vitrieval.config import apply_overrides
from vitrieval.data.readers import read_dataset
from vitrieval.data.sfm120k_layout import write_sfm120k_layout
from vitrieval.data.synthetic import render_product
from vitrieval.data.transforms import train_transform
from vitrieval.data.tuples import EpochTuples, TupleDataset, collate_tuples
from vitrieval.presets import load_preset
from vitrieval.training import train
from vitrieval.training.tuple_trainer import TupleTrainer

TINY = ["model.name=deit_tiny_patch16_224", "model.pretrained=false", "model.image_size=32", "model.patch_size=8",
        "model.depth=2", "model.embed_dim=64", "model.num_heads=2", "data.num_workers=0", "train.amp=off"]


@pytest.fixture(scope="module")
def sfm_root(tmp_path_factory) -> Path:
    """30 training clusters x 5 views and 10 validation clusters x 4 views of generated products, 32 px."""
    def views(ids, n):
        return {c: [render_product(c, v, size=32, seed=5) for v in range(n)] for c in ids}

    out = tmp_path_factory.mktemp("sfm") / "train"
    write_sfm120k_layout(out, views(range(30), 5), views(range(100, 110), 4), seed=0)
    return out


def _config(root: Path, *extra: str):
    return apply_overrides(load_preset("sfm120k-irt-l-deit-s"), [
        f"data.root={root}", *TINY, "tuples.query_size=60", "tuples.pool_size=100", "tuples.negatives=3",
        "tuples.mining_batch_size=50", "train.lr=1e-3", "train.weight_decay=0", "train.log_every=1",
        "train.eval_every=0", "train.eval_ks=[1,2]", *extra])


def _pair_distances(run: Path, table) -> tuple[float, float]:
    """Mean L2 distance of the training pairs, and of each query to a random image of another cluster."""
    from vitrieval.embed import ExtractionOptions, extract

    options = ExtractionOptions(num_workers=0, amp="off", resize="square", progress=False)
    z = extract(vitrieval.load(run), table, options).descriptors
    pairs, labels = table.extras["pairs"]["train"], table.labels
    rng = np.random.default_rng(0)
    others = [rng.choice(np.flatnonzero(labels != labels[q])) for q in pairs[:, 0]]
    d_pos = np.linalg.norm(z[pairs[:, 0]] - z[pairs[:, 1]], axis=1).mean()
    d_neg = np.linalg.norm(z[pairs[:, 0]] - z[others], axis=1).mean()
    return float(d_pos), float(d_neg)


def test_tuple_training_pulls_pairs_together_and_pushes_negatives_away(sfm_root, tmp_path):
    """IRT_L tuples from random init: on the training clusters the gap between the distance to other clusters and
    the query-positive distance widens, and the mined (hardest) negatives end further from their queries.

    Held-out Recall@1 is not pinned: from random init on 40 toy clusters it moved by -4 to +10 points across
    seeds and margins (measured), too noisy for a test; the recipe is meant for a pretrained start."""
    options = ["tuples.per_batch=10", "tuples.negatives=5", "tuples.pool_size=150", "train.lr=5e-4"]
    train(_config(sfm_root, "tuples.epochs=1", "train.lr=1e-12"), tmp_path / "untrained", progress=False)
    result = train(_config(sfm_root, "tuples.epochs=15", *options), tmp_path / "run", progress=False)
    assert result.iterations == 15 * 6  # 60 pairs / 10 tuples a step, 15 epochs
    table = read_dataset("sfm120k", sfm_root).split("train")
    pos0, neg0 = _pair_distances(tmp_path / "untrained", table)
    pos1, neg1 = _pair_distances(tmp_path / "run", table)
    # measured: positives 0.80 -> 0.84, other clusters 0.81 -> 1.00: the gap 0.006 -> 0.155
    assert neg1 - pos1 >= (neg0 - pos0) + 0.1, (pos0, neg0, pos1, neg1)
    out = tmp_path / "run"
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    mined = [r for r in rows if "negative_distance" in r]
    assert [r["epoch"] for r in mined] == list(range(15)) and all(r["tuples"] == 60 for r in mined)
    assert np.mean([r["negative_distance"] for r in mined[-3:]]) > np.mean([r["negative_distance"] for r in mined[:3]])
    lrs = [r["lr"] for r in rows if "lr" in r]
    assert lrs[-1] == pytest.approx(5e-4 * np.exp(-0.01 * 14))  # decayed once per finished epoch
    assert json.loads((out / "eval.json").read_text())["epochs"] == 15
    assert "epoch 14: mean loss" in (out / "train.log").read_text()


class _Crash(RuntimeError):
    pass


def test_interrupted_tuple_run_resumes_mid_epoch_to_identical_weights(sfm_root, tmp_path, monkeypatch):
    cfg = _config(sfm_root, "tuples.epochs=2", "tuples.query_size=30", "train.checkpoint_every=4",
                  "loss.koleo_weight=1.0")
    reference = TupleTrainer(cfg, tmp_path / "reference", progress=False)
    reference.run()

    real_step = TupleTrainer.step

    def crash_at_10(self, batch, size):
        if self.iteration == 10:  # epoch 1, step 4: the last checkpoint is from iteration 8, mid-epoch
            raise _Crash
        return real_step(self, batch, size)

    monkeypatch.setattr(TupleTrainer, "step", crash_at_10)
    with pytest.raises(_Crash):
        TupleTrainer(cfg, tmp_path / "interrupted", progress=False).run()
    monkeypatch.setattr(TupleTrainer, "step", real_step)
    state = torch.load(tmp_path / "interrupted" / "checkpoints" / "last.pt", weights_only=False)
    assert (state["iteration"], state["epoch"], state["batch_in_epoch"]) == (8, 1, 2)
    resumed = TupleTrainer(cfg, tmp_path / "interrupted", resume=True, progress=False)
    assert resumed.tuples is not None and resumed.batch_in_epoch == 2  # no re-mining: the epoch's tuples are kept
    resumed.run()
    for name, weight in reference.encoder.state_dict().items():
        assert torch.equal(weight, resumed.encoder.state_dict()[name]), name
    losses = {}
    for run in ("reference", "interrupted"):
        rows = [json.loads(line) for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
        losses[run] = [r["loss"] for r in rows if "loss" in r]
    assert losses["reference"] == losses["interrupted"] and len(losses["reference"]) == 12


def test_a_tuple_with_an_unreadable_image_is_dropped_whole(sfm_root, tmp_path):
    table = read_dataset("sfm120k", sfm_root).split("train")
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    from dataclasses import replace

    table.records[7] = replace(table.records[7], path=str(bad))
    tuples = EpochTuples(np.array([0, 5]), np.array([1, 6]), np.array([[10, 20], [7, 30]]))
    transform = train_transform({"image_size": 32, "mean": (0.5,) * 3, "std": (0.5,) * 3}, resize="square",
                                hflip=False)
    data = TupleDataset(table, tuples, transform, skip_bad=True)
    batch = collate_tuples([data[0], data[1]])
    assert batch["images"].shape == (4, 3, 32, 32) and batch["bad"].tolist() == [1]
    assert batch["labels"].tolist() == table.labels[[0, 1, 10, 20]].tolist()
    with pytest.raises(Exception, match="broken.jpg"):
        TupleDataset(table, tuples, transform, skip_bad=False)[1]


def test_tuple_sampler_on_a_dataset_without_pairs_says_what_is_missing(products_32, tmp_path):
    cfg = _config(products_32, "data.dataset=folder")
    with pytest.raises(ValueError, match="has no query-positive pairs.*sfm120k"):
        train(cfg, tmp_path / "run", progress=False)


@pytest.mark.parametrize("name,model,size,koleo", [
    ("sfm120k-irt-l-deit-s", "deit_small_patch16_224", 224, 0.0),
    ("sfm120k-irt-r-deit-s", "deit_small_patch16_224", 224, 4.0),
    ("sfm120k-irt-l-deit-s-distilled", "deit_small_distilled_patch16_224", 224, 0.0),
    ("sfm120k-irt-l-deit-b-distilled", "deit_base_distilled_patch16_224", 224, 0.0),
    ("sfm120k-irt-l-deit-b-distilled-384", "deit_base_distilled_patch16_384", 384, 0.0),
    ("sfm120k-irt-r-deit-b-distilled-384", "deit_base_distilled_patch16_384", 384, 4.0)])
def test_landmark_presets_follow_the_cirtorch_recipe(name, model, size, koleo):
    cfg = load_preset(name)
    assert (cfg.model.name, cfg.model.image_size, cfg.model.pooling, cfg.loss.koleo_weight) == (model, size, "cls",
                                                                                                koleo)
    assert (cfg.train.sampler, cfg.train.optimizer, cfg.train.lr, cfg.train.weight_decay) == ("tuples", "adam", 5e-7,
                                                                                              1e-6)
    t = cfg.tuples
    assert (t.epochs, t.query_size, t.pool_size, t.negatives, t.per_batch, t.lr_decay) == (100, 2000, 22000, 5, 5,
                                                                                           0.01)
    assert (cfg.loss.margin, cfg.data.train_resize, cfg.data.eval_resize, cfg.memory.size) == (0.85, "square",
                                                                                               "square", 0)


@pytest.mark.parametrize("dataset", ["sop", "cub"])
@pytest.mark.parametrize("pooling", ["avg", "max", "gem"])
def test_pooling_ablation_presets_switch_only_the_pooling(dataset, pooling):
    base, ablation = load_preset(f"{dataset}-irt-l-deit-s"), load_preset(f"{dataset}-irt-l-deit-s-{pooling}")
    assert ablation.model.pooling == pooling and base.model.pooling == "cls"
    a, b = ablation.to_dict(), base.to_dict()
    for d in (a, b):
        d.pop("name"), d.pop("description"), d["model"].pop("pooling")
    assert a == b


def test_report_compares_tuple_runs_with_their_mined_negative_distances(sfm_root, tmp_path):
    from vitrieval.cli import main

    for name, koleo in (("irt_l", 0.0), ("irt_r", 1.0)):
        train(_config(sfm_root, "tuples.epochs=2", "tuples.query_size=20", f"loss.koleo_weight={koleo}",
                      "train.eval_every=1"), tmp_path / name, progress=False)
    out = tmp_path / "compare.html"
    assert main(["report", str(tmp_path / "irt_l"), str(tmp_path / "irt_r"), "--names", "IRT_L,IRT_R",
                 "-o", str(out)]) == 0
    page = out.read_text()
    assert page.count("data:image/png;base64,") == 3  # curves, mined-negative distance, learning rate
    assert "Mined hard negatives (tuple training)" in page and "IRT_R" in page
    r1 = json.loads((tmp_path / "irt_r" / "eval.json").read_text())["recall_at_k"]["1"]
    assert f"{100 * r1:.1f}" in page  # the final Recall@1 in the table
    assert main(["report", str(tmp_path / "missing"), "-o", str(out)]) == 2  # names the folder, no traceback


def test_to_sfm120k_converts_a_folder_and_the_cpu_preset_trains_on_it(tmp_path, capsys):
    """`vitrieval datasets to-sfm120k` + `vitrieval train --preset sfm120k-cpu-tiny` (shortened) end to end."""
    from vitrieval.cli import main

    source = tmp_path / "objects"
    for c in range(8):
        (source / f"obj{c + 1}").mkdir(parents=True)
        for v in range(4):
            render_product(c, v, size=32, seed=2).save(source / f"obj{c + 1}" / f"view{v}.png")
    assert main(["datasets", "to-sfm120k", str(source), str(tmp_path / "sfm"), "--val-fraction", "0.25"]) == 0
    out = capsys.readouterr().out
    assert "train 24 images / 6 clusters / 18 pairs, val 8 images / 2 clusters / 6 pairs" in out
    table = read_dataset("sfm120k", tmp_path / "sfm")
    assert table.extras["pairs"]["train"].shape == (18, 2)
    assert main(["train", "--preset", "sfm120k-cpu-tiny", "--data-root", str(tmp_path / "sfm"), "--output",
                 str(tmp_path / "run"), "--no-progress", "--set", "tuples.epochs=1", "--set", "tuples.query_size=10",
                 "--set", "tuples.pool_size=20", "--set", "tuples.negatives=3", "--set", "model.image_size=32",
                 "--set", "data.num_workers=0"]) == 0
    assert json.loads((tmp_path / "run" / "eval.json").read_text())["iterations"] == 2
    assert main(["datasets", "to-sfm120k", str(tmp_path / "nothing"), str(tmp_path / "x")]) == 2


@pytest.mark.parametrize("fast", ["true", "false"])
def test_mining_follows_data_fast_decode(sfm_root, tmp_path, monkeypatch, fast):
    """The trainer hands ``data.fast_decode`` to the epoch's mining (its extractions decode as training does)."""
    import vitrieval.training.tuple_trainer as tuple_trainer
    from vitrieval.data.tuples import EpochTuples

    seen = {}

    def fake_mine(*args, **kwargs):
        seen.update(kwargs)
        return EpochTuples(np.zeros(1, np.int64), np.zeros(1, np.int64), np.zeros((1, 0), np.int64))

    monkeypatch.setattr(tuple_trainer, "mine_epoch_tuples", fake_mine)
    trainer = TupleTrainer(_config(sfm_root, f"data.fast_decode={fast}"), tmp_path / "run", progress=False)
    trainer.mine()
    assert seen["extraction"].fast_decode is (fast == "true")
