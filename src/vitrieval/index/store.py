"""The index folder on disk: its files, its entries, and reading / writing them consistently.

An index folder holds::

    index.json        the pointer and the description: ``generation`` (the folder of the data files below),
                      their sizes, the model reference (checkpoint path, fingerprint, descriptor dim,
                      preprocessing), factory, search parameters, count, skipped unreadable files, creation
                      time; ``root`` (the indexed folder: clients see paths relative to it, :func:`display_path`)
                      and, for a folder laid out in classes, ``classes`` (the names, label order)
    gNNNNNN/          one generation of the data:
        index.faiss       the faiss index (inner product on unit vectors = cosine), wrapped in IndexIDMap2
        metadata.jsonl    one line per indexed image: {"id", "path", "label"}
    shards/           the build's resumable descriptor cache (:mod:`vitrieval.index.shard_cache`)

The folder is atomic as a whole (:func:`write_folder`): an update writes a new generation folder beside the current
one, then swaps ``index.json`` (one atomic rename) to name it, then removes the other generations. Killed at any
moment, the folder therefore loads as it was before the update or as it is after it, never a mix: the old
``index.json`` names the old files, which stay until the new one has replaced it. Load checks that the parts
belong together (the sizes recorded in ``index.json``, the count of rows and of vectors). A folder written before
generations (format version 1: the two data files beside ``index.json``) is read as it is, and replaced by a
generation on its next update.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Any

from vitrieval.data.table import Record
from vitrieval.index.shard_cache import SHARDS_DIR
from vitrieval.io_utils import atomic_path, atomic_write_json, atomic_write_text

if TYPE_CHECKING:
    import faiss

INDEX_FILE = "index.faiss"
METADATA_FILE = "metadata.jsonl"
INFO_FILE = "index.json"
FORMAT = "vitrieval-index"
FORMAT_VERSION = 2
"""2: the data files in a generation folder named by ``index.json`` (1: beside it, still read)."""
GENERATION_KEY = "generation"

log = logging.getLogger(__name__)


class ModelMismatchError(ValueError):
    """The model that embeds the queries is not the one that built the index (fingerprint or dimension)."""


class IndexFormatError(ValueError):
    """An index folder that is missing, incomplete or inconsistent; the message names the folder and the file."""


@dataclass(frozen=True)
class IndexEntry:
    """One indexed image: its id in the index, its absolute path and its label (``None`` when unknown)."""

    id: int
    path: str
    label: int | None = None

    @classmethod
    def from_record(cls, image_id: int, record: Record) -> IndexEntry:
        """The entry of ``record`` under ``image_id`` (a negative label, "unknown" in a table, is ``None``)."""
        label = record.label
        return cls(int(image_id), record.path, None if label is None or int(label) < 0 else int(label))


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
        ours = {INFO_FILE, INDEX_FILE, METADATA_FILE, SHARDS_DIR}
        only_model = {p.name for p in directory.iterdir()} == {"model"}  # `index --model` wrote its model first
        if not only_model and not any((directory / name).exists() for name in ours) \
                and not any(map(_is_generation, directory.iterdir())):
            raise ValueError(f"index output {directory} is a non-empty folder that is not a vitrieval index; "
                             f"choose another -o")


def folder_backend(directory: Path, known: Iterable[str]) -> str:
    """The ``backend`` named by ``directory``'s ``index.json``: ``"faiss"`` when absent or unreadable (the faiss
    reader then names what is wrong), ``"milvus"`` for a Milvus manifest (:mod:`vitrieval.index.milvus_index`);
    one not in ``known`` is an :class:`IndexFormatError`."""
    try:
        info = json.loads((directory / INFO_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "faiss"
    backend = str(info.get("backend", "faiss")) if isinstance(info, dict) else "faiss"
    if backend not in known:
        raise IndexFormatError(f"{directory / INFO_FILE}: unknown index backend {backend!r} (one of "
                               f"{', '.join(known)}); upgrade vitrieval")
    return backend


def generation_dir(directory: Path, info: dict[str, Any] | None = None) -> Path:
    """The folder holding the data files of the generation ``info`` (default: ``directory``'s ``index.json``)
    names (``directory`` itself for a version-1 folder)."""
    generation = (info if info is not None else _read_info(directory)[0]).get(GENERATION_KEY)
    return directory if generation is None else directory / _generation_name(int(generation))


def _generation_name(generation: int) -> str:
    return f"g{generation:06d}"


def _read_info(directory: Path) -> tuple[dict[str, Any], str]:
    """``index.json`` of ``directory``, parsed and checked, and its text."""
    info_path = directory / INFO_FILE
    if not info_path.is_file():
        raise IndexFormatError(f"{directory} is not a vitrieval index: {INFO_FILE} not found")
    text = "".join(_lines(info_path))
    info = _read_json(info_path, text)
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        info = info if isinstance(info, dict) else {}
        raise IndexFormatError(f"{info_path}: not a vitrieval index (format {info.get('format')!r})")
    if int(info.get("version", 0)) > FORMAT_VERSION:
        raise IndexFormatError(f"{info_path}: index format version {info['version']} is newer than this "
                               f"vitrieval understands ({FORMAT_VERSION}); upgrade vitrieval")
    return info, text


def read_folder(directory: Path, mmap: bool = False) -> tuple[faiss.Index, list[IndexEntry], dict[str, Any]]:
    """The faiss index, the entries and the info of an index folder, checked for completeness and agreement.

    An update swapping in a new generation meanwhile (another process) is followed: the files read are always
    those of one generation.
    """
    for _ in range(3):
        info, text = _read_info(directory)
        try:
            return _read_generation(directory, info, mmap)
        except (IndexFormatError, OSError):
            if (directory / INFO_FILE).is_file() and "".join(_lines(directory / INFO_FILE)) != text:
                continue  # swapped while we read: read the new generation
            raise
    return _read_generation(directory, _read_info(directory)[0], mmap)


def _read_generation(directory: Path, info: dict[str, Any], mmap: bool) -> tuple[faiss.Index, list[IndexEntry],
                                                                                 dict[str, Any]]:
    import faiss

    data = generation_dir(directory, info)
    for name in (INDEX_FILE, METADATA_FILE):
        if not (data / name).is_file():
            raise IndexFormatError(f"{data}: {name} is missing (an interrupted build? rerun it)")
    flags = faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY if mmap else 0
    try:
        faiss_index = faiss.read_index(str(data / INDEX_FILE), flags)
    except RuntimeError as exc:
        log.debug("faiss.read_index(%s): %s", data / INDEX_FILE, exc)
        raise IndexFormatError(f"{data / INDEX_FILE} is unreadable by faiss (truncated or damaged): rebuild "
                               "the index (vitrieval index) or copy it again") from None
    entries = []
    metadata = data / METADATA_FILE
    for number, line in enumerate(_lines(metadata), start=1):
        if line.strip():
            row = _read_json(metadata, line, number)
            try:
                entries.append(IndexEntry(int(row["id"]), row["path"], row.get("label")))
            except (KeyError, TypeError, ValueError, AttributeError):
                raise IndexFormatError(f"{metadata} line {number} is not an index entry ({line.strip()[:80]}); "
                                       "rebuild the index or copy it again") from None
    removed = len(info.get("tombstones") or ())  # removed ids still in index.faiss (vitrieval.index.removal)
    if not (len(entries) == faiss_index.ntotal - removed == int(info["count"])):
        raise IndexFormatError(f"{directory}: inconsistent index ({len(entries)} metadata rows, "
                               f"{faiss_index.ntotal} vectors of which {removed} removed, index.json says "
                               f"{info['count']}); an interrupted write? rebuild the index")
    for name, size in (info.get("bytes") or {}).items():
        found = (data / name).stat().st_size
        if found != int(size):
            raise IndexFormatError(f"{data / name} is {found} bytes, {directory / INFO_FILE} says {size}: the parts "
                                   "of the index do not belong together; rebuild the index or copy it again")
    return faiss_index, entries, info


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


def write_folder(directory: Path, faiss_index: faiss.Index, entries: Iterable[IndexEntry],
                 info: dict[str, Any]) -> None:
    """Write a new generation (``metadata.jsonl``, ``index.faiss``), then swap ``index.json`` to it (its
    ``count``, ``generation`` and ``bytes`` set), then remove the other generations (see the module docstring)."""
    import faiss

    directory.mkdir(parents=True, exist_ok=True)
    generation = _next_generation(directory)
    data = directory / _generation_name(generation)
    data.mkdir()
    lines = [json.dumps({"id": e.id, "path": e.path, "label": e.label}) for e in entries]
    atomic_write_text(data / METADATA_FILE, "\n".join(lines) + ("\n" if lines else ""))
    with atomic_path(data / INDEX_FILE) as tmp:
        faiss.write_index(faiss_index, str(tmp))
    fsync_dir(data)
    info.update({"version": FORMAT_VERSION, "count": len(lines), GENERATION_KEY: generation,
                 "bytes": {name: (data / name).stat().st_size for name in (METADATA_FILE, INDEX_FILE)}})
    atomic_write_json(directory / INFO_FILE, info)  # the swap
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
