"""The run lifecycle both trainers share, on tiny runs in one process: set-up, save / resume, the per-step checks,
the recall row and the run tail (``eval.json``, ``TrainResult``)."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import vitrieval
from vitrieval.config import apply_overrides
from vitrieval.data.sfm120k_layout import write_sfm120k_layout
from vitrieval.data.synthetic import render_product
from vitrieval.data.tuples import EpochTuples
from vitrieval.distributed import DistContext
from vitrieval.model import Encoder
from vitrieval.presets import load_preset
from vitrieval.training.lifecycle import seed_everything
from vitrieval.training.pk_trainer import Trainer
from vitrieval.training.tuple_trainer import TupleTrainer

TINY = ["model.name=deit_tiny_patch16_224", "model.pretrained=false", "model.image_size=32", "model.patch_size=8",
        "model.depth=2", "model.embed_dim=64", "model.num_heads=2", "data.num_workers=0", "train.amp=off"]


def _pk_config(root: Path, *extra: str):
    return apply_overrides(load_preset("cpu-tiny"), [
        f"data.root={root}", *TINY, "train.batch_size=16", "train.iterations=10", "memory.size=48",
        "memory.start_iteration=0", "memory.momentum=0.9", "loss.koleo_weight=0.5", *extra])


def _batch(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"images": torch.randn(16, 3, 32, 32, generator=g), "labels": torch.arange(4).repeat_interleave(4),
            "bad": torch.zeros(0, dtype=torch.int64)}


def _close(trainer) -> None:
    trainer.metrics.close()
    trainer.run_dir.close()


@pytest.fixture
def trainer(products_32, tmp_path):
    t = Trainer(_pk_config(products_32), tmp_path / "run", progress=False)
    yield t
    _close(t)


def test_a_fresh_set_up_seeds_first_and_builds_every_part(trainer, products_32):
    out = trainer.out
    assert (out / "config.yaml").is_file() and (out / "train.log").is_file() and (out / "checkpoints").is_dir()
    assert not trainer.resume and not (out / "checkpoints" / "last.pt").exists()
    assert (trainer.iteration, trainer.epoch, trainer.batch_in_epoch, trainer.skipped) == (0, 0, 0, 0)
    assert trainer.model is trainer.encoder  # one process: no DDP wrapper
    assert isinstance(trainer.optimizer, torch.optim.AdamW) and not trainer.scaler.is_enabled()
    assert trainer.objective.memory.size == 48 and trainer.momentum is not None
    assert trainer.logger.name == "vitrieval.training.pk_trainer"  # messages name the trainer
    seed_everything(trainer.cfg.train.seed)  # the encoder is the first thing built after seeding
    reference = Encoder(trainer.cfg.model).state_dict()
    for key, value in trainer.encoder.state_dict().items():
        assert torch.equal(value, reference[key]), key


def test_the_wrong_sampler_is_refused_before_anything_is_written(products_32, tmp_path):
    with pytest.raises(ValueError, match="Trainer runs train.sampler=classes, not 'tuples'"):
        Trainer(_pk_config(products_32, "train.sampler=tuples", "memory.size=0", "memory.momentum=0"),
                tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_save_then_resume_restores_weights_optimizer_memory_momentum_position_and_rng(products_32, tmp_path):
    out = tmp_path / "run"
    first = Trainer(_pk_config(products_32), out, progress=False)
    for i in range(2):
        row = first.step(_batch(i))
        first.iteration += 1
    assert list(row) == ["loss", "loss_contrastive", "loss_memory", "loss_koleo"] and row["loss_memory"] > 0
    first.epoch, first.batch_in_epoch, first.skipped = 1, 3, 4
    first.save()
    after_save = torch.rand(4)
    for iteration in range(1, 6):  # rows written after the checkpoint: dropped on resume
        first.metrics.write({"iteration": iteration, "loss": 1.0})
    _close(first)
    assert json.loads((out / "model" / "config.json").read_text())["trained_iterations"] == 2
    assert vitrieval.load(out).descriptor_dim == first.encoder.descriptor_dim

    torch.manual_seed(123)  # whatever happened since, the resumed run continues the saved RNG
    resumed = Trainer(_pk_config(products_32), out, resume=True, progress=False)
    try:
        assert resumed.resume
        assert (resumed.iteration, resumed.epoch, resumed.batch_in_epoch, resumed.skipped) == (2, 1, 3, 4)
        assert torch.equal(torch.rand(4), after_save)
        for a, b in ((first.encoder, resumed.encoder), (first.momentum, resumed.momentum)):
            for key, value in a.state_dict().items():
                assert torch.equal(value, b.state_dict()[key]), key
        for key in ("embeddings", "labels", "ptr", "filled", "last_batch"):
            want, got = first.objective.memory.state_dict()[key], resumed.objective.memory.state_dict()[key]
            assert torch.equal(got, want) if torch.is_tensor(want) else got == want
        saved, loaded = first.optimizer.state_dict()["state"], resumed.optimizer.state_dict()["state"]
        assert saved.keys() == loaded.keys()
        assert all(torch.equal(saved[k]["exp_avg"], loaded[k]["exp_avg"]) for k in saved)
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        assert [r["iteration"] for r in rows] == [1, 2]  # truncated after the checkpoint's iteration
        assert "resumed from" in (out / "train.log").read_text()
    finally:
        _close(resumed)


def test_an_existing_run_needs_resume_and_a_fresh_start_drops_stale_metrics(products_32, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"iteration": 99}\n')
    t = Trainer(_pk_config(products_32), out, progress=False)
    assert not (out / "metrics.jsonl").exists()  # no checkpoint: a fresh run, old rows removed
    t.save()
    _close(t)
    with pytest.raises(ValueError, match="already holds a run.*--resume"):
        Trainer(_pk_config(products_32), out, progress=False)


def test_a_non_finite_loss_stops_the_run_with_advice(trainer):
    batch = _batch()
    batch["images"] = torch.full_like(batch["images"], float("nan"))
    trainer.iteration = 5
    with pytest.raises(FloatingPointError, match=r"loss became nan at iteration 5; lower train.lr or enable "
                                                 r"train.grad_clip \(the last checkpoint is intact\)"):
        trainer.step(batch)


def test_unreadable_images_are_counted_and_reported(trainer, caplog):
    trainer.iteration = 3
    with caplog.at_level(logging.WARNING, logger="vitrieval.training.pk_trainer"):
        trainer._count_unreadable({"bad": torch.tensor([4, 9])})
        trainer._count_unreadable({"bad": torch.zeros(0, dtype=torch.int64)})
    assert trainer.skipped == 2
    assert [r.getMessage() for r in caplog.records] == ["skipped 2 unreadable image(s) at iteration 3 (total 2)"]


def test_the_recall_row_and_the_run_tail(trainer):
    history: list[dict] = []
    trainer.iteration = 4
    trainer._record_recall({}, history, "iteration %d: %s", 4)  # no held-out split: nothing written
    trainer._record_recall({1: 0.5, 2: 0.75}, history, "iteration %d: %s", 4)
    assert history == [{"iteration": 4, "recall@1": 0.5, "recall@2": 0.75}]
    assert [json.loads(line) for line in trainer.metrics.path.read_text().splitlines()] == history
    assert "iteration 4: R@1 50.0, R@2 75.0" in (trainer.out / "train.log").read_text()
    trainer.skipped = 2
    result = trainer._finish({1: 0.5}, time.time() - 1.0, history)
    eval_json = json.loads((trainer.out / "eval.json").read_text())
    assert eval_json == {"dataset": "folder", "split": "test", "iterations": 4, "recall_at_k": {"1": 0.5},
                         "skipped_images": 2}
    assert list(eval_json) == ["dataset", "split", "iterations", "recall_at_k", "skipped_images"]
    assert (result.output_dir, result.iterations, result.recall_at_k, result.skipped_images) == (
        trainer.out, 4, {"1": 0.5}, 2)
    assert result.history is history and result.seconds >= 1.0
    assert trainer.run_dir._log_handler is None  # train.log detached
    assert "done: 4 iterations in" in (trainer.out / "train.log").read_text()


# -- the tuple trainer's part of the lifecycle -------------------------------------------------------------------

@pytest.fixture(scope="module")
def sfm_small(tmp_path_factory) -> Path:
    """8 training clusters x 3 views, 2 validation clusters x 3 views, 32 px."""
    def views(ids, n):
        return {c: [render_product(c, v, size=32, seed=4) for v in range(n)] for c in ids}

    out = tmp_path_factory.mktemp("sfm") / "train"
    write_sfm120k_layout(out, views(range(8), 3), views(range(50, 52), 3), seed=0)
    return out


def _tuple_config(root: Path, *extra: str):
    return apply_overrides(load_preset("sfm120k-irt-l-deit-s"), [
        f"data.root={root}", *TINY, "tuples.query_size=8", "tuples.pool_size=16", "tuples.negatives=2",
        "tuples.per_batch=2", "tuples.epochs=2", *extra])


def test_tuple_checkpoints_carry_the_tuples_and_the_scheduler(sfm_small, tmp_path):
    out = tmp_path / "run"
    first = TupleTrainer(_tuple_config(sfm_small), out, progress=False)
    assert first.logger.name == "vitrieval.training.tuple_trainer"
    first.tuples = EpochTuples(np.array([0, 3]), np.array([1, 4]), np.array([[6, 9], [12, 15]]), 0.5)
    first.optimizer.step()  # no gradients: changes nothing, but keeps the scheduler's order check quiet
    first.scheduler.step()
    first.iteration, first.epoch, first.batch_in_epoch, first.skipped = 5, 1, 1, 1
    first.save()
    _close(first)
    extra = json.loads((out / "model" / "config.json").read_text())
    assert (extra["trained_iterations"], extra["trained_epochs"]) == (5, 1)
    resumed = TupleTrainer(_tuple_config(sfm_small), out, resume=True, progress=False)
    try:
        assert (resumed.iteration, resumed.epoch, resumed.batch_in_epoch, resumed.skipped) == (5, 1, 1, 1)
        assert resumed.tuples.state_dict().keys() == first.tuples.state_dict().keys()
        assert resumed.tuples.rows(1) == [3, 4, 12, 15] and resumed.tuples.negative_distance == 0.5
        assert resumed.optimizer.param_groups[0]["lr"] == first.optimizer.param_groups[0]["lr"]
        assert resumed.scheduler.state_dict() == first.scheduler.state_dict()
        result = resumed._finish({}, time.time(), [])
        eval_json = json.loads((out / "eval.json").read_text())
        assert list(eval_json) == ["dataset", "split", "iterations", "epochs", "recall_at_k", "skipped_tuples"]
        assert (eval_json["epochs"], eval_json["skipped_tuples"], result.skipped_images) == (1, 1, 1)
    finally:
        _close(resumed)
    state = torch.load(out / "checkpoints" / "last.pt", weights_only=False)
    del state["tuples"]
    torch.save(state, out / "checkpoints" / "last.pt")
    with pytest.raises(ValueError, match=r"last.pt is not from a tuple-training run \(train.sampler=tuples\)"):
        TupleTrainer(_tuple_config(sfm_small), out, resume=True, progress=False)


def test_more_ranks_than_tuples_per_batch_is_refused_before_anything_is_written(sfm_small, tmp_path, monkeypatch):
    monkeypatch.setattr(DistContext, "from_env", classmethod(lambda cls, backend=None: DistContext(0, 4)))
    with pytest.raises(ValueError, match=r"tuples.per_batch \(2\) must be at least the number of processes \(4\)"):
        TupleTrainer(_tuple_config(sfm_small), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
