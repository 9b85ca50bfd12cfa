"""NSoftmax and SNCA under torchrun: 2 CPU ranks (gloo) train like one process with twice the batch, and every rank
holds the same proxies / the same SNCA memory.

The module is also the worker the launches run (``python tests/test_training_objectives_distributed.py WORKDIR
DATA``): two launches (one process; two ranks), each training both objectives in one process group (about 40 s on
two busy cores). KoLeo is over the global batch here (per rank it is, by design, another quantity than one
process's). Tolerances as in ``test_training_pk_distributed.py`` (derived in ``tests/equivalence.py``): the global
loss is the same, the gradient reaches the weights by another float32 summation; the runs train with SGD, so the
losses, the weights and the proxies (trained parameters too) are within the bounds of ``equivalence``, and the SNCA
memory's unit rows within ``DESCRIPTOR_ATOL``; between the two ranks of one run everything is compared exactly.
(SGD, unlike AdamW, is not invariant to a constant gradient scale, so a wrong 1 / world_size on the proxies' gradient
fails here too; it is also pinned directly in ``test_training_objectives_nsoftmax_snca.py``.)
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import equivalence
from shape_folders import write_shape_folders
from torchrun_launch import launch, torchrun

ITERATIONS = 4
LR = 1e-3
MOMENTUM = 0.9
BATCH = 8  # per rank; the one-process reference uses 2 * BATCH
N_CLASSES, PER_CLASS = 12, 4  # folder dataset: 6 training classes (24 images), 6 held out

COMMON = [
    "model.name=deit_tiny_patch16_224", "model.pretrained=false", "model.image_size=32", "model.patch_size=8",
    "model.depth=1", "model.embed_dim=64", "model.num_heads=2", "data.dataset=folder", "data.num_workers=0",
    "data.images_per_class=4", f"train.iterations={ITERATIONS}", f"train.lr={LR}", "train.optimizer=sgd",
    f"train.sgd_momentum={MOMENTUM}", "train.amp='off'",
    "train.device=cpu", "train.log_every=1", "train.eval_every=0", "train.checkpoint_every=1000", "train.seed=5",
    "train.eval_ks=[1]", "memory.size=0", "loss.koleo_weight=0.5", "loss.koleo_global=true",
]
RUNS = {"nsoftmax": ["loss.objective=nsoftmax"], "snca": ["loss.objective=snca"]}
STATE = {"nsoftmax": "nsoftmax_proxies", "snca": "snca_memory"}
# the larger of NSoftmax's (16 anchors x 6 proxies) and SNCA's (16 anchors x 24 training images in its memory) terms
LOSS_TERMS = 2 * BATCH * (N_CLASSES // 2) * PER_CLASS
# SNCA memory rows are unit descriptors: a chain of float32 reductions (patch embedding 192 terms, 1 block of width
# 64 / MLP 256) moved by reordering by at most Σ (n − 1) ε; the rows are updated at most ITERATIONS times
DESCRIPTOR_ATOL = ITERATIONS * (191 + 255) * equivalence.EPS32


def _make_dataset(root: Path) -> None:
    write_shape_folders(root, N_CLASSES, PER_CLASS, seed=1)


def _worker(work: Path, data: Path) -> None:
    import torch

    torch.set_num_threads(1)
    from vitrieval.config import Config, apply_overrides
    from vitrieval.distributed import DistContext
    from vitrieval.training.pk_trainer import Trainer

    ctx = DistContext.from_env()
    world = work / f"world{ctx.world_size}"
    gradients = equivalence.record_gradient_maxima()
    batch = BATCH * (2 // ctx.world_size)
    for name, extra in RUNS.items():
        cfg = apply_overrides(Config(name=name), COMMON + [f"data.root={data}", f"train.batch_size={batch}"] + extra)
        trainer = Trainer(cfg, world / name, progress=False)
        result = trainer.run()
        named = [*trainer.encoder.named_parameters(), *(("objective.proxies", p)  # nsoftmax's one parameter
                                                        for p in trainer.objective.parameters())]
        torch.save({"history": result.history, "model": trainer.encoder.state_dict(),
                    "state": trainer.objective.state_dict()[STATE[name]],
                    "gradients": equivalence.by_name(gradients, named)}, world / name / f"rank{ctx.rank}.pt")
    ctx.barrier()
    ctx.shutdown()


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("dist-objectives")
    data = work / "data"
    _make_dataset(data)
    me = str(Path(__file__).resolve())
    launch([sys.executable, me, str(work), str(data)], work, work / "world1.log")
    launch(torchrun([me, str(work), str(data)]), work, work / "world2.log")
    return work


def _load(path: Path):
    import torch

    return torch.load(path, map_location="cpu", weights_only=False)


@pytest.mark.parametrize("run", sorted(RUNS))
def test_two_ranks_train_like_one_process_and_keep_the_same_proxies_or_memory(runs, run):
    import torch

    one = _load(runs / "world1" / run / "rank0.pt")
    r0, r1 = (_load(runs / "world2" / run / f"rank{r}.pt") for r in (0, 1))
    keys = ["loss", f"loss_{run}", "loss_koleo"]
    rows1, rows2 = ([[r[k] for k in keys] for r in x["history"] if "loss" in r] for x in (one, r0))
    assert len(rows1) == len(rows2) == ITERATIONS
    equivalence.assert_losses_close(rows2, rows1, LOSS_TERMS)
    assert all(r[1] > 0 and r[2] != 0 for r in rows1)
    # the objective's state: bit-identical on both ranks, the one-process state up to rounding
    assert torch.equal(r0["state"], r1["state"])
    for key in one["model"]:
        assert torch.equal(r0["model"][key], r1["model"][key]), key
    bounds = equivalence.weight_bounds(one["gradients"], MOMENTUM, one["model"] | {"objective.proxies": one["state"]})
    assert len(bounds) > 5 and all(len(one["gradients"][n]) == ITERATIONS for n in bounds)
    equivalence.assert_within_bounds(r0["model"] | {"objective.proxies": r0["state"]},
                                     one["model"] | {"objective.proxies": one["state"]}, bounds)
    if run == "nsoftmax":  # the proxies are trained parameters: bounded above with the weights
        assert "objective.proxies" in bounds
    else:  # the SNCA memory: updated rows of unit descriptors
        torch.testing.assert_close(r0["state"], one["state"], atol=DESCRIPTOR_ATOL, rtol=0)


def test_the_state_moved(runs):
    """Guard: the proxies / the memory rows of the batches changed far beyond the tolerance in 4 steps."""
    import torch

    from vitrieval.config import LossConfig
    from vitrieval.training.objectives import NSoftmaxObjective

    start = NSoftmaxObjective(LossConfig(objective="nsoftmax"), list(range(6)), 64, seed=5).proxies.detach()
    trained = _load(runs / "world1" / "nsoftmax" / "rank0.pt")["state"]
    assert float((trained - start).abs().max()) > 1e-3
    memory = _load(runs / "world1" / "snca" / "rank0.pt")["state"]
    assert int((memory.norm(dim=1) - 1).abs().lt(1e-5).sum()) >= 16  # rows written by the updates are unit norm
    assert torch.isfinite(memory).all()


if __name__ == "__main__":
    _worker(Path(sys.argv[1]), Path(sys.argv[2]))
