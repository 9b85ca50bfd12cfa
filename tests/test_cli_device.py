"""``--device`` is parsed in one place for every command (``vitrieval.cli.main`` through ``amp.check_device``;
``train.device`` through the same check): anything but a device is one line, exit 2, naming the choices, before
any work."""

from __future__ import annotations

from pathlib import Path

import pytest

from vitrieval.cli import main

COMMANDS = {
    "evaluate": ["--model", "deit_tiny_patch16_224", "--dataset", "folder", "--data-root", "{tmp}"],
    "index": ["--checkpoint", "{tmp}", "--images", "{tmp}", "-o", "{tmp}/idx"],
    "embed": ["--checkpoint", "{tmp}", "--images", "{tmp}", "-o", "{tmp}/emb"],
    "search": ["--index", "{tmp}/idx", "q.jpg"],
    "serve": ["--index", "{tmp}/idx"],
    "analyze": ["--model", "deit_tiny_patch16_224", "--cost", "-o", "{tmp}/a"],
    "train": ["--preset", "cpu-tiny", "--output", "{tmp}/run", "--set", "train.device=gpu"],
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_device_gpu_is_one_line_and_exit_2(command: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    argv = [command, *(a.replace("{tmp}", str(tmp_path)) for a in COMMANDS[command])]
    if command != "train":
        argv += ["--device", "gpu"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "'gpu'" in err[0] and "auto, cpu, cuda, cuda:N" in err[0] and "Traceback" not in err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing written
