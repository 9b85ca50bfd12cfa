"""Helpers shared by the dataset readers: locating the data root, clear errors, line-by-line parsing."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator


def find_root(root: str | Path, marker: str, subdirs: tuple[str, ...] = ()) -> Path:
    """The folder that holds ``marker`` (a relative path): ``root`` itself or one of ``root/<subdir>``.

    Returns ``root`` (resolved) when nothing matches, so the caller's missing-file error names the expected path.
    """
    base = Path(root).expanduser()
    if not base.exists():
        raise FileNotFoundError(f"data root {base} does not exist")
    if (base / marker).exists():
        return base.resolve()
    for sub in subdirs:
        if (base / sub / marker).exists():
            return (base / sub).resolve()
    return base.resolve()


def require_file(path: Path, dataset: str, layout: str) -> Path:
    """Return ``path`` if it is a file, else raise :class:`FileNotFoundError` naming it and the expected layout."""
    if not path.is_file():
        raise FileNotFoundError(f"{dataset}: required file not found: {path}\nexpected layout:\n{layout}")
    return path


def numbered_lines(path: Path, skip: int = 0) -> Iterator[tuple[int, list[str]]]:
    """Yield ``(line_number, whitespace-split fields)`` for the non-blank lines of ``path`` after ``skip`` lines."""
    with path.open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            if number <= skip:
                continue
            fields = line.split()
            if fields:
                yield number, fields


def malformed(path: Path, line: int, reason: str) -> ValueError:
    """A :class:`ValueError` naming the file and line of a malformed entry."""
    return ValueError(f"{path}, line {line}: {reason}")


def parse_int(value: str, path: Path, line: int, what: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise malformed(path, line, f"{what} must be an integer, got {value!r}") from None


def parse_float(value: str, path: Path, line: int, what: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise malformed(path, line, f"{what} must be a number, got {value!r}") from None
