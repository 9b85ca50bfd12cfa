"""The input pipeline's rules (data/loading.py), the epoch-spanning P x K sampler and the tuple loader that is fed
each epoch's tuples: the same items as one loader per epoch, worker processes started once."""

from __future__ import annotations

import logging
from dataclasses import replace
from itertools import islice
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader
from torch.utils.data import dataloader as torch_dataloader

from vitrieval.config import Config, apply_overrides
from vitrieval.data import loading
from vitrieval.data.loading import auto_num_workers, loader_options, resolve_num_workers
from vitrieval.data.readers import read_dataset
from vitrieval.data.sampler import ClassBalancedBatchSampler, SpanningBatchSampler
from vitrieval.data.tuples import (
    EpochTupleBatches,
    EpochTuples,
    TupleDataset,
    TupleImages,
    collate_tuples,
    epoch_base_seed,
)


# -- the auto rule -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("device", "cores", "world", "threads", "expected"), [
    ("cpu", 2, 1, 2, 0),      # this CI box: the model's two threads take both cores
    ("cpu", 2, 1, 1, 1),      # one model thread leaves a core to decode
    ("cpu", 16, 1, 8, 8),     # 16 logical cores, torch's 8 threads (one per physical core)
    ("cpu", 64, 1, 32, 8),    # capped
    ("cuda", 16, 1, 16, 8),   # one GPU: the model needs about one core, capped at 8
    ("cuda", 4, 1, 4, 3),
    ("cuda", 96, 8, 96, 8),   # an 8-GPU node: 12 cores per rank
    ("cuda", 8, 4, 8, 1),     # 2 cores per rank
    ("cuda", 2, 4, 2, 0),     # fewer cores than ranks
])
def test_auto_gives_each_rank_the_cores_beside_the_model(device, cores, world, threads, expected):
    assert auto_num_workers(device, world, cores=cores, model_threads=threads) == expected


def test_an_explicit_number_wins_and_auto_is_logged_once(caplog, monkeypatch):
    monkeypatch.setattr(loading, "_logged", set())
    assert resolve_num_workers(3, "cpu") == 3
    assert resolve_num_workers(0, "cuda") == 0
    with pytest.raises(ValueError, match="num_workers must be >= 0"):
        resolve_num_workers(-1, "cpu")
    with caplog.at_level(logging.INFO, logger="vitrieval.data.loading"):
        first = resolve_num_workers("auto", "cpu")
        second = resolve_num_workers("auto", "cpu")
    assert first == second == auto_num_workers("cpu")
    assert [r.getMessage() for r in caplog.records].count(caplog.records[0].getMessage()) == 1
    assert "data.num_workers=auto" in caplog.records[0].getMessage()


def test_pinned_memory_exactly_on_cuda_and_persistence_only_with_workers():
    assert loader_options(0, "cpu") == {"num_workers": 0, "pin_memory": False}
    assert loader_options(2, "cuda")["pin_memory"] is True
    assert loader_options(2, "cuda:1", persistent=True)["persistent_workers"] is True
    assert loader_options(0, "cuda", persistent=True) == {"num_workers": 0, "pin_memory": True}
    assert loader_options(2, "cpu")["prefetch_factor"] == 2  # two batches in flight per worker, set explicitly


def test_config_takes_auto_or_an_integer():
    assert Config().data.num_workers == "auto"
    assert apply_overrides(Config(), ["data.num_workers=3"]).data.num_workers == 3  # not the string "3"
    assert apply_overrides(Config(), ["data.num_workers=auto"]).data.num_workers == "auto"
    for bad in ("-1", "many", "1.5", "true"):
        with pytest.raises(ValueError, match="data.num_workers must be >= 0 .*or auto"):
            apply_overrides(Config(), [f"data.num_workers={bad}"])


# -- the P x K sampler across epochs --------------------------------------------------------------------------------
def _labels() -> np.ndarray:
    rng = np.random.default_rng(3)
    return np.repeat(np.arange(23), rng.integers(2, 7, size=23))  # uneven classes, some below K


@pytest.mark.parametrize(("epoch", "skip"), [(0, 0), (1, 3), (2, 0)])
def test_spanning_sampler_chains_the_per_epoch_batches(epoch, skip):
    sampler = ClassBalancedBatchSampler(_labels(), 12, 4, seed=7)
    expected = []
    for e in range(epoch, epoch + 4):
        sampler.set_epoch(e, skip if e == epoch else 0)
        expected.extend(list(sampler))
    assert sampler.epoch_length(epoch) == len(sampler._epoch_batches(epoch))
    got = list(islice(iter(SpanningBatchSampler(sampler, epoch, skip)), len(expected)))
    assert got == expected


