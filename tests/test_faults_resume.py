"""Issue 14, cases 9 and 11 (run folder): a refused ``--resume`` leaves the run folder untouched; a failed set-up
leaves no run folder behind (and never removes what the run did not write)."""

from __future__ import annotations

from pathlib import Path

import pytest

from vitrieval.cli import main
from vitrieval.config import apply_overrides
from vitrieval.presets import load_preset
from vitrieval.training import train
from vitrieval.training.pk_trainer import Trainer

TINY = ["model.name=deit_tiny_patch16_224", "model.pretrained=false", "model.image_size=32", "model.patch_size=8",
        "model.depth=2", "model.embed_dim=64", "model.num_heads=2", "data.num_workers=0", "train.amp=off",
        "train.batch_size=16", "train.iterations=2", "train.eval_every=0"]


def _config(root: Path, *extra: str):
    return apply_overrides(load_preset("cpu-tiny"), [f"data.root={root}", *TINY, *extra])


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_refused_resume_leaves_the_run_folder_untouched(products_32, tmp_path):
    out = tmp_path / "run"
    first = Trainer(_config(products_32), out, progress=False)
    first.save()
    first.metrics.close()
    first.run_dir.close()
    before = _snapshot(out)
    assert "config.yaml" in before and "checkpoints/last.pt" in before
    with pytest.raises(ValueError, match=r"last.pt was written for model settings .*'depth': 2.*'depth': 3"):
        Trainer(_config(products_32, "model.depth=3"), out, resume=True, progress=False)
    assert _snapshot(out) == before  # config.yaml still describes the model the checkpoint holds; no log line
    resumed = Trainer(_config(products_32), out, resume=True, progress=False)  # the same settings: accepted
    try:
        assert resumed.resume and resumed.iteration == 0
    finally:
        resumed.metrics.close()
        resumed.run_dir.close()


def test_a_refused_resume_from_the_command_line_is_one_line_and_keeps_config_yaml(products_32, tmp_path, capsys):
    out = tmp_path / "run"
    first = Trainer(_config(products_32), out, progress=False)
    first.save()
    first.metrics.close()
    first.run_dir.close()
    config_yaml = (out / "config.yaml").read_text()
    argv = ["train", "--preset", "cpu-tiny", "-o", str(out), "--resume", "--no-progress",
            *[a for o in [f"data.root={products_32}", *TINY, "model.embed_dim=32"] for a in ("--set", o)]]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "was written for model settings" in err and "Traceback" not in err
    assert (out / "config.yaml").read_text() == config_yaml
    assert "embed_dim: 64" in config_yaml


def test_a_failed_set_up_leaves_no_run_folder(tmp_path, capsys):
    out = tmp_path / "o"
    code = main(["train", "--preset", "cpu-tiny", "--data-root", str(tmp_path / "absent"), "--output", str(out)])
    assert code == 2 and "absent" in capsys.readouterr().err
    assert not out.exists()


def test_a_failed_set_up_in_an_existing_folder_removes_nothing(tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(FileNotFoundError, match="absent"):
        train(_config(tmp_path / "absent"), out, progress=False)
    assert (out / "notes.txt").read_text() == "mine"


def test_a_failed_set_up_in_a_new_folder_keeps_what_another_process_put_there(tmp_path, monkeypatch):
    """Only the run's own files go: a folder that is not empty after them stays."""
    from vitrieval.training import lifecycle

    out = tmp_path / "o"

    def fail(config):
        (out / "someone-else.txt").write_text("x")
        raise ValueError("no data")

    monkeypatch.setattr(lifecycle, "load_tables", fail)
    with pytest.raises(ValueError, match="no data"):
        train(_config(tmp_path), out, progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["someone-else.txt"]


def _argv(root: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--preset", "cpu-tiny", "-o", str(out), "--no-progress",
            *[a for o in [f"data.root={root}", *TINY, *extra] for a in ("--set", o)]]


def test_resume_of_a_finished_run_says_so_and_changes_nothing(products_32, tmp_path, capsys):
    """It used to evaluate again and print "done: 2 iterations"; a longer train.iterations continues it."""
    out = tmp_path / "run"
    assert main(_argv(products_32, out)) == 0
    capsys.readouterr()
    before = _snapshot(out)
    assert main([*_argv(products_32, out), "--resume"]) == 2
    err = capsys.readouterr().err
    assert err == (f"vitrieval train: error: {out} is already finished (2 iterations; its model is {out / 'model'}): "
                   "to train it further, --resume with --set train.iterations=N for an N over 2; or choose another "
                   "--output\n")
    assert _snapshot(out) == before
    assert main([*_argv(products_32, out, "train.iterations=3"), "--resume"]) == 0
    assert "(3 iterations" in capsys.readouterr().out


def test_ctrl_c_names_resume_when_there_is_a_checkpoint(products_32, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    assert main(_argv(products_32, out)) == 0
    capsys.readouterr()

    def interrupted(self, batch):
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "step", interrupted)
    assert main([*_argv(products_32, out, "train.iterations=4"), "--resume"]) == 130
    assert capsys.readouterr().err == (f"vitrieval train: interrupted; the same command with --resume continues "
                                       f"from {out / 'checkpoints' / 'last.pt'}\n")
    assert main(_argv(products_32, tmp_path / "fresh")) == 130  # no checkpoint yet: nothing to resume
    assert capsys.readouterr().err == "vitrieval train: interrupted\n"


def test_an_unreadable_training_image_names_the_skip_setting_and_leaves_no_half_made_run(products_32, tmp_path,
                                                                                          capsys):
    import shutil

    root = tmp_path / "data"
    shutil.copytree(products_32, root)
    for folder in sorted(p for p in root.iterdir() if p.is_dir())[:8]:  # every training identity: one corrupt view
        for image in sorted(folder.iterdir())[:2]:
            image.write_bytes(b"not an image")
    out = tmp_path / "run"
    assert main(_argv(root, out)) == 2
    err = capsys.readouterr().err
    assert err.startswith("vitrieval train: error: cannot read image ") and err.count("\n") == 1
    assert err.endswith("(--set data.on_bad_image=skip trains on without the unreadable images, counting them in "
                        "train.log)\n")
    assert not out.exists()  # a fresh run that stopped before its first checkpoint leaves no folder
    assert main(_argv(root, out, "data.on_bad_image=skip")) == 0
    assert (out / "checkpoints" / "last.pt").is_file()


def test_an_unreadable_held_out_image_is_named_as_one(products_32, tmp_path, capsys):
    """data.on_bad_image=skip does not apply to the held-out Recall: the message does not suggest it."""
    import shutil

    root = tmp_path / "data"
    shutil.copytree(products_32, root)
    held_out = sorted(p for p in root.iterdir() if p.is_dir())[-1]
    bad = sorted(held_out.iterdir())[0]
    bad.write_bytes(b"not an image")
    assert main(_argv(root, tmp_path / "run", "data.on_bad_image=skip")) == 2
    assert capsys.readouterr().err == (
        f"vitrieval train: error: cannot read image {bad}: not a recognised image format (a held-out image, embedded "
        "for the held-out Recall whatever data.on_bad_image says: replace or remove it)\n")
