"""``vitrieval reproduce`` end to end: the listing, a dry run, and a CPU-sized grid run twice (resumable)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from vitrieval.cli import main

SHARED_DATA = Path(os.environ.get("VITRIEVAL_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
# tiny enough for 2 CPU cores: a 2-block, 64-wide ViT at 32 px, 2 iterations of 8 images
TINY = ["model.image_size=32", "model.depth=2", "model.embed_dim=64", "model.num_heads=2", "data.num_workers=0",
        "train.amp=off", "train.iterations=2", "train.batch_size=8", "train.eval_every=0", "train.checkpoint_every=1"]


def test_list_json_has_every_row(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["reproduce", "--list", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert len(listing) == 103 and sum(e["table"] == 5 for e in listing) == 50
    assert all(isinstance(e["table"], int) and isinstance(e["row"], str) and isinstance(e["command"], str)
               and isinstance(e["paper"], dict) for e in listing)
    t5 = next(e for e in listing if e["table"] == 5 and e["row"] == "DeiT-S β=0.7 λ=0.7")
    assert t5["paper"] == {"SOP R@1": 84.2}
    assert t5["command"].startswith("vitrieval train --preset sop-irt-l-deit-s --set loss.margin=0.7 --set "
                                    "loss.koleo_weight=0.7 --data-root '{sop}' --output")
    r50 = next(e for e in listing if e["table"] == 5 and e["row"].startswith("R50"))
    assert r50["status"] == "ready" or r50["status"].startswith("preset missing: sop-irt-l-r50")


@pytest.mark.parametrize("table", [str(t) for t in range(1, 10)])
def test_dry_run_prints_commands_for_every_table(table: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["reproduce", table, "--dry-run", "--output", "/o", "--nproc", "8"]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln and not ln.startswith("#")]
    assert lines and all(ln.startswith(("torchrun --nproc_per_node 8 -m vitrieval ", "vitrieval analyze"))
                         for ln in lines)


def test_bare_data_root_only_for_one_dataset(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["reproduce", "3", "--data-root", "/x", "--output", "/o", "--dry-run"]) == 2
    assert "name it: NAME=DIR" in capsys.readouterr().err


def _grid(root: Path, out: Path, capsys: pytest.CaptureFixture[str]) -> str:
    argv = ["reproduce", "cpu", "--data-root", str(root), "--output", str(out), "--rows", "cpu-tiny β=0.5*"]
    for item in TINY:
        argv += ["--set", item]
    assert main(argv) == 0
    return capsys.readouterr().out


def test_cpu_grid_end_to_end_then_nothing_reruns(products_32: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "grid"
    text = _grid(products_32, out, capsys)
    assert "4 step(s) run" in text
    data = json.loads((out / "table.json").read_text())
    assert [r["row"] for r in data["rows"]] == ["cpu-tiny β=0.3 λ=0", "cpu-tiny β=0.5 λ=0", "cpu-tiny β=0.3 λ=0.7",
                                                "cpu-tiny β=0.5 λ=0.7"]
    assert [r["ours"]["SOP R@1"] is None for r in data["rows"]] == [True, False, True, False]  # not selected
    for r in data["rows"][1::2]:
        ours = r["ours"]["SOP R@1"]
        run = out / "runs" / f"cpu-tiny_margin0.5_koleo_weight{r['grid']['koleo_weight']:g}"
        evaluated = json.loads((run / "eval-folder.json").read_text())
        assert ours == pytest.approx(100 * evaluated["recall_at_k"]["1"])
        assert r["diff"]["SOP R@1"] == pytest.approx(ours - r["paper"]["SOP R@1"])
    assert (out / "table.md").is_file() and "data:image/png" in (out / "table.html").read_text()
    stamps = {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("*.json")}
    assert _grid(products_32, out, capsys).startswith("0 step(s) run")
    assert stamps == {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("*.json")}


def test_cpu_grid_on_orl_faces(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = SHARED_DATA / "orl_faces"
    if not root.is_dir():
        pytest.skip(f"ORL faces not found at {root} (set VITRIEVAL_SHARED_DATA)")
    assert "4 step(s) run" in _grid(root, tmp_path / "orl", capsys)
    rows = json.loads((tmp_path / "orl" / "table.json").read_text())["rows"]
    assert all(0.0 <= r["ours"]["SOP R@1"] <= 100.0 for r in rows[1::2])


def test_missing_presets_refuse_or_skip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from vitrieval.reproduce.rows import table_rows
    from vitrieval.reproduce.runner import missing_presets

    if not any(missing_presets(r) for r in table_rows(4)):
        pytest.skip("every Table 4 preset ships")
    argv = ["reproduce", "4", "--data-root", str(tmp_path), "--output", str(tmp_path / "o"),
            "--rows", "NSoftmax*"]
    assert main(argv) == 2 and "not shipped with this installation" in capsys.readouterr().err
    assert main([*argv, "--skip-missing"]) == 0
    text = capsys.readouterr().out
    assert "skipped: table 4 | NSoftmax R50-2048" in text and "0 step(s) run" in text
    assert json.loads((tmp_path / "o" / "table.json").read_text())["rows"][0]["ours"] == {"SOP R@1": None}
