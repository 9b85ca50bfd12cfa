"""Helpers shared by the dataset readers: locating the data root, clear errors, line-by-line parsing, and a
restricted unpickler for the ground-truth / database pickles some datasets ship."""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any


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


class RestrictedUnpickler(pickle.Unpickler):
    """Loads only plain containers, numbers, strings and numpy arrays / scalars: a data file must not run code.

    Python 2 pickles (cirtorch's and revisitop's files) load with ``encoding="latin1"``; ``_codecs.encode`` is
    what those use to rebuild the raw bytes of numpy arrays.
    """

    ALLOWED: frozenset[tuple[str, str]] = frozenset({
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
        ("builtins", "set"), ("builtins", "frozenset"),
        ("collections", "OrderedDict"), ("_codecs", "encode"),
    })

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data file")


def load_restricted_pickle(path: str | Path) -> Any:
    """Unpickle ``path`` with :class:`RestrictedUnpickler`; any failure is a :class:`ValueError` naming the file."""
    path = Path(path)
    try:
        with path.open("rb") as fh:
            return RestrictedUnpickler(fh, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, IndexError, TypeError,
            ValueError, KeyError) as exc:
        raise ValueError(f"{path}: not a readable pickle of plain data ({exc})") from None
