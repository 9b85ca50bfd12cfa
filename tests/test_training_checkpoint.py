"""Checkpoints: atomic writes, unreadable or missing files named in the error, RNG capture / restore per rank."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

import vitrieval.training.checkpoint as checkpoint
from vitrieval.config import Config
from vitrieval.distributed import DistContext
from vitrieval.training.checkpoint import (
    LAST,
    capture_rng_state,
    check_checkpoint_model,
    load_checkpoint,
    restore_rank_rng,
    restore_rng_state,
    save_checkpoint,
)


def _draws() -> tuple:
    return random.random(), float(np.random.rand()), torch.rand(3).tolist()


def test_save_then_load_round_trips_and_leaves_no_temporary_file(tmp_path):
    state = {"iteration": 7, "weights": torch.arange(5.0), "nested": {"a": [1, 2]}}
    path = save_checkpoint(tmp_path, state)
    assert path == tmp_path / LAST and sorted(p.name for p in tmp_path.iterdir()) == [LAST]
    loaded = load_checkpoint(tmp_path)
    assert loaded["iteration"] == 7 and torch.equal(loaded["weights"], state["weights"])
    assert loaded["nested"] == {"a": [1, 2]}
    save_checkpoint(tmp_path, {"iteration": 8})  # replaces the previous one
    assert load_checkpoint(tmp_path) == {"iteration": 8}


def test_a_crash_while_writing_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    save_checkpoint(tmp_path, {"iteration": 1})

    def half_written(obj, f):
        with open(f, "wb") as fh:
            fh.write(b"PK\x03\x04 half a zip")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint.torch, "save", half_written)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path, {"iteration": 2})
    monkeypatch.undo()
    assert load_checkpoint(tmp_path) == {"iteration": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == [LAST]  # the temporary file is gone


def test_missing_and_truncated_checkpoints_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"--resume: no checkpoint at {tmp_path / LAST}"):
        load_checkpoint(tmp_path)
    save_checkpoint(tmp_path, {"weights": torch.randn(1000)})
    data = (tmp_path / LAST).read_bytes()
    (tmp_path / LAST).write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=rf"checkpoint {tmp_path / LAST} is unreadable \("):
        load_checkpoint(tmp_path)


def test_rng_capture_and_restore_replays_python_numpy_and_torch():
    state = capture_rng_state()
    assert set(state) >= {"python", "numpy", "torch"}
    first = _draws()
    restore_rng_state(state)
    assert _draws() == first


def test_each_rank_restores_its_own_rng_or_rank_zeros_with_another_world_size():
    per_rank = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed)
        per_rank.append(capture_rng_state())
    expected = []
    for s in per_rank:
        restore_rng_state(s)
        expected.append(_draws())
    state = {"rng": per_rank[0], "rng_per_rank": per_rank}
    restore_rank_rng(state, DistContext(rank=1, world_size=2))
    assert _draws() == expected[1]
    restore_rank_rng(state, DistContext(rank=2, world_size=3))  # written by 2 ranks, resumed on 3
    assert _draws() == expected[0]
    restore_rank_rng({"rng": per_rank[1]}, DistContext())  # an old checkpoint without per-rank states
    assert _draws() == expected[1]


def test_a_checkpoint_for_other_model_settings_is_refused_by_name(tmp_path):
    config = Config()
    state = {"config": config.to_dict()}
    check_checkpoint_model(state, config, tmp_path / LAST)  # the same settings: fine
    state["config"]["model"]["depth"] = 3
    with pytest.raises(ValueError, match=rf"checkpoint {tmp_path / LAST} was written for model settings .*'depth': 3"):
        check_checkpoint_model(state, config, tmp_path / LAST)
