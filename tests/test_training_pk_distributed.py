"""Several processes: torchrun with 2 CPU ranks (gloo) trains, resumes and extracts exactly like one process.

The module is also what the launches run (``python tests/test_training_pk_distributed.py WORKDIR DATA``, or
``... train ARGS`` for the ``vitrieval train`` sub-command): one launch per setting (one process; two ranks; the
two-rank ``--resume`` through the train command), each running every scenario in one process group, so the whole
file costs three launches (about 1.5 minutes on two busy cores). Every process uses one thread.

Tolerances. Two ranks compute the same global loss as one process, but the gradient reaches the weights by a
different float32 summation (each rank back-propagates its half, DDP all-reduces and averages), so per-iteration
losses, weights after 6 AdamW steps (lr 1e-3: weights move by ~1e-3 or more) and the memory agree to float32
rounding, checked with ``atol=1e-5, rtol=1e-5`` (observed: at most 1e-6 on losses of about 5, 6e-7 on weights,
1.3e-7 on the memory). The one exception is the attention key bias, on which the loss does not depend at all
(see ``_without_key_bias``). Between the ranks of one run, and between a resumed and an uninterrupted two-rank
run, the computations are identical and the results are compared exactly; so is sharded extraction (the shards
are whole batches of the one-process batching).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from shape_folders import write_shape_folders
from torchrun_launch import launch, torchrun, write_tracker

ITERATIONS = 6
LR = 1e-3
BATCH = 8  # per rank; the one-process reference uses 2 * BATCH
N_CLASSES, PER_CLASS = 16, 4  # folder dataset: 8 training classes (32 images), 8 held-out classes
EXTRACT_ITEMS = 13  # not a multiple of the number of ranks nor of the extraction batch
EXTRACT_BATCH = 3

COMMON = [
    "model.name=deit_tiny_patch16_224", "model.pretrained=false", "model.image_size=32", "model.patch_size=8",
    "model.depth=2", "data.dataset=folder", "data.num_workers=0", "data.images_per_class=4",
    f"train.iterations={ITERATIONS}", f"train.lr={LR}", "train.amp='off'", "train.device=cpu", "train.log_every=1",
    "train.eval_every=2", "train.checkpoint_every=1000", "train.seed=7", "train.eval_ks=[1,2]",
    "memory.size=40", "memory.start_iteration=2",
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
TOL = dict(atol=1e-5, rtol=1e-5)


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
    from vitrieval.config import Config, apply_overrides
    from vitrieval.data.table import ImageTable, Record
    from vitrieval.distributed import DistContext
    from vitrieval.embed import extract
    from vitrieval.model import Encoder
    from vitrieval.training.pk_trainer import Trainer

    ctx = DistContext.from_env()
    world = work / f"world{ctx.world_size}"
    _record_writes(world / "marks", ctx.rank)
    batch = BATCH * (2 // ctx.world_size)
    runs = dict(RUNS)
    if ctx.world_size == 2:  # the first half of a run that the CLI resumes (a separate launch)
        runs["resume"] = [f"train.iterations={ITERATIONS // 2}"]
    for name, extra in runs.items():
        cfg = apply_overrides(Config(name=name), COMMON + [f"data.root={data}", f"train.batch_size={batch}"] + extra)
        trainer = Trainer(cfg, world / name, progress=False)
        result = trainer.run()
        memory = trainer.objective.memory.state_dict()
        torch.save({"history": result.history, "model": trainer.encoder.state_dict(), "memory": memory,
                    "recall": result.recall_at_k}, world / name / f"rank{ctx.rank}.pt")

    # sharded extraction of 13 items (one unreadable) with batches of 3, by a freshly initialised encoder
    torch.manual_seed(0)
    encoder = Encoder(trainer.cfg.model)
    rows = trainer.test_table.records[:EXTRACT_ITEMS - 1] + [Record(str(work / "broken.png"), 99)]
    table = ImageTable(rows, "extract")
    ext = extract(encoder, table, batch_size=EXTRACT_BATCH, num_workers=0, amp="off", skip_bad=True, progress=False)
    local = extract(encoder, table, batch_size=EXTRACT_BATCH, num_workers=0, amp="off", skip_bad=True,
                    progress=False, distributed=False)
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


def _without_key_bias(got, want, key: str):
    """The query and value thirds of a ``qkv.bias``, after bounding the key third.

    Adding a constant vector to every key shifts all the attention logits of a query by the same amount, which the
    softmax ignores: the loss does not depend on the key bias and its exact gradient is 0. What back-propagation
    returns is float32 rounding noise (about 1e-12) that differs with the summation order, and AdamW divides it by
    its own running RMS, so either run moves these entries by up to ``lr`` per step in a noise-chosen direction.
    They are only bounded here; every parameter the loss depends on is compared at the tolerance.
    """
    dim = want.shape[0] // 3
    assert float((got[dim:2 * dim] - want[dim:2 * dim]).abs().max()) <= 2 * ITERATIONS * LR, key
    keep = list(range(dim)) + list(range(2 * dim, 3 * dim))
    return got[keep], want[keep]


def _loss_rows(history: list[dict]) -> list[dict]:
    return [r for r in history if "loss" in r]


# ------------------------------------------------------------------------------------------------------------
# the checks

@pytest.mark.parametrize("run", sorted(RUNS))
def test_two_ranks_train_like_one_process_with_twice_the_batch(runs, run):
    import torch

    work = runs["work"]
    one = _load(work / "world1" / run / "rank0.pt")
    r0, r1 = (_load(work / "world2" / run / f"rank{r}.pt") for r in (0, 1))
    rows1, rows2 = _loss_rows(one["history"]), _loss_rows(r0["history"])
    assert [r["iteration"] for r in rows1] == [r["iteration"] for r in rows2] == list(range(1, ITERATIONS + 1))
    keys = ["loss", "loss_contrastive", "loss_memory", "loss_koleo"]
    np.testing.assert_allclose([[r[k] for k in keys] for r in rows2], [[r[k] for k in keys] for r in rows1], **TOL)
    assert all(r["loss_memory"] > 0 for r in rows1[3:])  # queued from step 2 on, compared with from step 3
    if run == "koleo_global":
        assert all(r["loss_koleo"] != 0 for r in rows1)
    for key, value in one["model"].items():
        assert torch.equal(r0["model"][key], r1["model"][key]), key
        got = r0["model"][key]
        if key.endswith("attn.qkv.bias"):  # the key bias: see _without_key_bias
            got, value = _without_key_bias(got, value, key)
        torch.testing.assert_close(got, value, **TOL, msg=lambda m, key=key: f"{key}: {m}")
    # the memory: the same on both ranks (bit for bit), and the one-process memory up to rounding
    for key in ("ptr", "filled", "last_batch"):
        assert r0["memory"][key] == r1["memory"][key] == one["memory"][key]
    assert torch.equal(r0["memory"]["labels"], one["memory"]["labels"])
    assert torch.equal(r0["memory"]["embeddings"], r1["memory"]["embeddings"])
    torch.testing.assert_close(r0["memory"]["embeddings"], one["memory"]["embeddings"], **TOL)
    assert one["memory"]["filled"] == 40


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
    assert runs["double"].count("iteration 1: loss") == len(RUNS) + 1  # console: rank 0 only, once per run
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
