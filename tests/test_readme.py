"""The README's promises that can be checked offline: its Python example runs as written (on a tiny model saved
where ``make demo`` leaves its model, and a few generated photos), its links point at files that exist, and
nothing a user reads names a developer's path."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest
import torch

from evaluation_fixtures import COLOURS, SHAPES, draw, tiny_encoder

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def test_readme_python_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = python_blocks(README.read_text())
    assert len(blocks) == 1
    torch.manual_seed(0)
    tiny_encoder().save(tmp_path / "runs" / "demo" / "irt_r" / "model")
    for c, cls in enumerate(("cats", "dogs")):
        for i, shape in enumerate(SHAPES[:3], start=1):
            (tmp_path / "photos" / cls).mkdir(parents=True, exist_ok=True)
            draw(COLOURS[c], shape, dark=False).save(tmp_path / "photos" / cls / f"{i}.jpg")
    monkeypatch.chdir(tmp_path)
    out = io.StringIO()
    scope: dict = {}
    with contextlib.redirect_stdout(out):
        exec(compile(blocks[0], str(README), "exec"), scope)
    assert scope["z"].shape == (1, 192)
    lines = out.getvalue().splitlines()
    assert len(lines) == 3
    score, path = lines[0].split()
    assert path.endswith("photos/cats/1.jpg") and float(score) == pytest.approx(1.0, abs=1e-3)
    assert (tmp_path / "photos.idx" / "index.json").is_file()


def _reader_files() -> list[Path]:
    return [README, *sorted((ROOT / "docs").rglob("*.md")), ROOT / "mkdocs.yml"]


def test_readme_and_docs_links_exist() -> None:
    for path in _reader_files():
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", path.read_text()):
            if re.match(r"[a-z]+:", target):
                continue
            assert (path.parent / target).exists(), f"{path.relative_to(ROOT)} links to missing {target}"


def test_no_developer_paths_where_users_read() -> None:
    for path in _reader_files():
        text = path.read_text()
        for bad in ("/work/", "../shared", "shared/data"):
            assert bad not in text, f"{path.relative_to(ROOT)} names the developer path {bad!r}"
