"""``train()`` picks the trainer by ``train.sampler``, and the training package has no import cycle (imports inside
functions included)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import vitrieval.training.dispatch as dispatch
from vitrieval.config import Config, apply_overrides

SRC = Path(dispatch.__file__).resolve().parents[2]  # .../src


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


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph() -> dict[str, set[str]]:
    """Module -> the ``vitrieval`` modules it imports anywhere in its body (top level or inside functions)."""
    files = {_module_name(p): p for p in (SRC / "vitrieval").rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in files else node.module
                           for alias in node.names]
            graph[name] |= {t for t in targets if t in files and t != name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(component)

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle_goes_through_the_training_package():
    graph = _import_graph()
    assert "vitrieval.training.tuple_trainer" in graph
    cycles = [c for c in _cycles(graph) if any(m.startswith("vitrieval.training") for m in c)]
    assert cycles == []
    for a, b in (("pk_trainer", "tuple_trainer"), ("tuple_trainer", "pk_trainer"), ("pk_trainer", "dispatch"),
                 ("tuple_trainer", "dispatch"), ("lifecycle", "pk_trainer"), ("lifecycle", "tuple_trainer")):
        assert f"vitrieval.training.{b}" not in graph[f"vitrieval.training.{a}"], (a, b)
    assert not any(m.startswith("vitrieval.training") for m in graph["vitrieval.data.tuples"])
