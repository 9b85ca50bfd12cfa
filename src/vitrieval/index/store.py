"""The index folder on disk: its files, its entries, and reading / writing them consistently.

An index folder holds::

    index.faiss       the faiss index (inner product on unit vectors = cosine), wrapped in IndexIDMap2
    metadata.jsonl    one line per indexed image: {"id", "path", "label"}
    index.json        model reference (checkpoint path, fingerprint, descriptor dim, preprocessing), factory,
                      search parameters, count, skipped unreadable files, creation time; ``root`` (the indexed
                      folder: clients see paths relative to it, :func:`display_path`) and, for a folder laid out
                      in classes, ``classes`` (the names, label order)
    shards/           the build's resumable descriptor cache (:mod:`vitrieval.index.shard_cache`)

Every file is written atomically; ``index.json`` is written last and its ``count`` must agree with the other two,
so a half-written folder is detected on load.
"""

from __future__ import annotations

import json
import logging
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
FORMAT_VERSION = 1

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
        if not any((directory / name).exists() for name in ours):
            raise ValueError(f"index output {directory} is a non-empty folder that is not a vitrieval index; "
                             f"choose another -o")


def read_folder(directory: Path, mmap: bool = False) -> tuple[faiss.Index, list[IndexEntry], dict[str, Any]]:
    """The faiss index, the entries and the info of an index folder, checked for completeness and agreement."""
    import faiss

    info_path = directory / INFO_FILE
    if not info_path.is_file():
        raise IndexFormatError(f"{directory} is not a vitrieval index: {INFO_FILE} not found")
    info = _read_json(info_path, "".join(_lines(info_path)))
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        info = info if isinstance(info, dict) else {}
        raise IndexFormatError(f"{info_path}: not a vitrieval index (format {info.get('format')!r})")
    if int(info.get("version", 0)) > FORMAT_VERSION:
        raise IndexFormatError(f"{info_path}: index format version {info['version']} is newer than this "
                               f"vitrieval understands ({FORMAT_VERSION}); upgrade vitrieval")
    for name in (INDEX_FILE, METADATA_FILE):
        if not (directory / name).is_file():
            raise IndexFormatError(f"{directory}: {name} is missing (an interrupted build? rerun it)")
    flags = faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY if mmap else 0
    try:
        faiss_index = faiss.read_index(str(directory / INDEX_FILE), flags)
    except RuntimeError as exc:
        log.debug("faiss.read_index(%s): %s", directory / INDEX_FILE, exc)
        raise IndexFormatError(f"{directory / INDEX_FILE} is unreadable by faiss (truncated or damaged): rebuild "
                               "the index (vitrieval index) or copy it again") from None
    entries = []
    metadata = directory / METADATA_FILE
    for number, line in enumerate(_lines(metadata), start=1):
        if line.strip():
            row = _read_json(metadata, line, number)
            try:
                entries.append(IndexEntry(int(row["id"]), row["path"], row.get("label")))
            except (KeyError, TypeError, ValueError, AttributeError):
                raise IndexFormatError(f"{metadata} line {number} is not an index entry ({line.strip()[:80]}); "
                                       "rebuild the index or copy it again") from None
    if not (len(entries) == faiss_index.ntotal == int(info["count"])):
        raise IndexFormatError(f"{directory}: inconsistent index ({len(entries)} metadata rows, "
                               f"{faiss_index.ntotal} vectors, index.json says {info['count']}); an "
                               f"interrupted write? rebuild the index")
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
    """Write ``metadata.jsonl``, ``index.faiss`` and then ``index.json`` (its ``count`` set) atomically."""
    import faiss

    directory.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"id": e.id, "path": e.path, "label": e.label}) for e in entries]
    atomic_write_text(directory / METADATA_FILE, "\n".join(lines) + ("\n" if lines else ""))
    with atomic_path(directory / INDEX_FILE) as tmp:
        faiss.write_index(faiss_index, str(tmp))
    info["count"] = len(lines)
    atomic_write_json(directory / INFO_FILE, info)
