"""Several processes: torchrun with 2 CPU ranks (gloo) trains, resumes and extracts exactly like one process.

The module is also what the launches run (``python tests/test_training_pk_distributed.py WORKDIR DATA``, or
``... train ARGS`` for the ``vitrieval train`` sub-command): one launch per setting (one process; two ranks; the
two-rank ``--resume`` through the train command), each running every scenario in one process group, so the whole
file costs three launches (about 1.5 minutes on two busy cores). Every process uses one thread.

Tolerances (derived in ``tests/equivalence.py``). Two ranks compute the same global loss as one process, but the
gradient reaches the weights by a different float32 summation (each rank back-propagates its half, DDP all-reduces
and averages). The runs train with SGD (momentum 0.9), whose update is linear in the gradients, so after 6 steps
each weight tensor is within ``10 · 1e-4 · Σ_t lr · max|g_t| / (1 − μ)`` of the one-process run's; the
per-iteration losses within ``2 (n − 1) ε`` relative (``n`` = the loss's pair terms); the memory's unit vectors
within ``DESCRIPTOR_ATOL``. A run in which both ranks train on the same half of every batch (the ``broken`` run of
the two-rank launch) must fail those bounds by far. Between the ranks of one run, and between a resumed and an
uninterrupted two-rank run, the computations are identical and the results are compared exactly; so is sharded
extraction (the shards are whole batches of the one-process batching).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

import equivalence
from shape_folders import write_shape_folders
from torchrun_launch import launch, torchrun, write_tracker

ITERATIONS = 6
LR = 1e-3
MOMENTUM = 0.9
MEMORY = 40
BATCH = 8  # per rank; the one-process reference uses 2 * BATCH
N_CLASSES, PER_CLASS = 16, 4  # folder dataset: 8 training classes (32 images), 8 held-out classes
EXTRACT_ITEMS = 13  # not a multiple of the number of ranks nor of the extraction batch
EXTRACT_BATCH = 3

COMMON = [
    "model.name=deit_tiny_patch16_224", "model.pretrained=false", "model.image_size=32", "model.patch_size=8",
    "model.depth=2", "data.dataset=folder", "data.num_workers=0", "data.images_per_class=4",
    f"train.iterations={ITERATIONS}", f"train.lr={LR}", "train.optimizer=sgd", f"train.sgd_momentum={MOMENTUM}",
    "train.amp='off'", "train.device=cpu", "train.log_every=1",
    "train.eval_every=2", "train.checkpoint_every=1000", "train.seed=7", "train.eval_ks=[1,2]",
    f"memory.size={MEMORY}", "memory.start_iteration=2",
]
RUNS = {
    # the convnet path: a ResNet-18 at 64 px (a 2 x 2 map: on a 1 x 1 map GeM's output does not depend on p) with a
    # learnable GeM p (its own parameter group at 10x lr); BatchNorm frozen, since torch's SyncBatchNorm
    # (train.sync_bn, GPUs) does not run on CPU and per-rank batch statistics differ from the global batch's
    "resnet_frozen_bn": ["model.name=resnet18", "model.patch_size=null", "model.depth=null", "model.image_size=64",
                         "model.pooling=gem", "model.gem_learnable=true", "train.batchnorm=frozen"],
    # IRT_L with the cross-batch memory (wraps around: 4 x 16 queued into 40 slots)
    "irt_l": [],
    # IRT_R, KoLeo over the global batch, memory fed by a momentum encoder
    "koleo_global": ["loss.koleo_weight=0.7", "loss.koleo_global=true", "memory.momentum=0.9"],
}
# each anchor of the global batch against the other 2B - 1 images and the memory's rows
LOSS_TERMS = 2 * BATCH * (2 * BATCH - 1 + MEMORY)
# the memory holds unit descriptors of the forward pass: per coordinate a chain of float32 reductions (patch
# embedding 3·8·8 = 192 terms, then 2 blocks of width 192 / MLP 768) whose reordering moves it by at most
# Σ (n − 1) ε ≈ 2 · (191 + 767) · 6e-8 ≈ 1.1e-4 (the weight gaps add far less)
DESCRIPTOR_ATOL = 2 * (191 + 767) * equivalence.EPS32 + 1e-6


# ------------------------------------------------------------------------------------------------------------
# the worker (runs in the launched processes)

def _make_dataset(root: Path) -> None:
    write_shape_folders(root, N_CLASSES, PER_CLASS, seed=0)


def _record_writes(marks: Path, rank: int) -> None:
    """Patch the trainer's writers so that each call leaves ``marks/<what>.rank<r>`` behind."""
    import vitrieval.model
    import vitrieval.training.lifecycle as lifecycle

    tracked = write_tracker(marks, rank)

    lifecycle.save_checkpoint = tracked(lifecycle.save_checkpoint, "checkpoint")
    lifecycle.atomic_write_json = tracked(lifecycle.atomic_write_json, "eval_json")
    vitrieval.model.Encoder.save = tracked(vitrieval.model.Encoder.save, "model")


