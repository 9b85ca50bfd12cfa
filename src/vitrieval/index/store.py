"""The index folder on disk: its files, and reading / writing a faiss generation consistently.

An index folder holds::

    index.json        the manifest (:mod:`vitrieval.index.manifest`): ``generation`` (the folder of the data files
                      below), their sizes, the model reference, factory, search parameters, count, root, classes...
    gNNNNNN/          one generation of a faiss-backed index's data (:mod:`vitrieval.index.faiss_store`):
        index.faiss       the faiss index (inner product on unit vectors = cosine), wrapped in IndexIDMap2
        rows.sqlite       the rows: id, path, label, class name (:mod:`vitrieval.index.rows`)
    journal.sqlite    the writes since that generation (:mod:`vitrieval.index.journal`)
    uploads/          images added over HTTP (their rows name them relative to the folder)
    shards/           the build's resumable descriptor cache (:mod:`vitrieval.index.shard_cache`)

The folder is atomic as a whole (:func:`write_generation`): an update writes a new generation folder beside the
current one, then swaps ``index.json`` (one atomic rename) to name it, then removes the other generations. Killed at
any moment, the folder therefore loads as it was before the update or as it is after it, never a mix. Load checks
that the parts belong together (the sizes recorded in ``index.json``, the count of rows and of vectors). Older
folders are read as they are (version 2: ``metadata.jsonl`` rows in the generation; version 1: the data files beside
``index.json``) and replaced by a current generation on their next update.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Any

from vitrieval.index.journal_log import LEGACY_JOURNAL_FILE
from vitrieval.index.manifest import (
    FORMAT,
    FORMAT_VERSION,
    INFO_FILE,
    IndexFormatError,
    Manifest,
    read_manifest,
    write_manifest,
)
from vitrieval.index.rows import ROWS_FILE, IndexEntry, RowsFile, write_rows
from vitrieval.index.shard_cache import SHARDS_DIR

if TYPE_CHECKING:
    import faiss

INDEX_FILE = "index.faiss"
JOURNAL_FILE = "journal.sqlite"
"""The writes since the generation (:mod:`vitrieval.index.journal`)."""
METADATA_FILE = "metadata.jsonl"
"""The rows of a version-1/2 folder (read, never written)."""
GENERATION_KEY = "generation"
UPLOAD_PREFIX = "@index/"
"""How a row names a file inside the index folder (``@index/uploads/x.png``): a copied folder stays complete."""

__all__ = ["FORMAT", "FORMAT_VERSION", "INDEX_FILE", "INFO_FILE", "METADATA_FILE", "ROWS_FILE", "IndexEntry",
           "IndexFormatError", "Manifest", "ModelMismatchError", "write_rows"]

log = logging.getLogger(__name__)


class ModelMismatchError(ValueError):
    """The model that embeds the queries is not the one that built the index (fingerprint or dimension)."""


def display_path(path: str, root: str | None) -> str:
    """How an indexed image is named to a client: its path relative to the indexed ``root`` (``obj077/290.jpg``),
    never an absolute server path; its base name when outside ``root`` or when the index predates ``root``. The bytes
    of a file name that is not UTF-8 show as U+FFFD (the entry itself keeps the exact name)."""
    shown = PurePath(path).name
    if root:
        try:
            shown = PurePath(path).relative_to(root).as_posix()
        except ValueError:
            pass
    return shown.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def check_out_dir(directory: Path) -> None:
    """Refuse to build into a non-empty folder that is not (a former attempt at) an index."""
    if directory.exists() and not directory.is_dir():
        raise ValueError(f"index output {directory} exists and is not a folder")
    if directory.is_dir() and any(directory.iterdir()):
        ours = {INFO_FILE, INDEX_FILE, METADATA_FILE, SHARDS_DIR, JOURNAL_FILE, LEGACY_JOURNAL_FILE}
        only_model = {p.name for p in directory.iterdir()} == {"model"}  # `index --model` wrote its model first
        if not only_model and not any((directory / name).exists() for name in ours) \
                and not any(map(_is_generation, directory.iterdir())):
            raise ValueError(f"index output {directory} is a non-empty folder that is not a vitrieval index; "
                             f"choose another -o")


def generation_dir(directory: Path, manifest: Manifest | None = None) -> Path:
    """The folder holding the data files of the generation ``manifest`` (default: ``directory``'s ``index.json``)
    names (``directory`` itself for a version-1 folder)."""
    generation = (manifest if manifest is not None else read_manifest(directory)[0]).generation
    return directory if generation is None else directory / _generation_name(int(generation))


def _generation_name(generation: int) -> str:
    return f"g{generation:06d}"


def read_folder(directory: Path, mmap: bool = False) -> tuple[faiss.Index, RowsFile, Manifest]:
    """The faiss index, the rows and the manifest of a faiss index folder, checked for completeness and agreement.

    An update swapping in a new generation meanwhile (another process) is followed: the files read are always
    those of one generation.
    """
    for _ in range(3):
        manifest, text = read_manifest(directory)
        try:
            return (*_read_generation(directory, manifest, mmap), manifest)
        except (IndexFormatError, OSError):
            if (directory / INFO_FILE).is_file() and (directory / INFO_FILE).read_bytes().decode(
                    "utf-8", "replace") != text:
                continue  # swapped while we read: read the new generation
            raise
    manifest = read_manifest(directory)[0]
    return (*_read_generation(directory, manifest, mmap), manifest)


def _read_generation(directory: Path, manifest: Manifest, mmap: bool) -> tuple[faiss.Index, RowsFile]:
    import faiss

    data = generation_dir(directory, manifest)
    legacy = manifest.version < 3
    rows_name = METADATA_FILE if legacy else ROWS_FILE
    for name in (INDEX_FILE, rows_name):
        if not (data / name).is_file():
            raise IndexFormatError(f"{data}: {name} is missing (an interrupted build? rerun it)")
    flags = faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY if mmap else 0
    try:
        faiss_index = faiss.read_index(str(data / INDEX_FILE), flags)
    except RuntimeError as exc:
        log.debug("faiss.read_index(%s): %s", data / INDEX_FILE, exc)
        raise IndexFormatError(f"{data / INDEX_FILE} is unreadable by faiss (truncated or damaged): rebuild "
                               "the index (vitrieval index) or copy it again") from None
    rows = RowsFile.from_entries(_legacy_entries(data / METADATA_FILE)) if legacy else RowsFile(data / ROWS_FILE)
    for name, size in manifest.bytes.items():
        found = (data / name).stat().st_size if (data / name).is_file() else -1
        if found != int(size):
            rows.close()
            raise IndexFormatError(f"{data / name} is {found} bytes, {directory / INFO_FILE} says {size}: the parts "
                                   "of the index do not belong together; rebuild the index or copy it again")
    removed = len(manifest.tombstones)  # removed ids still in index.faiss (vitrieval.index.removal)
    held = rows.count()
    if not (held == faiss_index.ntotal - removed == manifest.count):
        rows.close()
        raise IndexFormatError(f"{directory}: inconsistent index ({held} rows, {faiss_index.ntotal} vectors of "
                               f"which {removed} removed, {INFO_FILE} says {manifest.count}); an interrupted write? "
                               "rebuild the index")
    return faiss_index, rows


def _legacy_entries(metadata: Path) -> Iterator[IndexEntry]:
    """The rows of a version-1/2 ``metadata.jsonl``; a damaged line is an error naming the file and line."""
    for number, line in enumerate(_lines(metadata), start=1):
        if line.strip():
            row = _read_json(metadata, line, number)
            try:
                yield IndexEntry(int(row["id"]), str(row["path"]), row.get("label"), row.get("class_name"))
            except (KeyError, TypeError, ValueError, AttributeError):
                raise IndexFormatError(f"{metadata} line {number} is not an index entry ({line.strip()[:80]}); "
                                       "rebuild the index or copy it again") from None


def _lines(path: Path) -> Iterator[str]:
    """The lines of the text file ``path``, or an :class:`IndexFormatError` naming it when it is not UTF-8."""
    try:
        with open(path, encoding="utf-8") as fh:
            yield from fh
    except UnicodeDecodeError as exc:
        raise IndexFormatError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start}): a damaged copy? "
                               "rebuild the index (vitrieval index) or copy it again") from None


def _read_json(path: Path, text: str, line: int | None = None) -> Any:
    """``text`` (the file ``path``, or its line ``line``) parsed, or an :class:`IndexFormatError` naming it."""
    try:
        return json.loads(text)
    except ValueError as exc:
        where = f"{path} line {line}" if line is not None else str(path)
        raise IndexFormatError(f"{where} is not valid JSON ({exc}): a damaged or interrupted copy? rebuild the "
                               "index (vitrieval index) or copy it again") from None


def write_generation(directory: Path, manifest: Manifest, write_files: Callable[[Path], Iterable[str]]) -> None:
    """Write a new generation (``write_files(folder)`` writes the data files, fsynced, and names them), then swap
    ``index.json`` to it (``manifest`` with its ``generation`` and ``bytes`` set), then remove the other
    generations (see the module docstring)."""
    directory.mkdir(parents=True, exist_ok=True)
    generation = _next_generation(directory)
    data = directory / _generation_name(generation)
    data.mkdir()
    names = list(write_files(data))
    fsync_dir(data)
    manifest.generation = generation
    manifest.bytes = {name: (data / name).stat().st_size for name in names}
    write_manifest(directory, manifest)  # the swap
    fsync_dir(directory)
    _remove_other_generations(directory, generation)


def _next_generation(directory: Path) -> int:
    """One more than any generation in ``directory`` (named by ``index.json`` or left by an interrupted write)."""
    found = [int(p.name[1:]) for p in directory.iterdir() if _is_generation(p)]
    try:
        named = json.loads((directory / INFO_FILE).read_text()).get(GENERATION_KEY)
        found.append(int(named))
    except (OSError, ValueError, TypeError, AttributeError):
        pass
    return max(found, default=0) + 1


def _is_generation(path: Path) -> bool:
    return path.is_dir() and len(path.name) == 7 and path.name[0] == "g" and path.name[1:].isdigit()


def _remove_other_generations(directory: Path, keep: int) -> None:
    """Remove every generation but ``keep``, and the data files of a version-1 folder."""
    for path in directory.iterdir():
        if _is_generation(path) and path.name != _generation_name(keep):
            shutil.rmtree(path, ignore_errors=True)
    for name in (INDEX_FILE, METADATA_FILE):
        (directory / name).unlink(missing_ok=True)


def fsync_dir(directory: Path) -> None:
    """Make the names created in ``directory`` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