def test_spanning_sampler_gives_each_rank_its_share():
    ranks = [ClassBalancedBatchSampler(_labels(), 8, 4, seed=7, rank=r, world_size=2) for r in range(2)]
    whole = [batch for e in (1, 2, 3) for batch in ranks[0]._epoch_batches(e)]  # the global batches of 16
    shares = [list(islice(iter(SpanningBatchSampler(s, 1)), len(whole))) for s in ranks]
    assert [a + b for a, b in zip(*shares)] == whole
    assert all(not {i for i, _ in a} & {i for i, _ in b} for a, b in zip(*shares))


# -- the tuple loader: one pool of workers, each epoch's tuples -----------------------------------------------------
@pytest.fixture(scope="module")
def sfm_table(tmp_path_factory):
    from vitrieval.data.sfm120k_layout import write_sfm120k_layout
    from vitrieval.data.synthetic import render_product

    def views(ids, n):
        return {c: [render_product(c, v, size=32, seed=5) for v in range(n)] for c in ids}

    root = tmp_path_factory.mktemp("sfm") / "train"
    write_sfm120k_layout(root, views(range(12), 4), views(range(100, 103), 3), seed=0)
    return read_dataset("sfm120k", root).split("train")


def _transform():
    from vitrieval.data.transforms import train_transform

    return train_transform({"image_size": 32, "mean": (0.5,) * 3, "std": (0.5,) * 3}, resize="square")


def _count_worker_pools(monkeypatch) -> list[int]:
    started: list[int] = []
    original = torch_dataloader._MultiProcessingDataLoaderIter.__init__

    def counting(self, loader):
        started.append(loader.num_workers)
        original(self, loader)

    monkeypatch.setattr(torch_dataloader._MultiProcessingDataLoaderIter, "__init__", counting)
    return started


def test_persistent_workers_serve_each_epochs_own_tuples(sfm_table, monkeypatch):
    """Epoch 1 (other tuples, other seeds) through the same two workers gives exactly what a loader made for
    epoch 1 would: the keys carry the tuples, the workers' copy of the dataset holds none."""
    started = _count_worker_pools(monkeypatch)
    rng = np.random.default_rng(0)
    n = len(sfm_table)
    epochs = [EpochTuples(rng.integers(0, n, 6), rng.integers(0, n, 6), rng.integers(0, n, (6, 2))) for _ in range(2)]
    batches = EpochTupleBatches(per_batch=4)
    loader = DataLoader(TupleImages(sfm_table, _transform()), batch_sampler=batches, collate_fn=collate_tuples,
                        **loader_options(2, "cpu", persistent=True))
    for epoch, tuples in enumerate(epochs):
        batches.set_epoch(tuples, epoch_base_seed(9, epoch))
        got = list(loader)
        reference = TupleDataset(sfm_table, tuples, _transform(), seed=9, epoch=epoch)
        expected = [collate_tuples([reference[i] for i in idx]) for idx in ([0, 1, 2, 3], [4, 5])]
        assert [b["tuples"].tolist() for b in got] == [[0, 1, 2, 3], [4, 5]]
        for a, b in zip(got, expected):
            assert torch.equal(a["images"], b["images"]) and torch.equal(a["labels"], b["labels"])
        assert got[0]["labels"].tolist()[:4] == sfm_table.labels[epochs[epoch].rows(0)].tolist()
    assert started == [2], "the two workers start once, for both epochs"
    loading.close_loader(loader)
    assert loader._iterator is None


def test_tuple_batches_resume_and_share_like_the_trainer():
    tuples = EpochTuples(np.arange(10), np.arange(10) + 1, np.zeros((10, 1), np.int64))
    batches = EpochTupleBatches(per_batch=4)
    batches.set_epoch(tuples, 5, skip=1, rank=1, world=2)
    assert [[k[0] for k in b] for b in batches] == [[5, 7], [9]]
    assert len(batches) == 2 and all(k[2] == 5 and k[1] == tuple(tuples.rows(k[0])) for b in batches for k in b)


def test_a_carried_decode_error_reaches_the_batch_whole(sfm_table, tmp_path):
    from vitrieval.data.images import ImageDecodeError

    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    table = sfm_table.select([True] * len(sfm_table))
    table.records[3] = replace(table.records[3], path=str(bad))
    tuples = EpochTuples(np.array([0, 3]), np.array([1, 2]), np.array([[4], [5]]))
    batches = EpochTupleBatches(per_batch=2)
    batches.set_epoch(tuples, 0)
    loader = DataLoader(TupleImages(table, _transform(), carry_errors=True), batch_sampler=batches,
                        collate_fn=collate_tuples, num_workers=1)
    (batch,) = list(loader)
    assert batch["tuples"].tolist() == [0] and batch["bad"].tolist() == [1]
    (error,) = batch["errors"]
    assert isinstance(error, ImageDecodeError) and error.path == str(Path(bad))