def _worker(work: Path, data: Path) -> None:
    import logging

    import torch

    torch.set_num_threads(1)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    import vitrieval.training.pk_trainer as pk_trainer
    from vitrieval.config import Config, apply_overrides
    from vitrieval.data.table import ImageTable, Record
    from vitrieval.distributed import DistContext
    from vitrieval.embed import ExtractionOptions, extract
    from vitrieval.model import Encoder
    from vitrieval.training.pk_trainer import Trainer

    ctx = DistContext.from_env()
    world = work / f"world{ctx.world_size}"
    _record_writes(world / "marks", ctx.rank)
    gradients = equivalence.record_gradient_maxima()
    batch = BATCH * (2 // ctx.world_size)
    runs = dict(RUNS)
    if ctx.world_size == 2:
        runs["resume"] = [f"train.iterations={ITERATIONS // 2}"]  # the first half of a run the CLI resumes
        runs["broken"] = []  # IRT_L with both ranks on rank 0's half of every batch: must fail the bounds
    real_sampler = pk_trainer.ClassBalancedBatchSampler
    for name, extra in runs.items():
        if name == "broken":
            pk_trainer.ClassBalancedBatchSampler = lambda *a: real_sampler(*a[:4], 0, *a[5:])
        cfg = apply_overrides(Config(name=name), COMMON + [f"data.root={data}", f"train.batch_size={batch}"] + extra)
        trainer = Trainer(cfg, world / name, progress=False)
        result = trainer.run()
        pk_trainer.ClassBalancedBatchSampler = real_sampler
        memory = trainer.objective.memory.state_dict()
        torch.save({"history": result.history, "model": trainer.encoder.state_dict(), "memory": memory,
                    "recall": result.recall_at_k,
                    "gradients": equivalence.by_name(gradients, trainer.encoder.named_parameters())},
                   world / name / f"rank{ctx.rank}.pt")

    # sharded extraction of 13 items (one unreadable) with batches of 3, by a freshly initialised encoder
    torch.manual_seed(0)
    encoder = Encoder(trainer.cfg.model)
    rows = trainer.test_table.records[:EXTRACT_ITEMS - 1] + [Record(str(work / "broken.png"), 99)]
    table = ImageTable(rows, "extract")
    options = ExtractionOptions(batch_size=EXTRACT_BATCH, num_workers=0, amp="off", skip_bad=True, progress=False)
    ext = extract(encoder, table, options)
    local = extract(encoder, table, options, distributed=False)
    torch.save({"ext": ext, "local": local}, world / f"extract.rank{ctx.rank}.pt")
    ctx.barrier()
    ctx.shutdown()


# ------------------------------------------------------------------------------------------------------------
# the launches (module-scoped: every test below reads their outputs)

@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    work = tmp_path_factory.mktemp("dist")
    data = work / "data"
    _make_dataset(data)
    (work / "broken.png").write_bytes(b"not an image")
    me = str(Path(__file__).resolve())
    single = launch([sys.executable, me, str(work), str(data)], work, work / "world1.log")
    double = launch(torchrun([me, str(work), str(data)]), work, work / "world2.log")
    resumed_dir = work / "world2" / "resume"
    resumed = launch(torchrun([me, "train", "--config", str(resumed_dir / "config.yaml"), "--output",
                                 str(resumed_dir), "--resume", "--no-progress",
                                 "--set", f"train.iterations={ITERATIONS}"]), work, work / "resume.log")
    return {"work": work, "single": single, "double": double, "resumed": resumed}


def _load(path: Path):
    import torch

    return torch.load(path, map_location="cpu", weights_only=False)


def _loss_rows(history: list[dict]) -> list[dict]:
    return [r for r in history if "loss" in r]


# ------------------------------------------------------------------------------------------------------------
# the checks

LOSS_KEYS = ["loss", "loss_contrastive", "loss_memory", "loss_koleo"]


def _losses(run: dict) -> list[list[float]]:
    return [[r[k] for k in LOSS_KEYS] for r in _loss_rows(run["history"])]


@pytest.mark.parametrize("run", sorted(RUNS))
def test_two_ranks_train_like_one_process_with_twice_the_batch(runs, run):
    import torch

    work = runs["work"]
    one = _load(work / "world1" / run / "rank0.pt")
    r0, r1 = (_load(work / "world2" / run / f"rank{r}.pt") for r in (0, 1))
    rows1, rows2 = _loss_rows(one["history"]), _loss_rows(r0["history"])
    assert [r["iteration"] for r in rows1] == [r["iteration"] for r in rows2] == list(range(1, ITERATIONS + 1))
    equivalence.assert_losses_close(_losses(r0), _losses(one), LOSS_TERMS)
    assert all(r["loss_memory"] > 0 for r in rows1[3:])  # queued from step 2 on, compared with from step 3
    if run == "koleo_global":
        assert all(r["loss_koleo"] != 0 for r in rows1)
    for key in one["model"]:
        assert torch.equal(r0["model"][key], r1["model"][key]), key  # DDP keeps the ranks bit-identical
    assert sorted(one["gradients"]) == sorted(r0["gradients"]) == sorted(one["model"].keys() & one["gradients"])
    bounds = equivalence.weight_bounds(one["gradients"], MOMENTUM, one["model"])
    assert len(bounds) > 10 and all(len(one["gradients"][n]) == ITERATIONS for n in bounds)
    equivalence.assert_within_bounds(r0["model"], one["model"], bounds)
    # the memory: the same on both ranks (bit for bit), and the one-process memory up to rounding
    for key in ("ptr", "filled", "last_batch"):
        assert r0["memory"][key] == r1["memory"][key] == one["memory"][key]
    assert torch.equal(r0["memory"]["labels"], one["memory"]["labels"])
    assert torch.equal(r0["memory"]["embeddings"], r1["memory"]["embeddings"])
    torch.testing.assert_close(r0["memory"]["embeddings"], one["memory"]["embeddings"], atol=DESCRIPTOR_ATOL, rtol=0)
    assert one["memory"]["filled"] == MEMORY


def test_a_run_whose_ranks_read_the_same_half_of_each_batch_fails_the_bounds(runs):
    """The comparison above catches a broken data split: both ranks training on rank 0's share of every batch
    (the other half of the global batch never seen) differ from the one-process run far beyond the bounds, in
    the losses from the first step and in the weights."""
    work = runs["work"]
    one = _load(work / "world1" / "irt_l" / "rank0.pt")
    broken = _load(work / "world2" / "broken" / "rank0.pt")
    first_one, first_broken = _losses(one)[0][0], _losses(broken)[0][0]
    assert abs(first_broken - first_one) > 100 * equivalence.loss_rtol(LOSS_TERMS) * abs(first_one)
    bounds = equivalence.weight_bounds(one["gradients"], MOMENTUM, one["model"])
    equivalence.assert_outside_bounds(broken["model"], one["model"], bounds)


def test_weights_move(runs):
    """Guard for the comparisons above: 6 steps change the weights far beyond the tolerance."""
    import torch

    from vitrieval.config import Config, apply_overrides
    from vitrieval.model import Encoder

    torch.manual_seed(7)
    cfg = apply_overrides(Config(), COMMON + ["data.root=x"])
    start = Encoder(cfg.model).state_dict()
    trained = _load(runs["work"] / "world1" / "irt_l" / "rank0.pt")["model"]
    assert max(float((trained[k] - v).abs().max()) for k, v in start.items()) > 1e-3


def test_periodic_evaluation_is_sharded_and_matches(runs):
    work = runs["work"]
    for run in RUNS:
        one = _load(work / "world1" / run / "rank0.pt")
        r0, r1 = (_load(work / "world2" / run / f"rank{r}.pt") for r in (0, 1))
        evals1 = [r for r in one["history"] if "recall@1" in r]
        evals2 = [r for r in r0["history"] if "recall@1" in r]
        assert [r["iteration"] for r in evals1] == [r["iteration"] for r in evals2] == [0, 2, 4, ITERATIONS]
        for a, b in zip(evals1, evals2):
            assert abs(a["recall@1"] - b["recall@1"]) <= 1 / 32 + 1e-9
        assert r0["recall"] and not r1["recall"]  # rank 0 computes the metric, the other ranks only embed
        assert [r for r in r1["history"] if "recall@1" in r] == []


def test_only_rank_zero_writes_logs_metrics_and_checkpoints(runs):
    work = runs["work"]
    marks = work / "world2" / "marks"
    assert sorted(p.name for p in marks.iterdir()) == ["checkpoint.rank0", "eval_json.rank0", "model.rank0"]
    run = work / "world2" / "irt_l"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    loss_iters = [r["iteration"] for r in rows if "loss" in r]
    assert loss_iters == list(range(1, ITERATIONS + 1))  # each row once
    log = (run / "train.log").read_text()
    assert log.count("iteration 1: loss") == 1 and log.count("done: 6 iterations") == 1
    # console: rank 0 only, once per run (RUNS, resume, broken)
    assert runs["double"].count("iteration 1: loss") == len(RUNS) + 2
    assert "world size 2" in log
    assert (run / "checkpoints" / "last.pt").is_file() and (run / "model" / "model.safetensors").is_file()


def test_resume_under_torchrun_equals_an_uninterrupted_run(runs):
    import torch

    work = runs["work"]
    assert "resumed from" in runs["resumed"] and "at iteration 3" in runs["resumed"]
    resumed = _load(work / "world2" / "resume" / "checkpoints" / "last.pt")
    straight = _load(work / "world2" / "irt_l" / "checkpoints" / "last.pt")
    assert resumed["iteration"] == straight["iteration"] == ITERATIONS
    for key, value in straight["model"].items():
        assert torch.equal(resumed["model"][key], value), key
    for key in ("embeddings", "labels"):
        assert torch.equal(resumed["memory"][key], straight["memory"][key])
    assert len(resumed["rng_per_rank"]) == 2
    rows = [json.loads(line) for line in (work / "world2" / "resume" / "metrics.jsonl").read_text().splitlines()]
    straight_rows = [json.loads(line)
                     for line in (work / "world2" / "irt_l" / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in rows if "loss" in r] == [r["loss"] for r in straight_rows if "loss" in r]


def test_sharded_extraction_equals_one_process(runs):
    work = runs["work"]
    single = _load(work / "world1" / "extract.rank0.pt")
    for r in (0, 1):
        got = _load(work / "world2" / f"extract.rank{r}.pt")
        for ext in (got["ext"], got["local"], single["ext"]):
            assert ext.indices.tolist() == list(range(EXTRACT_ITEMS - 1))  # table order, no duplicate
            assert ext.bad_paths == [str(work / "broken.png")]
        np.testing.assert_array_equal(got["ext"].descriptors, got["local"].descriptors)
        np.testing.assert_array_equal(got["ext"].descriptors, single["ext"].descriptors)


def test_shards_are_whole_batches_disjoint_and_covering():
    from vitrieval.embed import shard_bounds

    for n in (0, 1, 5, 13, 64, 65, 200):
        for bs in (1, 3, 4, 64):
            for world in (1, 2, 3, 8):
                bounds = [shard_bounds(n, bs, r, world) for r in range(world)]
                assert bounds[0][0] == 0 and bounds[-1][1] == n
                assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
                assert all(start % bs == 0 or start == n for start, _ in bounds)


def test_sampler_shares_concatenate_to_the_one_process_batches():
    from vitrieval.data.sampler import ClassBalancedBatchSampler

    labels = np.repeat(np.arange(24), 5)
    one = ClassBalancedBatchSampler(labels, 16, 4, seed=3)
    ranks = [ClassBalancedBatchSampler(labels, 8, 4, seed=3, rank=r, world_size=2) for r in (0, 1)]
    for epoch in (0, 1):
        for s in (one, *ranks):
            s.set_epoch(epoch)
        shares = [list(s) for s in ranks]
        assert [a + b for a, b in zip(*shares)] == list(one)
        for a, b in zip(*shares):  # disjoint classes per rank
            assert not {int(labels[i]) for i, _ in a} & {int(labels[i]) for i, _ in b}


def _train_command(argv: list[str]) -> int:
    """``vitrieval train ARGS`` through the train sub-command's own parser and runner."""
    import argparse
    import logging

    import torch

    from vitrieval.cli import train_cmd

    torch.set_num_threads(1)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(prog="vitrieval")
    train_cmd.add_parser(parser.add_subparsers(dest="command"))
    return train_cmd.run(parser.parse_args(argv))


if __name__ == "__main__":  # python tests/test_training_pk_distributed.py WORKDIR DATA | train ARGS (torchrun or not)
    if sys.argv[1] == "train":
        sys.exit(_train_command(sys.argv[1:]))
    _worker(Path(sys.argv[1]), Path(sys.argv[2]))
