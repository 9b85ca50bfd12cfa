"""Issue 14, case 2: ``vitrieval demo --output DIR`` never deletes what the demo did not write in ``DIR/index``,
``DIR/irt_*``: such a folder is refused, naming it, before any work starts."""

from __future__ import annotations

import json

import pytest

from vitrieval.cli import main
from vitrieval.demo.run import MARKER, _fresh_dir, _seal_dir


@pytest.mark.parametrize("folder", ["index", "irt_o", "irt_l", "irt_r"])
def test_a_users_folder_is_refused_by_name_before_any_work(tmp_path, capsys, folder):
    out = tmp_path / "demo"
    (out / folder).mkdir(parents=True)
    (out / folder / "my-notes.txt").write_text("mine")
    assert main(["demo", "--quick", "--output", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"{out / folder} exists and was not written by `vitrieval demo`" in err and "Traceback" not in err
    assert (out / folder / "my-notes.txt").read_text() == "mine"
    assert sorted(p.name for p in out.iterdir()) == [folder]  # no data, no demo.log: nothing was done


def test_an_earlier_demo_folder_is_replaced_and_a_file_added_to_it_is_kept(tmp_path):
    step = tmp_path / "index"
    _fresh_dir(step)
    step.mkdir()
    (step / "index.json").write_text("{}")
    (step / "shards").mkdir()
    (step / "shards" / "0.npy").write_bytes(b"x")
    _seal_dir(step)
    assert json.loads((tmp_path / MARKER).read_text()) == {
        "folders": {"index": {"complete": True, "files": ["index.json", "shards/0.npy"]}}}
    _fresh_dir(step)  # only the demo's files: a rerun replaces the folder
    assert not step.exists()
    step.mkdir()
    (step / "index.json").write_text("{}")
    _seal_dir(step)
    (step / "mine.txt").write_text("mine")  # the user adds a file to the demo's folder afterwards
    with pytest.raises(ValueError, match=r"index holds file\(s\) `vitrieval demo` did not write \(mine.txt\)"):
        _fresh_dir(step)
    assert (step / "mine.txt").read_text() == "mine" and (step / "index.json").exists()


def test_a_step_that_stopped_before_its_end_is_redone_and_empty_folders_are_taken(tmp_path):
    step = tmp_path / "irt_l"
    _fresh_dir(step)
    step.mkdir()
    (step / "train.log").write_text("killed")  # no _seal_dir: the demo stopped in this step
    _fresh_dir(step)
    assert not step.exists()
    empty = tmp_path / "irt_r"
    empty.mkdir()
    _fresh_dir(empty)
    assert empty.is_dir() and json.loads((tmp_path / MARKER).read_text())["folders"]["irt_r"]["complete"] is False


def test_a_file_or_a_link_in_the_folders_place_is_refused(tmp_path):
    (tmp_path / "index").write_text("a file")
    with pytest.raises(ValueError, match="index exists and is not a folder the demo wrote"):
        _fresh_dir(tmp_path / "index")
    target = tmp_path / "elsewhere"
    target.mkdir()
    (target / "precious").write_text("x")
    (tmp_path / "irt_o").symlink_to(target)
    with pytest.raises(ValueError, match="irt_o exists and is not a folder the demo wrote"):
        _fresh_dir(tmp_path / "irt_o")
    assert (target / "precious").exists()


def test_a_missing_data_folder_leaves_no_output_folder(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--data", str(tmp_path / "absent"), "--output", str(out), "--no-progress"]) == 2
    assert "absent does not exist or is not a directory" in capsys.readouterr().err
    assert not out.exists()
