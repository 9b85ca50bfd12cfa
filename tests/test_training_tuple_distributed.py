"""Tuple training under torchrun: 2 CPU ranks (gloo) mine the same tuples and train like one process.

The module is also what the launches run (``python tests/test_training_tuple_distributed.py WORKDIR DATA``, under
torchrun or not): one one-process launch (IRT_L) and one two-rank launch (IRT_L, then IRT_R with KoLeo), so the
file costs two launches. Every process uses one thread.

Both settings use ``tuples.per_batch=4``: one process takes the 4 tuples of a batch, each of the 2 ranks takes 2 of
them (tuples ``rank, rank + 2``) and scales its summed tuple loss by 2, so that DDP's gradient average is the
gradient of the whole batch's sum. Mining is sharded (whole extraction batches per rank, gathered) and gives every
rank the one-process tuples. With λ = 0 the two-rank run therefore equals the one-process run up to float32
rounding (a different summation order of the gradient): the runs train with SGD, and the losses and weights are
checked against the bounds derived in ``tests/equivalence.py`` (as in ``test_training_pk_distributed.py``); the
mined tuples are compared exactly.

With λ > 0 KoLeo is computed over each rank's part of the batch (as in the paper), so a two-rank run is *not* the
one-process run: that case only checks that it completes, that the logged ``loss_koleo`` is the mean of the ranks'
values and that at the first step those values are KoLeo over each rank's share of the one-process batch.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest

import equivalence
from torchrun_launch import launch, torchrun, write_tracker

EPOCHS = 2
PER_BATCH = 4
QUERY_SIZE = 18  # 5 steps an epoch: 4 full batches and one of 2 tuples (one per rank)
STEPS = EPOCHS * -(-QUERY_SIZE // PER_BATCH)
LR = 1e-3
MOMENTUM = 0.9
WORLD = 2
KOLEO = 1.0

COMMON = [
    "model.name=deit_tiny_patch16_224", "model.pretrained=false", "model.image_size=32", "model.patch_size=8",
    "model.depth=2", "model.embed_dim=64", "model.num_heads=2", "data.num_workers=0", "train.amp=off",
    "train.device=cpu", f"tuples.epochs={EPOCHS}", f"tuples.query_size={QUERY_SIZE}", "tuples.pool_size=40",
    "tuples.negatives=3", f"tuples.per_batch={PER_BATCH}", "tuples.mining_batch_size=8", f"train.lr={LR}",
    "train.optimizer=sgd", f"train.sgd_momentum={MOMENTUM}",
    "train.weight_decay=0", "train.log_every=1", "train.eval_every=0", "train.checkpoint_every=1000",
    "train.eval_ks=[1,2]", "train.seed=3",
]
RUNS = {"irt_l": [], "koleo": [f"loss.koleo_weight={KOLEO}"]}  # the one-process launch runs irt_l only
# a batch's tuple loss: PER_BATCH tuples of a positive and 3 negatives
LOSS_TERMS = PER_BATCH * (1 + 3)
# descriptors (mining statistics, KoLeo inputs): a chain of float32 reductions per coordinate (patch embedding
# 3·8·8 = 192 terms, 2 blocks of width 64 / MLP 256) moved by reordering by at most Σ (n − 1) ε, relative
DESCRIPTOR_RTOL = 2 * (191 + 255) * equivalence.EPS32


# ------------------------------------------------------------------------------------------------------------
# the worker (runs in the launched processes)

def _make_dataset(root: Path) -> Path:
    """12 training clusters x 4 views (36 query-positive pairs), 4 validation clusters x 3 views, 32 px."""
    from vitrieval.data.sfm120k_layout import write_sfm120k_layout
    from vitrieval.data.synthetic import render_product

    def views(ids, n):
        return {c: [render_product(c, v, size=32, seed=5) for v in range(n)] for c in ids}

    write_sfm120k_layout(root, views(range(12), 4), views(range(100, 104), 3), seed=0)
    return root


def _instrument(marks: Path, rank: int, records: dict) -> None:
    """Leave ``marks/<what>.rank<r>`` behind at every write to the run folder; record mined tuples and step rows."""
    import torch

    import vitrieval.model
    import vitrieval.training.lifecycle as lifecycle
    import vitrieval.training.run_dir
    import vitrieval.training.run_log
    from vitrieval.training.tuple_trainer import TupleTrainer

    tracked = write_tracker(marks, rank)

    lifecycle.save_checkpoint = tracked(lifecycle.save_checkpoint, "checkpoint")
    lifecycle.atomic_write_json = tracked(lifecycle.atomic_write_json, "eval_json")
    vitrieval.training.run_dir.save_config = tracked(vitrieval.training.run_dir.save_config, "config")
    vitrieval.training.run_dir.attach_file_log = tracked(vitrieval.training.run_dir.attach_file_log, "train_log")
    vitrieval.model.Encoder.save = tracked(vitrieval.model.Encoder.save, "model")
    real_write = vitrieval.training.run_log.MetricsWriter.write
    tracked_write = tracked(real_write, "metrics")

    def write(self, row):  # a disabled writer (ranks > 0) writes nothing: only enabled writes count
        return (tracked_write if self.enabled else real_write)(self, row)

    vitrieval.training.run_log.MetricsWriter.write = write
    real_mine, real_step = TupleTrainer.mine, TupleTrainer.step

    def mine(self):
        tuples = real_mine(self)
        records["mined"].append(tuples.state_dict())
        return tuples

    def step(self, batch, tuple_size):
        if self.iteration == 0:  # the first step's descriptors (train mode, the initial weights)
            with torch.no_grad():
                records["first_z"] = self.encoder(batch["images"]).detach().clone()
            records["first_tuples"] = batch["tuples"].tolist()
        row = real_step(self, batch, tuple_size)
        records["local_rows"].append(dict(row))  # this rank's values, before the sum over ranks
        return row

    TupleTrainer.mine, TupleTrainer.step = mine, step


def _worker(work: Path, data: Path) -> None:
    import logging

    import torch

    torch.set_num_threads(1)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from vitrieval.config import apply_overrides
    from vitrieval.distributed import DistContext
    from vitrieval.presets import load_preset
    from vitrieval.training.tuple_trainer import TupleTrainer

    ctx = DistContext.from_env()
    world = work / f"world{ctx.world_size}"
    records: dict = {}
    _instrument(world / "marks", ctx.rank, records)
    gradients = equivalence.record_gradient_maxima()
    runs = RUNS if ctx.world_size > 1 else {"irt_l": RUNS["irt_l"]}
    for name, extra in runs.items():
        records.update(mined=[], local_rows=[])
        cfg = apply_overrides(load_preset("sfm120k-irt-l-deit-s"), COMMON + [f"data.root={data}"] + extra)
        trainer = TupleTrainer(cfg, world / name, progress=False)
        result = trainer.run()
        torch.save({"history": result.history, "model": trainer.encoder.state_dict(), **records,
                    "gradients": equivalence.by_name(gradients, trainer.encoder.named_parameters())},
                   world / name / f"rank{ctx.rank}.pt")
    ctx.barrier()
    ctx.shutdown()


# ------------------------------------------------------------------------------------------------------------
# the launches (module-scoped: every test below reads their outputs)

@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    work = tmp_path_factory.mktemp("tuple_dist")
    data = _make_dataset(work / "data")
    me = str(Path(__file__).resolve())
    single = launch([sys.executable, me, str(work), str(data)], work, work / "world1.log")
    double = launch(torchrun([me, str(work), str(data)], WORLD), work, work / "world2.log")
    return {"work": work, "single": single, "double": double}


def _load(path: Path):
    import torch

    return torch.load(path, map_location="cpu", weights_only=False)


def _rows(history: list[dict], key: str) -> list[dict]:
    return [r for r in history if key in r]


# ------------------------------------------------------------------------------------------------------------
# the checks

def test_two_ranks_mine_the_same_tuples_as_one_process(runs):
    work = runs["work"]
    one = _load(work / "world1" / "irt_l" / "rank0.pt")
    r0, r1 = (_load(work / "world2" / "irt_l" / f"rank{r}.pt") for r in range(WORLD))
    assert len(one["mined"]) == len(r0["mined"]) == len(r1["mined"]) == EPOCHS
    for epoch, want in enumerate(one["mined"]):
        for got in (r0["mined"][epoch], r1["mined"][epoch]):
            for key in ("queries", "positives", "negatives"):
                np.testing.assert_array_equal(got[key], want[key], err_msg=f"epoch {epoch} {key}")
        assert want["negatives"].shape == (QUERY_SIZE, 3)
        assert r0["mined"][epoch]["negative_distance"] == r1["mined"][epoch]["negative_distance"]
    # the statistic in metrics.jsonl (rank 0's file): epoch 0 from the same initial weights, epoch 1 after training
    logged = [[r["negative_distance"] for r in _rows(run["history"], "negative_distance")] for run in (one, r0)]
    assert logged[0][0] == logged[1][0]
    np.testing.assert_allclose(logged[1], logged[0], rtol=DESCRIPTOR_RTOL)


def test_two_ranks_train_like_one_process_with_the_same_tuples_per_batch(runs):
    import torch

    work = runs["work"]
    one = _load(work / "world1" / "irt_l" / "rank0.pt")
    r0, r1 = (_load(work / "world2" / "irt_l" / f"rank{r}.pt") for r in range(WORLD))
    # the first step: the one-process batch is tuples 0..3, rank r takes tuples r and r + 2
    assert one["first_tuples"] == [0, 1, 2, 3]
    assert r0["first_tuples"] == [0, 2] and r1["first_tuples"] == [1, 3]
    rows1, rows2 = _rows(one["history"], "loss_tuple"), _rows(r0["history"], "loss_tuple")
    assert [r["iteration"] for r in rows1] == [r["iteration"] for r in rows2] == list(range(1, STEPS + 1))
    equivalence.assert_losses_close([[r["loss_tuple"], r["loss"]] for r in rows2],
                                    [[r["loss_tuple"], r["loss"]] for r in rows1], LOSS_TERMS)
    assert all(r["loss_koleo"] == 0 for r in rows1 + rows2)
    # the logged tuple loss is the sum of the ranks' parts
    local = [[row["loss_tuple"] for row in run["local_rows"]] for run in (r0, r1)]
    np.testing.assert_allclose(np.sum(local, axis=0), [r["loss_tuple"] for r in rows2], rtol=1e-12)
    assert [r["lr"] for r in rows2] == pytest.approx([r["lr"] for r in rows1], rel=1e-12)
    for key in one["model"]:
        assert torch.equal(r0["model"][key], r1["model"][key]), key  # DDP keeps the ranks bit-identical
    bounds = equivalence.weight_bounds(one["gradients"], MOMENTUM, one["model"])
    assert len(bounds) > 10 and all(len(one["gradients"][n]) == STEPS for n in bounds)
    equivalence.assert_within_bounds(r0["model"], one["model"], bounds)


def test_weights_move(runs):
    """Guard for the comparison above: the steps change the weights far beyond the tolerance."""
    import torch

    from vitrieval.config import apply_overrides
    from vitrieval.model import Encoder
    from vitrieval.presets import load_preset

    cfg = apply_overrides(load_preset("sfm120k-irt-l-deit-s"), COMMON + ["data.root=x"])
    torch.manual_seed(cfg.train.seed)
    start = Encoder(cfg.model).state_dict()
    trained = _load(runs["work"] / "world1" / "irt_l" / "rank0.pt")["model"]
    assert max(float((trained[k] - v).abs().max()) for k, v in start.items()) > 1e-3


def test_koleo_is_per_rank_and_logged_as_the_mean_over_ranks(runs):
    import torch

    from vitrieval.losses import koleo_loss

    work = runs["work"]
    r0, r1 = (_load(work / "world2" / "koleo" / f"rank{r}.pt") for r in range(WORLD))
    rows = _rows(r0["history"], "loss_koleo")
    assert [r["iteration"] for r in rows] == list(range(1, STEPS + 1))
    local = np.array([[row["loss_koleo"] for row in run["local_rows"]] for run in (r0, r1)])
    assert np.all(local != 0) and not np.array_equal(local[0], local[1])
    np.testing.assert_allclose([r["loss_koleo"] for r in rows], local.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose([r["loss"] for r in rows],
                               [r["loss_tuple"] + KOLEO * r["loss_koleo"] for r in rows], rtol=1e-12)
    for key in r0["model"]:
        assert torch.equal(r0["model"][key], r1["model"][key]), key
    # first step (initial weights, the tuples mined by the IRT_L runs): each rank's KoLeo is over its own share of
    # the one-process batch, which is not KoLeo over the whole batch
    one = _load(work / "world1" / "irt_l" / "rank0.pt")
    z = one["first_z"].view(PER_BATCH, -1, one["first_z"].shape[-1])  # (tuples, images, dim)
    shares = [koleo_loss(z[r::WORLD].reshape(-1, z.shape[-1])).item() for r in range(WORLD)]
    np.testing.assert_allclose(local[:, 0], shares, rtol=DESCRIPTOR_RTOL)
    whole = koleo_loss(z.reshape(-1, z.shape[-1])).item()
    assert abs(rows[0]["loss_koleo"] - whole) > 1e-3


def test_only_rank_zero_writes_the_run_folder(runs):
    work = runs["work"]
    marks = sorted(p.name for p in (work / "world2" / "marks").iterdir())
    assert marks == [f"{what}.rank0" for what in ("checkpoint", "config", "eval_json", "metrics", "model",
                                                  "train_log")]
    for name in RUNS:
        run = work / "world2" / name
        assert sorted(p.name for p in run.glob("rank*.pt")) == ["rank0.pt", "rank1.pt"]
        assert len(list((run / "tensorboard").iterdir())) == 1  # one SummaryWriter (rank 0's)
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert [r["iteration"] for r in rows if "loss" in r] == list(range(1, STEPS + 1))  # each step once
        assert [r["epoch"] for r in rows if "negative_distance" in r] == list(range(EPOCHS))
        assert sum("recall@1" in r for r in rows) == 1
        # train.log: no line twice (timestamps stripped), each epoch's summary once
        lines = [re.sub(r"^\S+ \S+ ", "", line) for line in (run / "train.log").read_text().splitlines()]
        assert len(lines) == len(set(lines)) and lines, lines
        assert sum("world size 2" in line for line in lines) == 1
        for epoch in range(EPOCHS):
            assert sum(f"epoch {epoch}: mean loss" in line for line in lines) == 1
        assert sum(line.startswith("INFO vitrieval.training.tuple_trainer: done:") for line in lines) == 1
    # the console: rank 0 reports (once per run), the other rank only warns
    assert runs["double"].count("epoch 0: mean loss") == len(RUNS)


def test_a_rank_with_an_empty_share_of_the_last_batch_still_steps(tmp_path):
    """Rank 1's view of 17 tuples in batches of 4 (taken in one process, no process group): its last share is empty,
    and its step must still run (under DDP it has to join the gradient all-reduce) with a zero tuple loss."""
    from vitrieval.config import apply_overrides
    from vitrieval.distributed import DistContext
    from vitrieval.presets import load_preset
    from vitrieval.training.tuple_trainer import TupleTrainer

    cfg = apply_overrides(load_preset("sfm120k-irt-l-deit-s"), COMMON + [
        f"data.root={_make_dataset(tmp_path / 'data')}", "tuples.query_size=17", "tuples.epochs=1"])
    trainer = TupleTrainer(cfg, tmp_path / "run", progress=False)
    try:
        tuples = trainer.mine()
        trainer.dist = DistContext(rank=1, world_size=WORLD)
        batches = list(trainer._loader(tuples))
        assert [b["tuples"].tolist() for b in batches] == [[1, 3], [5, 7], [9, 11], [13, 15], []]
        row = trainer.step(batches[-1], tuples.tuple_size)
        assert row["loss_tuple"] == 0 and row["loss_koleo"] == 0
    finally:
        trainer.metrics.close()
        trainer.run_dir.close()


if __name__ == "__main__":  # python tests/test_training_tuple_distributed.py WORKDIR DATA (under torchrun or not)
    _worker(Path(sys.argv[1]), Path(sys.argv[2]))
