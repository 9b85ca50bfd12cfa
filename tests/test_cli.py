"""The `vitrieval` command: every sub-command is registered; user errors are one line and exit code 2."""

from __future__ import annotations

from vitrieval.cli import COMMANDS, build_parser, main


def test_every_command_is_registered():
    help_text = build_parser().format_help()
    for name in COMMANDS:
        assert name in help_text


def test_presets_lists_the_paper_recipes(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    assert "sop-irt-r-deit-s " in out and "cpu-tiny" in out and "inshop-irt-l-deit-b" in out
    assert main(["presets", "cub-irt-r-deit-s"]) == 0
    assert "koleo_weight: 0.7" in capsys.readouterr().out


def test_unknown_key_is_a_one_line_error_listing_valid_keys(tmp_path, capsys):
    code = main(["train", "--preset", "cpu-tiny", "--data-root", str(tmp_path), "--output", str(tmp_path / "o"),
                 "--set", "train.iters=5"])
    err = capsys.readouterr().err
    assert code == 2 and "unknown config key 'train.iters'" in err and "train.iterations" in err
    assert "Traceback" not in err


def test_wrong_type_and_unknown_preset(tmp_path, capsys):
    assert main(["train", "--preset", "cpu-tiny", "--output", str(tmp_path), "--set", "train.lr=fast"]) == 2
    assert "train.lr: expected a number" in capsys.readouterr().err
    assert main(["train", "--preset", "nope", "--output", str(tmp_path)]) == 2
    assert "unknown preset 'nope'" in capsys.readouterr().err


def test_missing_data_root_is_named(tmp_path, capsys):
    code = main(["train", "--preset", "cpu-tiny", "--data-root", str(tmp_path / "absent"), "--output",
                 str(tmp_path / "o")])
    assert code == 2 and "absent" in capsys.readouterr().err
