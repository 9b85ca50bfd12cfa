"""Running rows resumably (vitrieval.reproduce.runner) and writing the side-by-side table (tables.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vitrieval.reproduce import rows
from vitrieval.reproduce.runner import Plan, StepFailed, dry_run_lines, placeholders, run_rows, step_argv
from vitrieval.reproduce.tables import write_tables


class FakeVitrieval:
    """Records command lines; 'trains' by writing eval.json, 'evaluates' by writing the -o file."""

    def __init__(self, recall: float = 0.5, fail_on: str | None = None) -> None:
        self.calls: list[list[str]] = []
        self.recall = recall
        self.fail_on = fail_on

    def __call__(self, argv: list[str]) -> int:
        self.calls.append(argv)
        if self.fail_on and self.fail_on in " ".join(argv):
            return 2
        if argv[1] == "train":
            out = Path(argv[argv.index("--output") + 1])
            out.mkdir(parents=True, exist_ok=True)
            (out / "eval.json").write_text("{}")
        else:
            path = Path(argv[argv.index("-o") + 1])
            path.write_text(json.dumps({"recall_at_k": {"1": self.recall}}))
        return 0


def test_finished_steps_are_skipped_and_an_interrupted_training_resumes(tmp_path: Path) -> None:
    grid = rows.cpu_grid()
    plan = Plan(out=tmp_path, roots={"folder": "/data/f"}, overrides=("train.iterations=3",))
    # an interrupted run: a checkpoint but no eval.json
    interrupted = tmp_path / "runs" / grid[0].jobs[0].key / "checkpoints"
    interrupted.mkdir(parents=True)
    (interrupted / "last.pt").write_bytes(b"x")
    fake = FakeVitrieval()
    assert run_rows(grid, plan, fake, echo=lambda _line: None) == 8  # 4 cells x (train + evaluate)
    first = fake.calls[0]
    assert first[-1] == "--resume" and first[-3:-1] == ["--set", "train.iterations=3"]
    assert "--resume" not in fake.calls[2]
    assert fake.calls[1][:2] == ["vitrieval", "evaluate"] and "/data/f" in fake.calls[1]
    fake2 = FakeVitrieval()
    assert run_rows(grid, plan, fake2, echo=lambda _line: None) == 0 and fake2.calls == []


def test_a_failing_step_names_its_row_and_stops(tmp_path: Path) -> None:
    grid = rows.cpu_grid()
    fake = FakeVitrieval(fail_on="margin0.5_koleo_weight0 ")
    done: list[str] = []
    with pytest.raises(StepFailed, match=r"row 'cpu-tiny β=0.5 λ=0'.*exited with 2"):
        run_rows(grid, Plan(out=tmp_path, roots={"folder": "d"}), fake, after_row=lambda r: done.append(r.row),
                 echo=lambda _line: None)
    assert done == ["cpu-tiny β=0.3 λ=0"]


def test_missing_roots_are_refused_before_anything_runs(tmp_path: Path) -> None:
    t3 = rows.table_rows(3)
    assert placeholders(t3) == ["sop", "cub", "inshop", "roxford5k", "rparis6k", "sfm120k"]
    fake = FakeVitrieval()
    with pytest.raises(ValueError, match="missing data root.*cub=DIR"):
        run_rows(t3, Plan(out=tmp_path, roots={"sop": "s"}), fake)
    assert fake.calls == []


def test_dry_run_is_torchrun_ready(tmp_path: Path) -> None:
    t6 = rows.table_rows(6)
    lines = dry_run_lines(t6, Plan(out="/o", roots={"sfm120k": "/d/sfm"}, nproc=4))
    assert lines[0].startswith("# fill in the data roots: {roxford5k}, {rparis6k}")
    assert lines[2] == ("torchrun --nproc_per_node 4 -m vitrieval train --preset sfm120k-irt-l-deit-s --set "
                        "loss.koleo_weight=0 --data-root /d/sfm --output /o/runs/sfm120k-irt-l-deit-s_koleo_weight0")
    cost = rows.table_rows(1)[0].steps[0]
    assert step_argv(cost, Plan(out="/o", nproc=4))[:3] == ["vitrieval", "analyze", "--cost"]  # single process


def test_table_has_ours_paper_and_difference_and_a_heat_map(tmp_path: Path) -> None:
    grid = rows.cpu_grid()
    run_rows(grid, Plan(out=tmp_path, roots={"folder": "d"}), FakeVitrieval(recall=0.8), echo=lambda _line: None)
    data = write_tables("cpu", grid, tmp_path)
    cell = next(r for r in data["rows"] if r["row"] == "cpu-tiny β=0.5 λ=0.7")
    assert cell["ours"] == {"SOP R@1": 80.0} and cell["paper"] == {"SOP R@1": 84.0}
    assert cell["diff"]["SOP R@1"] == pytest.approx(-4.0)
    assert json.loads((tmp_path / "table.json").read_text()) == json.loads(json.dumps(data))
    assert "| cpu-tiny β=0.5 λ=0.7 | 80.0 / 84.0 (-4.0) |" in (tmp_path / "table.md").read_text()
    page = (tmp_path / "table.html").read_text()
    assert "data:image/png;base64," in page and "<script" not in page and "http" not in page.split("<body>")[1]


def test_missing_results_are_dashes(tmp_path: Path) -> None:
    t3 = rows.table_rows(3)
    data = write_tables(3, t3, tmp_path)
    assert data["rows"][0]["ours"]["SOP R@1"] is None and data["rows"][0]["paper"]["SOP R@1"] == 52.8
    assert "| IRT_O | – / 52.8 (–) |" in (tmp_path / "table.md").read_text()
