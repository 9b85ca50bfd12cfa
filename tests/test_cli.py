"""The `vitrieval` command: every sub-command is registered; user errors are one line and exit code 2."""

from __future__ import annotations

import pytest

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


@pytest.mark.parametrize("error, line", [(ValueError("needs at least 64 descriptors"), "needs at least 64 descriptors"),
                                         (KeyError("no image with id 7"), "no image with id 7")])
def test_main_and_rank_zero_print_the_same_one_line_error(tmp_path, capsys, monkeypatch, error, line):
    """``main``'s handler and ``vitrieval index``'s rank-0 handler (an error raised on every rank under torchrun)
    are one error path: the same line on stderr, exit code 2."""
    from vitrieval.cli import index_cmd

    argv = ["index", "--checkpoint", str(tmp_path), "--images", str(tmp_path), "-o", str(tmp_path / "out.idx")]

    def fail(args, images, ctx):
        raise error

    monkeypatch.setattr(index_cmd, "_run", fail)
    assert main(argv) == 2  # this process's error: main reports it
    from_main = capsys.readouterr().err
    error.raised_on_rank = 0  # rank 0's error, raised on every rank: the command reports it on rank 0
    assert index_cmd.run(build_parser().parse_args(argv)) == 2
    from_rank_zero = capsys.readouterr().err
    assert from_main == from_rank_zero == f"vitrieval index: error: {line}\n"


def test_decode_worker_flags_take_auto_or_a_count() -> None:
    """``--workers`` (``index --num-workers``, hidden) defaults to auto (data/loading.py's rule), takes a count,
    refuses the rest."""
    import argparse

    from vitrieval.cli import build_parser, num_workers_arg

    assert num_workers_arg("auto") == "auto" and num_workers_arg("0") == 0 and num_workers_arg("3") == 3
    for bad in ("-1", "many", "1.5"):
        with pytest.raises(argparse.ArgumentTypeError, match="auto or an integer >= 0"):
            num_workers_arg(bad)
    parser = build_parser()
    evaluate = parser.parse_args(["evaluate", "--checkpoint", "r", "--dataset", "sop", "--data-root", "d"])
    assert evaluate.workers == "auto"
    assert parser.parse_args(["index", "--checkpoint", "r", "--images", "i", "-o", "o"]).workers == "auto"
    for flag in ("--workers", "--num-workers"):  # one spelling across commands; index's old one still works, hidden
        assert parser.parse_args(["index", "--checkpoint", "r", "--images", "i", "-o", "o", flag, "2"]).workers == 2
    index_help = parser._subparsers._group_actions[0].choices["index"].format_help()
    assert "--workers" in index_help and "--num-workers" not in index_help


@pytest.mark.parametrize("verbose", [False, True])
def test_libraries_log_only_warnings_unless_verbose(verbose):
    """`vitrieval export` printed 231 INFO lines of onnx_ir / onnxscript: every library's logger is at WARNING
    unless -v (configure_logging, called by main); vitrieval's own INFO lines stay."""
    import subprocess
    import sys
    from pathlib import Path

    script = (f"import logging; from vitrieval.cli import configure_logging; configure_logging({verbose})\n"
              "for name in ('onnx_ir.passes.common', 'onnxscript.optimizer', 'timm.models', 'faiss.loader', 'torch',"
              " 'vitrieval.onnx_export'):\n"
              "    for level in (logging.DEBUG, logging.INFO, logging.WARNING):\n"
              "        logging.getLogger(name).log(level, 'line of %s at %s', name, logging.getLevelName(level))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                          env={"PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")})
    assert done.returncode == 0, done.stderr
    lines = [line.split(": ", 1)[1] for line in done.stderr.splitlines()]
    libraries = ("onnx_ir.passes.common", "onnxscript.optimizer", "timm.models", "faiss.loader", "torch")
    levels = ("DEBUG", "INFO", "WARNING") if verbose else ("WARNING",)
    expected = [f"line of {name} at {level}" for name in libraries for level in levels]
    expected += [f"line of vitrieval.onnx_export at {level}" for level in
                 (("DEBUG", "INFO", "WARNING") if verbose else ("INFO", "WARNING"))]
    assert lines == expected
