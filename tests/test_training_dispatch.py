"""``train()`` picks the trainer by ``train.sampler``; the trainers do not import each other (imports inside functions
included)."""

from __future__ import annotations

import pytest

import vitrieval.training.dispatch as dispatch
from test_architecture import all_modules, import_graph
from vitrieval.config import Config, apply_overrides


@pytest.mark.parametrize("sampler,expected", [("classes", "Trainer"), ("tuples", "TupleTrainer")])
def test_train_runs_the_trainer_the_sampler_asks_for(sampler, expected, monkeypatch, tmp_path):
    calls = []

    def fake(name):
        class Fake:
            def __init__(self, config, output_dir, resume=False, progress=True):
                calls.append((name, output_dir, resume, progress))

            def run(self):
                return f"result of {name}"
        return Fake

    monkeypatch.setattr(dispatch, "Trainer", fake("Trainer"))
    monkeypatch.setattr(dispatch, "TupleTrainer", fake("TupleTrainer"))
    cfg = apply_overrides(Config(), [f"train.sampler={sampler}"])
    assert dispatch.train(cfg, tmp_path, resume=True, progress=False) == f"result of {expected}"
    assert calls == [(expected, tmp_path, True, False)]


def test_train_is_reachable_from_every_public_name():
    import vitrieval
    import vitrieval.training

    assert vitrieval.train is vitrieval.training.train is dispatch.train
    assert vitrieval.training.TrainResult.__module__ == "vitrieval.training.lifecycle"


def test_the_trainers_do_not_import_each_other_or_the_dispatcher():
    """The whole package has no import cycle (test_architecture.py); here: the edges that used to form one."""
    graph = import_graph(all_modules())
    assert "vitrieval.training.tuple_trainer" in graph
    for a, b in (("pk_trainer", "tuple_trainer"), ("tuple_trainer", "pk_trainer"), ("pk_trainer", "dispatch"),
                 ("tuple_trainer", "dispatch"), ("lifecycle", "pk_trainer"), ("lifecycle", "tuple_trainer")):
        assert f"vitrieval.training.{b}" not in graph[f"vitrieval.training.{a}"], (a, b)
    assert not any(m.startswith("vitrieval.training") for m in graph["vitrieval.data.tuples"])
