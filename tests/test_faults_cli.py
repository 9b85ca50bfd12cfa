"""Issue 14, case 11 (commands): output files that are folders are refused before the work, ``-o`` over another
model's index is refused unless ``--overwrite``, faiss's loader prints nothing, links that lead nowhere are
listed as skipped by ``index``; and case 4's decoding part: an unreadable file is an :class:`ImageDecodeError`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from index_world import build_world, make_model
from vitrieval.cli import main


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("cli_faults")
    world = build_world(root)
    world["other_model"] = make_model(root / "other_model", seed=1)
    return world


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_report_to_a_folder_is_refused_before_the_work(tmp_path, capsys, monkeypatch):
    from vitrieval.report import runs

    monkeypatch.setattr(runs, "write_runs_report", lambda *a, **kw: pytest.fail("the report was made first"))
    assert main(["report", str(tmp_path / "run"), "-o", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"vitrieval report: error: -o {tmp_path} is a folder; give a file name" in err
    assert str(tmp_path / "report.html") in err
    (tmp_path / "a_file").write_text("x")
    assert main(["report", str(tmp_path / "run"), "-o", str(tmp_path / "a_file" / "r.html")]) == 2
    assert f"{tmp_path / 'a_file'} is a file, not a folder" in capsys.readouterr().err


def test_evaluate_json_to_a_folder_is_refused_before_the_work(world, tmp_path, capsys, monkeypatch):
    from vitrieval.cli import evaluate_cmd

    monkeypatch.setattr(evaluate_cmd, "encoder_from_args", lambda args: pytest.fail("the model was loaded first"))
    assert main(["evaluate", "--checkpoint", str(world["model"]), "--dataset", "folder", "--data-root",
                 str(world["root"] / "images"), "-o", str(tmp_path)]) == 2
    assert f"-o {tmp_path} is a folder; give a file name" in capsys.readouterr().err


def test_index_over_another_models_index_is_refused_unless_overwrite(world, tmp_path, capsys):
    out = tmp_path / "cat.idx"
    images = str(world["root"] / "images")
    assert main(["index", "--checkpoint", str(world["model"]), "--images", images, "-o", str(out),
                 "--no-progress"]) == 0
    before = _snapshot(out)
    capsys.readouterr()
    argv = ["index", "--checkpoint", str(world["other_model"]), "--images", images, "-o", str(out), "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"{out} already holds an index of another model ({world['model'].resolve()}" in err
    assert "--overwrite" in err and "Traceback" not in err
    assert _snapshot(out) == before
    assert main(["index", "--checkpoint", str(world["model"]), "--images", images, "-o", str(out),
                 "--no-progress"]) == 0  # the same model: a rebuild goes ahead
    assert main([*argv, "--overwrite"]) == 0
    info = json.loads((out / "index.json").read_text())
    assert info["checkpoint"] == str(world["other_model"].resolve())


def test_faiss_loader_prints_nothing(world):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    done = subprocess.run([sys.executable, "-m", "vitrieval", "search", "--index", str(world["index_dir"]),
                           str(world["images"][0]), "-k", "2"], capture_output=True, text=True, env=env,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert "faiss.loader" not in done.stderr and "ModuleNotFoundError" not in done.stderr


def test_links_that_lead_nowhere_are_listed_as_skipped(world, tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    for path in world["images"][:3]:
        (images / path.name).write_bytes(path.read_bytes())
    (images / "loop.jpg").symlink_to(images / "loop.jpg")
    (images / "dangling.png").symlink_to(tmp_path / "gone.png")
    (images / ".hidden.jpg").symlink_to(images / ".hidden.jpg")  # hidden: left out, as any hidden file
    out = tmp_path / "links.idx"
    assert main(["index", "--checkpoint", str(world["model"]), "--images", str(images), "-o", str(out),
                 "--no-progress"]) == 0
    printed = capsys.readouterr().out
    skipped = json.loads((out / "index.json").read_text())["skipped"]
    assert sorted(skipped) == [str(images / "dangling.png"), str(images / "loop.jpg")]
    assert f"skipped (unreadable): {images / 'loop.jpg'}" in printed and "3 image(s)" in printed


def test_a_link_that_leads_nowhere_and_an_unreadable_file_are_decode_errors(tmp_path, monkeypatch, world):
    from vitrieval.data.images import ImageDecodeError, load_image

    (tmp_path / "loop.jpg").symlink_to(tmp_path / "loop.jpg")
    with pytest.raises(ImageDecodeError, match="loop.jpg: a symbolic link that leads to no file"):
        load_image(tmp_path / "loop.jpg")
    locked = tmp_path / "locked.png"
    locked.write_bytes(world["images"][0].read_bytes())

    def refuse(self):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", refuse)  # chmod 000 does not stop root, who runs CI here
    with pytest.raises(ImageDecodeError, match=r"locked.png: the file cannot be read \(Permission denied\)"):
        load_image(locked)
