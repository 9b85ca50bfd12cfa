"""``--set`` of ``vitrieval train`` and ``vitrieval reproduce`` (:func:`vitrieval.cli.add_set_flag`): several
``KEY=VALUE`` after one flag, the flag repeatable, one flat list in order; a word without ``=`` is refused."""

from __future__ import annotations

import contextlib
import io

import pytest

from vitrieval.cli import build_parser, main


@pytest.mark.parametrize("command", [["train", "--preset", "demo", "-o", "out"], ["reproduce", "cpu"]])
def test_several_assignments_after_one_flag_and_repeated_flags_make_one_list(command) -> None:
    args = build_parser().parse_args([*command, "--set", "train.iterations=5", "train.lr=1e-4",
                                      "--set", "loss.margin=0.3"])
    assert args.overrides == ["train.iterations=5", "train.lr=1e-4", "loss.margin=0.3"]
    assert build_parser().parse_args(command).overrides == []


def test_a_word_without_an_equals_sign_after_set_is_refused_naming_it(capsys) -> None:
    with pytest.raises(SystemExit) as stop:
        build_parser().parse_args(["reproduce", "--set", "train.iterations=5", "cpu"])
    assert stop.value.code == 2
    assert "expected KEY=VALUE, got 'cpu'" in capsys.readouterr().err


def test_every_assignment_of_one_flag_reaches_the_training_commands() -> None:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main(["reproduce", "cpu", "--dry-run", "--data-root", "/nowhere", "--output", "/tmp/grid",
                     "--set", "train.iterations=7", "train.log_every=3"])
    assert code == 0, buf.getvalue()
    trains = [line for line in buf.getvalue().splitlines() if " train " in line]
    assert trains and all("train.iterations=7" in line and "train.log_every=3" in line for line in trains)


def test_the_assignments_are_applied_in_order_to_the_training_config(tmp_path, monkeypatch) -> None:
    """``vitrieval train --set a=1 b=2 --set a=3``: both keys set, the later value of ``a`` wins."""
    import vitrieval.training

    seen = {}

    def fake_train(config, output, resume=False, progress=True):
        seen["config"] = config
        raise ValueError("stop here")

    monkeypatch.setattr(vitrieval.training, "train", fake_train)
    code = main(["train", "--preset", "demo-quick", "-o", str(tmp_path / "run"),
                 "--set", "train.iterations=11", "train.lr=2e-4", "--set", "train.iterations=13"])
    assert code == 2
    assert seen["config"].train.iterations == 13 and seen["config"].train.lr == pytest.approx(2e-4)
