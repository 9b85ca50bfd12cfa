"""``vitrieval demo`` (:mod:`vitrieval.demo.run`): the quick variant end to end (pretraining, report, results,
learning, index, its output when not on a terminal), the output-folder guard, the full demo (slow). The data step is
in ``test_demo_data.py``, the pretraining's parts in ``test_demo_pretrain.py``."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vitrieval.cli import main
from vitrieval.demo import VARIANTS, run_demo
from vitrieval.demo.run import _fresh_dir, _seal_dir


def _cli(argv: list[str]) -> tuple[int, str]:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main(argv)
    return code, buf.getvalue()


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory) -> dict:
    """One ``vitrieval demo --quick`` run, shared by the tests below: the command in a process of its own, its
    output going to pipes (not a terminal) and progress bars not switched off by a flag."""
    out = tmp_path_factory.mktemp("demo") / "out"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    done = subprocess.run([sys.executable, "-m", "vitrieval", "demo", "--quick", "--output", str(out), "--seed", "0"],
                          capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    return {"out": out, "stdout": done.stdout, "stderr": done.stderr, "results": results}


def test_quick_demo_output_off_a_terminal_is_short_lines_without_bar_fragments(quick_demo) -> None:
    printed = quick_demo["stdout"] + quick_demo["stderr"]
    assert "\r" not in printed
    assert len(printed.splitlines()) <= 100, printed
    assert "ModuleNotFoundError" not in printed and "faiss.loader" not in printed
    assert "Loading pretrained weights" not in printed  # timm's loader lines are below the default level too
    training = [line for line in quick_demo["stderr"].splitlines() if re.search(r"iteration \d+: loss", line)]
    results = quick_demo["results"]
    expected = sum(n // every for n, every in (
        (results["pretrained"]["iterations"], results["pretrained"]["log_every"]),
        (results["IRT_L"]["iterations"], results["IRT_L"]["log_every"]),
        (results["IRT_R"]["iterations"], results["IRT_R"]["log_every"])))
    assert len(training) == expected  # one summary line per log interval


def test_quick_demo_pretrains_on_identities_of_its_own_and_says_so(quick_demo) -> None:
    from safetensors.torch import load_file

    from vitrieval.model import load

    out, pre = quick_demo["out"], quick_demo["results"]["pretrained"]
    assert pre["weights"] == str(out / "pretrain" / "backbone.safetensors")
    assert "nsoftmax" in pre["objective"] and "none of them is a fine-tuning or test identity" in pre["data"]
    pretraining = {Path(line.split(",")[0]).parent.parent for line in
                   (out / "data" / "pretrain_table.csv").read_text().splitlines()[1:]}
    assert pretraining == {out / "data" / "pretrain"}  # none of the fine-tuning / test images
    weights = load_file(pre["weights"])
    irt_o = load(out / "irt_o").backbone.state_dict()
    assert all(torch.equal(irt_o[k], weights[k]) for k in weights) and irt_o.keys() == weights.keys()
    for run in ("irt_l", "irt_r"):
        config = json.loads((out / run / "model" / "config.json").read_text())
        assert config["model"]["pretrained_file"] == pre["weights"]
    html = (out / "report.html").read_text()
    assert "Pretraining (the demo&#x27;s stand-in for ImageNet)" in html or "Pretraining (the demo's" in html
    assert "IRT_O: pretrained by nsoftmax classification" in quick_demo["stdout"]
    assert "KoLeo" in quick_demo["stdout"]


def test_quick_demo_results_json_has_every_variant(quick_demo) -> None:
    results = quick_demo["results"]
    for key in VARIANTS:
        recall = results[key]["recall_at_k"]
        assert set(recall) == {"1", "2", "4", "8"}
        assert all(0.0 <= v <= 1.0 for v in recall.values())
    assert results["seconds"] > 0
    data = results["data"]
    assert data["train_classes"] == 120 and data["test_classes"] == 30 and data["test_images"] == 180
    assert results["IRT_L"]["koleo_weight"] == 0.0 and results["IRT_R"]["koleo_weight"] == 0.7


def test_quick_demo_report_is_self_contained_with_table_and_figures(quick_demo) -> None:
    html = (quick_demo["out"] / "report.html").read_text()
    assert '<table class="recall">' in html
    for row in ("raw pixels", "IRT_O", "IRT_L", "IRT_R"):
        assert f'<td class="variant">{row}' in html
    assert len(re.findall(r'<img src="data:image/png;base64,', html)) >= 5
    assert not re.search(r'(src|href)="(https?:|file:)', html)  # nothing loaded from elsewhere
    raw_r1 = 100 * quick_demo["results"]["raw_pixels"]["recall_at_k"]["1"]
    assert f"Raw-pixel baseline: Recall@1 = {raw_r1:.1f}%" in html


def test_quick_demo_pretraining_and_fine_tuning_each_improve_recall(quick_demo) -> None:
    """Untrained encoder (the pretraining run's initial weights) < IRT_O (pretrained) < IRT_L, IRT_R."""
    import dataclasses

    from vitrieval.data.readers import read_dataset
    from vitrieval.demo.run import _embed, _recall
    from vitrieval.demo.variants import QUICK_PRESET, pretrain_config
    from vitrieval.model import Encoder
    from vitrieval.training import seed_everything

    out, results = quick_demo["out"], quick_demo["results"]
    cfg = pretrain_config(QUICK_PRESET, out / "data" / "pretrain_table.csv", 0)
    seed_everything(0)
    untrained = Encoder(dataclasses.replace(cfg.model, pretrained=False, pretrained_file=None))
    test = read_dataset("csv", out / "data" / "table.csv").split("test")
    untrained_r1 = _recall(_embed(untrained, test, cfg), test.labels, [1])["1"]
    r1 = {v: results[v]["recall_at_k"]["1"] for v in VARIANTS}
    # measured (seed 0, 400 pretraining + 250 fine-tuning steps): untrained 8.9% -> IRT_O 16.1% -> IRT_L 20.0%,
    # IRT_R 20.6% (180 queries: one query is 0.56 points)
    assert r1["IRT_O"] >= untrained_r1 + 0.05, (untrained_r1, r1)
    assert r1["IRT_L"] >= r1["IRT_O"] + 0.02, r1
    assert r1["IRT_R"] >= r1["IRT_O"] + 0.02, r1


def test_quick_demo_irt_o_is_the_trainers_initial_encoder(quick_demo) -> None:
    """IRT_O must be the very weights IRT_L starts from: the trainer's iteration-0 evaluation agrees."""
    from vitrieval.training.run_log import read_metrics

    first = read_metrics(quick_demo["out"] / "irt_l" / "metrics.jsonl")[0]
    assert first["iteration"] == 0
    irt_o = quick_demo["results"]["IRT_O"]["recall_at_k"]
    for k, v in irt_o.items():
        assert first[f"recall@{k}"] == pytest.approx(v, abs=1e-9)


def test_quick_demo_leaves_a_searchable_index_and_prints_how(quick_demo) -> None:
    from vitrieval.index import Index

    out, results = quick_demo["out"], quick_demo["results"]
    index = Index.load(out / "index")
    assert len(index) == results["data"]["test_images"]
    assert Path(index.info["checkpoint"]) == (out / "irt_r" / "model").resolve()
    query = results["example_query"]
    assert index.search(query, k=1)[0][0].path == query
    code, stdout = _cli(["search", "--index", str(out / "index"), query, "-k", "3", "--json"])
    assert code == 0
    hits = json.loads(stdout)[0]["results"]
    assert hits[0]["path"] == query and hits[0]["score"] == pytest.approx(1.0, abs=1e-4)
    printed = quick_demo["stdout"]
    assert f"vitrieval search --index {out / 'index'} {query}" in printed
    assert f"vitrieval serve --index {out / 'index'}" in printed
    assert str(out / "report.html") in printed
    for label in ("raw pixels", "IRT_O", "IRT_L", "IRT_R"):
        assert label in printed
    assert (out / "demo.log").is_file() and "IRT_R" in (out / "demo.log").read_text()


def test_fresh_dir_refuses_a_folder_the_demo_did_not_write(tmp_path) -> None:
    foreign = tmp_path / "irt_l"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not written by `vitrieval demo`"):
        _fresh_dir(foreign)
    (foreign / "notes.txt").unlink()
    _fresh_dir(foreign)  # empty: taken
    (foreign / "config.yaml").write_text("name: demo")
    _seal_dir(foreign)
    _fresh_dir(foreign)  # the demo's own: replaced
    assert not foreign.exists()


@pytest.mark.slow
def test_full_demo_in_ten_minutes(tmp_path) -> None:
    """The default demo: under 10 minutes on 2 cores; the pretrained encoder above raw pixels, fine-tuning above it."""
    results = run_demo(tmp_path / "demo", progress=False, threads=1)
    r1 = {v: results[v]["recall_at_k"]["1"] for v in VARIANTS}
    assert results["seconds"] < 600, results["timings"]
    assert r1["IRT_O"] > r1["raw_pixels"], r1
    assert r1["IRT_L"] > r1["IRT_O"] and r1["IRT_R"] > r1["IRT_O"], r1
    assert (tmp_path / "demo" / "report.html").is_file()
