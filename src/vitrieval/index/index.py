"""A searchable collection: faiss index of L2-normalised descriptors + id/path/label metadata + model reference.

An index folder holds::

    index.faiss       the faiss index (inner product on unit vectors = cosine), wrapped in IndexIDMap2
    metadata.jsonl    one line per indexed image: {"id", "path", "label"}
    index.json        model reference (checkpoint path, fingerprint, descriptor dim, preprocessing), factory,
                      search parameters, count, skipped unreadable files, creation time
    shards/           descriptors of the build, written shard by shard (NNNNN.npy + NNNNN.json): a rerun of
                      the same build reuses the finished shards instead of embedding them again (images
                      appended later by ``add`` are not in them; delete the folder to save disk)

Under ``torchrun`` (a ``torch.distributed`` process group) :meth:`Index.build` shards the embedding across the
ranks and rank 0 alone writes the folder (see its docstring and ``docs/DISTRIBUTED.md``).

Every file is written atomically; ``index.json`` is written last and its ``count`` must agree with the other two,
so a half-written folder is detected on load. The index type is a faiss factory string (``"Flat"``,
``"IVF4096,PQ32x4fs,RFlat"``, ``"HNSW32"``...) or ``"auto"``: exact search below :data:`AUTO_EXACT_LIMIT`
vectors, the benchmarked approximate preset (:data:`APPROXIMATE_FACTORY`, see ``benchmarks/search.py``) above.

Queries are embedded by the same model (its fingerprint is checked when it is loaded) with the same
preprocessing, so a query of another model or of the wrong dimension is refused with a clear error.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import pickle
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Union

import numpy as np
from PIL import Image

from vitrieval.data.images import load_image
from vitrieval.data.readers.folder import list_images
from vitrieval.data.table import ImageTable, Record, read_csv_table
from vitrieval.distributed import DistContext
from vitrieval.embed import extract, resolve_distributed
from vitrieval.io_utils import atomic_path, atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)

INDEX_FILE = "index.faiss"
METADATA_FILE = "metadata.jsonl"
INFO_FILE = "index.json"
SHARDS_DIR = "shards"
FORMAT = "vitrieval-index"
FORMAT_VERSION = 1

DEFAULT_SHARD_SIZE = 10_000
"""Images per descriptor shard: the unit of work a rerun of an interrupted build does not repeat."""

AUTO_EXACT_LIMIT = 100_000
"""``factory="auto"``: exact (Flat) search below this many vectors, :data:`APPROXIMATE_FACTORY` from there on."""

APPROXIMATE_FACTORY = "IVF4096,PQ32x4fs,RFlat"
"""The recommended approximate index (``benchmarks/search.py``, 1M x 128: recall@10 >= 0.95 at >= 10x the
queries per second of exact search): inverted lists + 4-bit fast-scan PQ, re-ranked with the exact vectors."""

APPROXIMATE_SEARCH_PARAMS: dict[str, int] = {"nprobe": 32, "k_factor": 8}
"""Search parameters that go with :data:`APPROXIMATE_FACTORY`."""

RANK0_WAIT_TIMEOUT = timedelta(hours=24)
"""Under torchrun, how long the other ranks wait for rank 0 to check the shard cache, train and fill the faiss index
and write the folder (on a gloo group of their own: NCCL's default collective timeout, 10 min, is shorter than
training a large IVF index)."""

DEFAULT_EF_SEARCH = 128
"""HNSW efSearch when a factory string with HNSW is given without one (faiss' own default of 16 is too low)."""

DEFAULT_NPROBE_FRACTION = 1 / 128
"""IVF nprobe when not given: this fraction of the lists, at least 8 (faiss' own default of 1 is too low)."""

DEFAULT_K_FACTOR = 4
"""Refine (RFlat) when not given: re-rank 4 k approximate candidates with the exact vectors."""

MAX_TRAIN_POINTS_PER_CENTROID = 64
"""IVF training sample: at most this many vectors per list (faiss warns below 39; its own cap is 256, which makes
k-means on 4096 lists four times slower for no measurable recall in ``benchmarks/search.py``)."""

ImageLike = Union[str, Path, bytes, Image.Image]
ImagesArg = Union[str, Path, ImageTable, Sequence[str | Path]]


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


@dataclass(frozen=True)
class Hit:
    """One search result: the indexed image and its cosine similarity to the query (1 = identical)."""

    id: int
    path: str
    label: int | None
    score: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class AddReport:
    """What :meth:`Index.add` (and a build) did: images added, unreadable files skipped, paths already indexed."""

    added: int
    skipped: list[str] = field(default_factory=list)
    already_indexed: int = 0


# ----------------------------------------------------------------------------------------------------------------
# inputs


def as_table(images: ImagesArg) -> ImageTable:
    """A folder (every image under it, labels unknown), a ``.csv`` table, a list of paths or an ImageTable."""
    if isinstance(images, ImageTable):
        table = images
    elif isinstance(images, (str, Path)):
        path = Path(images).expanduser()
        if path.is_dir():
            table = ImageTable([Record(str(p.resolve()), -1) for p in list_images(path)], path.name)
        elif path.suffix.lower() == ".csv" and path.is_file():
            table = read_csv_table(path)
        elif path.is_file():
            table = ImageTable([Record(str(path.resolve()), -1)], path.stem)
        else:
            raise FileNotFoundError(f"images to index: {path} is neither a folder, a .csv table nor an image file")
    else:
        table = ImageTable([Record(str(Path(p).expanduser().resolve()), -1) for p in images], "images")
    if len(table) == 0:
        raise ValueError(f"no images to index in {images if isinstance(images, (str, Path)) else table.name}")
    return table


def _label(value: int) -> int | None:
    return None if value is None or int(value) < 0 else int(value)


def _parse_training_needs(factory: str) -> tuple[int, str]:
    """Fewest training vectors ``factory`` needs (IVF lists, PQ/SQ codebook sizes) and what needs them."""
    need, why = 0, ""
    for m in re.finditer(r"IVF(\d+)", factory):
        if int(m.group(1)) > need:
            need, why = int(m.group(1)), f"IVF{m.group(1)} has {m.group(1)} lists"
    for m in re.finditer(r"(?<![A-Za-z])(?:PQ|OPQ)(\d+)(?:x(\d+))?", factory):
        bits = int(m.group(2)) if m.group(2) else 8
        if 2 ** bits > need:
            need, why = 2 ** bits, f"{m.group(0)} has {2 ** bits} centroids per sub-quantizer"
    return need, why


def resolve_factory(factory: str, count: int) -> str:
    """``"auto"`` -> ``"Flat"`` below :data:`AUTO_EXACT_LIMIT` vectors, else :data:`APPROXIMATE_FACTORY`."""
    if factory == "auto":
        return "Flat" if count < AUTO_EXACT_LIMIT else APPROXIMATE_FACTORY
    return factory


def make_faiss_index(factory: str, dim: int):
    """An untrained faiss index for ``factory`` on inner product, wrapped in IndexIDMap2 (ids = metadata ids)."""
    import faiss

    if factory.startswith("IDMap"):
        raise ValueError(f"factory {factory!r}: leave out IDMap, every index is wrapped in IndexIDMap2 already")
    try:
        inner = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1][:200]
        raise ValueError(f"faiss cannot build index {factory!r} for {dim}-d descriptors: {first}") from None
    return faiss.IndexIDMap2(inner)


def _unwrap(index) -> list:
    """The chain of (downcast) faiss indexes below ``index``: IDMap -> Refine -> PreTransform -> IVF/HNSW."""
    import faiss

    chain = []
    current = faiss.downcast_index(index)
    while current is not None:
        chain.append(current)
        if isinstance(current, (faiss.IndexIDMap, faiss.IndexIDMap2)):
            current = faiss.downcast_index(current.index)
        elif isinstance(current, faiss.IndexRefine):
            current = faiss.downcast_index(current.base_index)
        elif isinstance(current, faiss.IndexPreTransform):
            current = faiss.downcast_index(current.index)
        else:
            current = None
    return chain


def _part(index, name: str):
    """The IVF / HNSW / Refine layer of ``index`` that the search parameter ``name`` applies to, or ``None``."""
    import faiss

    kind = {"nprobe": faiss.IndexIVF, "ef_search": faiss.IndexHNSW, "k_factor": faiss.IndexRefine}[name]
    for part in _unwrap(index):
        if isinstance(part, kind):
            return part
    return None


SEARCH_PARAMS = {"nprobe": "IVF", "ef_search": "HNSW", "k_factor": "refined (RFlat)"}


def get_search_params(index) -> dict[str, int]:
    """The search parameters (nprobe, ef_search, k_factor) that apply to the faiss ``index``, with their values."""
    out = {}
    for name in SEARCH_PARAMS:
        part = _part(index, name)
        if part is not None:
            value = {"nprobe": lambda p: p.nprobe, "ef_search": lambda p: p.hnsw.efSearch,
                     "k_factor": lambda p: p.k_factor}[name](part)
            out[name] = int(value)
    return out


def set_search_params(index, **params: int | None) -> dict[str, int]:
    """Set ``nprobe`` (IVF, clipped to nlist), ``ef_search`` (HNSW), ``k_factor`` (RFlat) on a faiss index.

    ``None`` values are ignored; a parameter the index has no layer for raises ``AttributeError``.
    Returns the values now in effect.
    """
    for name, value in params.items():
        if value is None:
            continue
        if name not in SEARCH_PARAMS:
            raise ValueError(f"unknown search parameter {name!r}; known: {', '.join(SEARCH_PARAMS)}")
        part = _part(index, name)
        if part is None:
            raise AttributeError(f"{name} applies to {SEARCH_PARAMS[name]} indexes only")
        if int(value) < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
        if name == "nprobe":
            part.nprobe = min(int(value), int(part.nlist))
        elif name == "ef_search":
            part.hnsw.efSearch = int(value)
        else:
            part.k_factor = float(value)
    return get_search_params(index)


def default_search_params(index, factory: str) -> dict[str, int]:
    """Search parameters a new index starts with (faiss' own defaults, nprobe=1 and efSearch=16, are too low)."""
    params = dict(APPROXIMATE_SEARCH_PARAMS) if factory == APPROXIMATE_FACTORY else {}
    for name in SEARCH_PARAMS:
        part = _part(index, name)
        if part is None or name in params:
            continue
        if name == "nprobe":
            params[name] = max(8, int(part.nlist * DEFAULT_NPROBE_FRACTION))
        elif name == "ef_search":
            params[name] = DEFAULT_EF_SEARCH
        else:
            params[name] = DEFAULT_K_FACTOR
    return {k: v for k, v in params.items() if _part(index, k) is not None}


def _shard_key(records: Sequence[Record], fingerprint: str, preprocessing: dict[str, Any]) -> str:
    h = hashlib.sha256(json.dumps([fingerprint, preprocessing], sort_keys=True).encode())
    for r in records:
        h.update(f"{r.path}\t{r.label}\t{r.bbox}\n".encode())
    return h.hexdigest()[:24]


def _save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, np.ascontiguousarray(array, dtype=np.float32))


def _normalized(x: np.ndarray) -> np.ndarray:
    x = np.array(x, dtype=np.float32, copy=True, order="C")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    np.divide(x, norms, out=x, where=norms > 0)
    return x


# ----------------------------------------------------------------------------------------------------------------


class Index:
    """Descriptors of an image collection in a faiss index, with the metadata and the model to query it.

    Build with :meth:`build`, open with :meth:`load`; :meth:`search` takes images (paths, bytes, PIL) or
    descriptors; :meth:`add` appends images. Embedding, search and add hold one lock, so an ``Index`` can be shared
    by the threads of a web server.
    """

    def __init__(self, faiss_index, entries: Sequence[IndexEntry], info: dict[str, Any],
                 directory: str | Path | None = None, device: str = "auto") -> None:
        self._index = faiss_index
        self._entries: dict[int, IndexEntry] = {e.id: e for e in entries}
        self._paths = {e.path for e in entries}
        self.info = info
        self.directory = Path(directory) if directory is not None else None
        self.device = device
        self._encoder = None
        self._lock = threading.RLock()
        if info.get("search_params"):
            set_search_params(faiss_index, **info["search_params"])

    # -- construction ----------------------------------------------------------------------------------------
    @classmethod
    def build(cls, checkpoint_dir: str | Path, images: ImagesArg, out_dir: str | Path | None = None,
              factory: str = "auto", batch_size: int = 64, num_workers: int = 2,
              shard_size: int = DEFAULT_SHARD_SIZE, *, device: str = "auto", amp: str = "auto",
              resize: str = "shorter", nprobe: int | None = None, ef_search: int | None = None,
              k_factor: int | None = None, progress: bool = True,
              distributed: bool | DistContext | None = None) -> Index | None:
        """Embed ``images`` with the model in ``checkpoint_dir`` and index them (saved to ``out_dir`` if given).

        ``images``: a folder (recursively), a ``.csv`` table (``path[,label,...]``), a list of paths or an
        :class:`ImageTable`. With ``out_dir`` the descriptors are written shard by shard (``shard_size`` images)
        into ``out_dir/shards`` and a rerun reuses the shards already there. Unreadable images are logged,
        skipped and listed in ``index.json`` (``skipped``). IVF / PQ factories are trained on the descriptors;
        too few of them for the factory is an error that says how many it needs.

        Several processes (``torchrun``): ``distributed`` is read as by :func:`vitrieval.embed.extract` (``None``:
        shard when a process group is initialised; ``True``: also initialise it from torchrun's environment;
        ``False``: this process builds alone, as if there were no group; or a ``DistContext``). Every rank must
        call ``build`` with the same arguments. Rank 0 decides which resume shards are already in ``out_dir/shards``
        and tells the others; each missing shard is then embedded by all ranks together (``extract`` with the
        group: every rank embeds a contiguous run of whole batches of the one-process batching, no padding and no
        duplicate) and written by rank 0. So the shards, hence the index, are bit for bit those of one process with
        the same ``batch_size`` and ``shard_size``, and the cache is interchangeable between runs with any number
        of ranks (an interrupted torchrun build can be resumed by one process and the other way round). Splitting
        whole shards between the ranks instead would have every rank write files and leave all but one rank idle
        when there are fewer shards than ranks (with the default 10,000 images per shard, any collection under
        10,000 x ranks). Rank 0 alone then trains and fills the faiss index and writes every file; the other ranks
        wait for it (:data:`RANK0_WAIT_TIMEOUT`) and return ``None`` after the folder is complete (rank 0's index
        is not sent to them: open it with :meth:`load` where needed). An error of rank 0's part (a foreign
        ``out_dir``, too few descriptors for ``factory``, no readable image) is raised on every rank, marked
        ``raised_on_rank = 0`` (the command has rank 0 alone print it).
        """
        from tqdm.auto import tqdm

        from vitrieval.amp import resolve_device
        from vitrieval.model import load

        if shard_size <= 0:
            raise ValueError(f"shard_size must be > 0, got {shard_size}")
        ctx = resolve_distributed(distributed)
        main = ctx.is_main
        table = as_table(images)
        checkpoint = Path(checkpoint_dir).expanduser().resolve()
        encoder = load(checkpoint, device=resolve_device(device))
        fingerprint = encoder.fingerprint()
        amp = _effective_amp(encoder, amp)
        preprocessing = {"resize": resize, "amp": amp}
        directory = Path(out_dir).expanduser() if out_dir is not None else None
        shard_dir = directory / SHARDS_DIR if directory is not None else None
        n_shards = math.ceil(len(table) / shard_size)
        shard_records = [table.records[s * shard_size:(s + 1) * shard_size] for s in range(n_shards)]
        keys = [_shard_key(records, fingerprint, preprocessing) for records in shard_records]

        with _RankZero(ctx) as rank0:
            rank0.check_same(hashlib.sha256("".join(keys).encode()).hexdigest(),
                             f"the ranks see different images to index or models ({len(table)} images here)")
            # rank 0 alone looks at the output folder; the others learn which shards are still to embed
            cached: dict[int, tuple[np.ndarray, list[Record], list[str]]] = {}
            failure = None
            if main and shard_dir is not None:
                try:
                    _check_out_dir(directory)
                    shard_dir.mkdir(parents=True, exist_ok=True)
                    for s in range(n_shards):
                        found = _read_shard(shard_dir, s, keys[s])
                        if found is not None:
                            cached[s] = found
                except (OSError, ValueError) as exc:
                    failure = exc
            todo = set(rank0.share(sorted(set(range(n_shards)) - set(cached)), failure))

            shards: list[tuple[np.ndarray, list[Record]]] = []  # (descriptors, records of its rows); rank 0 only
            skipped: list[str] = []
            started = time.time()
            bar = tqdm(total=len(table), desc="indexing", unit="img", disable=not (progress and main))
            for s in range(n_shards):
                records = shard_records[s]
                if s in todo:
                    sub = ImageTable(list(records), f"{table.name}/shard{s:05d}")
                    ex = extract(encoder, sub, batch_size=batch_size, num_workers=num_workers, amp=amp,
                                 resize=resize, skip_bad=True, progress=progress, desc=f"shard {s + 1}/{n_shards}",
                                 distributed=ctx)
                    descriptors = ex.descriptors
                    kept = [records[i] for i in ex.indices.tolist()]
                    bad = list(ex.bad_paths)
                    if shard_dir is not None and main:
                        _write_shard(shard_dir, s, keys[s], descriptors, kept, bad)
                elif main:
                    descriptors, kept, bad = cached[s]
                    log.info("shard %05d: reusing %d descriptors from %s", s, len(kept), shard_dir)
                if main:
                    for path in bad:
                        log.warning("skipped unreadable image: %s", path)
                    skipped.extend(bad)
                    shards.append((descriptors, kept))
                    bar.update(len(records))
            bar.close()

            # rank 0 alone trains, fills and writes the index; the others wait for the folder to be complete
            index, failure = None, None
            if main:
                try:
                    if shard_dir is not None:
                        _remove_stale_shards(shard_dir, n_shards)
                    if skipped:
                        log.warning("%d unreadable image(s) skipped (listed in %s)", len(skipped),
                                    directory / INFO_FILE if directory else "index.info['skipped']")
                    if sum(len(k) for _, k in shards) == 0:
                        raise ValueError(f"none of the {len(table)} images could be read (first: {skipped[0]})")
                    index = cls._assemble(encoder, checkpoint, shards, directory, factory, preprocessing, skipped,
                                          started, device,
                                          {"nprobe": nprobe, "ef_search": ef_search, "k_factor": k_factor})
                except Exception as exc:  # noqa: BLE001 - re-raised below, on every rank
                    failure = exc
            rank0.share(None, failure)
        return index

    @classmethod
    def from_descriptors(cls, checkpoint_dir: str | Path, descriptors: np.ndarray, paths: Sequence[str | Path],
                         labels: Sequence[int] | None = None, out_dir: str | Path | None = None,
                         factory: str = "auto", *, device: str = "auto", resize: str = "shorter",
                         amp: str = "auto", nprobe: int | None = None, ef_search: int | None = None,
                         k_factor: int | None = None) -> Index:
        """Index descriptors computed elsewhere by the model in ``checkpoint_dir`` (e.g. by ``embed.extract``).

        ``descriptors[i]`` belongs to ``paths[i]``; the model is loaded for its fingerprint and preprocessing,
        and its descriptor dimension must match. ``resize`` / ``amp`` must be what the descriptors were made
        with, so that queries are embedded the same way.
        """
        from vitrieval.amp import resolve_device
        from vitrieval.model import load

        x = np.asarray(descriptors, dtype=np.float32)
        if x.ndim != 2 or len(x) != len(paths) or len(x) == 0:
            raise ValueError(f"descriptors of shape {x.shape} do not match {len(paths)} paths (need (n, d), n > 0)")
        if labels is not None and len(labels) != len(paths):
            raise ValueError(f"{len(labels)} labels for {len(paths)} paths")
        checkpoint = Path(checkpoint_dir).expanduser().resolve()
        encoder = load(checkpoint, device=resolve_device(device))
        if x.shape[1] != encoder.descriptor_dim:
            raise ModelMismatchError(f"descriptors are {x.shape[1]}-d but the model at {checkpoint} gives "
                                     f"{encoder.descriptor_dim}-d ones")
        records = [Record(str(Path(p).expanduser().resolve()), -1 if labels is None else int(labels[i]))
                   for i, p in enumerate(paths)]
        directory = Path(out_dir).expanduser() if out_dir is not None else None
        if directory is not None:
            _check_out_dir(directory)
        preprocessing = {"resize": resize, "amp": _effective_amp(encoder, amp)}
        return cls._assemble(encoder, checkpoint, [(x, records)], directory, factory, preprocessing, [],
                             time.time(), device, {"nprobe": nprobe, "ef_search": ef_search, "k_factor": k_factor})

    @classmethod
    def _assemble(cls, encoder, checkpoint: Path, shards: list[tuple[np.ndarray, list[Record]]],
                  directory: Path | None, factory: str, preprocessing: dict[str, Any], skipped: list[str],
                  started: float, device: str, params: dict[str, int | None]) -> Index:
        """Train (if needed) and fill the faiss index from descriptor chunks, then save it if ``directory``."""
        count = sum(len(k) for _, k in shards)
        dim = next(int(d.shape[1]) for d, k in shards if len(k))
        resolved = resolve_factory(factory, count)
        faiss_index = make_faiss_index(resolved, dim)
        if not faiss_index.is_trained:
            train_faiss_index(faiss_index, resolved, [d for d, _ in shards])
        entries: list[IndexEntry] = []
        next_id = 0
        for descriptors, kept in shards:
            if len(kept) == 0:
                continue
            ids = np.arange(next_id, next_id + len(kept), dtype=np.int64)
            faiss_index.add_with_ids(_normalized(descriptors), ids)
            entries.extend(IndexEntry(int(i), r.path, _label(r.label)) for i, r in zip(ids.tolist(), kept))
            next_id += len(kept)
        defaults = default_search_params(faiss_index, resolved)
        defaults.update({k: v for k, v in params.items() if v is not None})
        now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        info = {
            "format": FORMAT, "version": FORMAT_VERSION,
            "checkpoint": str(checkpoint), "fingerprint": encoder.fingerprint(), "descriptor_dim": dim,
            "factory": resolved, "requested_factory": factory, "metric": "inner_product",
            "data_config": encoder.data_config, "preprocessing": preprocessing,
            "count": count, "next_id": next_id, "created": now, "updated": now,
            "build_seconds": round(time.time() - started, 3), "skipped": list(skipped),
            "search_params": set_search_params(faiss_index, **defaults),
        }
        index = cls(faiss_index, entries, info, directory, device=device)
        index._encoder = encoder
        if directory is not None:
            index.save(directory)
        return index

    @classmethod
    def load(cls, directory: str | Path, checkpoint: str | Path | None = None, device: str = "auto",
             mmap: bool = False) -> Index:
        """Open an index folder. ``checkpoint`` overrides the stored model path (a model folder that moved).

        The model itself is loaded on first use (:attr:`encoder`); ``mmap=True`` memory-maps ``index.faiss``
        (read-only use of a large index).
        """
        import faiss

        directory = Path(directory).expanduser()
        info_path = directory / INFO_FILE
        if not info_path.is_file():
            raise IndexFormatError(f"{directory} is not a vitrieval index: {INFO_FILE} not found")
        info = json.loads(info_path.read_text())
        if info.get("format") != FORMAT:
            raise IndexFormatError(f"{info_path}: not a vitrieval index (format {info.get('format')!r})")
        if int(info.get("version", 0)) > FORMAT_VERSION:
            raise IndexFormatError(f"{info_path}: index format version {info['version']} is newer than this "
                                   f"vitrieval understands ({FORMAT_VERSION}); upgrade vitrieval")
        for name in (INDEX_FILE, METADATA_FILE):
            if not (directory / name).is_file():
                raise IndexFormatError(f"{directory}: {name} is missing (an interrupted build? rerun it)")
        flags = faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY if mmap else 0
        faiss_index = faiss.read_index(str(directory / INDEX_FILE), flags)
        entries = []
        with open(directory / METADATA_FILE, encoding="utf-8") as fh:
            for line in fh:
                if line.strip():
                    row = json.loads(line)
                    entries.append(IndexEntry(int(row["id"]), row["path"], row.get("label")))
        if not (len(entries) == faiss_index.ntotal == int(info["count"])):
            raise IndexFormatError(f"{directory}: inconsistent index ({len(entries)} metadata rows, "
                                   f"{faiss_index.ntotal} vectors, index.json says {info['count']}); an "
                                   f"interrupted write? rebuild the index")
        if checkpoint is not None:
            info["checkpoint"] = str(Path(checkpoint).expanduser().resolve())
        return cls(faiss_index, entries, info, directory, device=device)

    def save(self, directory: str | Path | None = None) -> Path:
        """Write ``index.faiss``, ``metadata.jsonl`` and then ``index.json`` atomically into ``directory``."""
        import faiss

        directory = Path(directory) if directory is not None else self.directory
        if directory is None:
            raise ValueError("Index.save: no directory given and the index was not loaded from one")
        directory.mkdir(parents=True, exist_ok=True)
        with self._lock:
            lines = [json.dumps({"id": e.id, "path": e.path, "label": e.label}) for e in self._entries.values()]
            atomic_write_text(directory / METADATA_FILE, "\n".join(lines) + ("\n" if lines else ""))
            with atomic_path(directory / INDEX_FILE) as tmp:
                faiss.write_index(self._index, str(tmp))
            self.info["count"] = len(self._entries)
            atomic_write_json(directory / INFO_FILE, self.info)
        self.directory = directory
        return directory

    # -- properties ------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self._index.ntotal)

    def __repr__(self) -> str:
        return (f"Index({len(self)} x {self.descriptor_dim}-d, factory={self.factory!r}, "
                f"model={self.fingerprint}, dir={str(self.directory) if self.directory else None!r})")

    @property
    def descriptor_dim(self) -> int:
        return int(self.info["descriptor_dim"])

    @property
    def fingerprint(self) -> str:
        """Fingerprint of the model that embedded the collection."""
        return str(self.info["fingerprint"])

    @property
    def factory(self) -> str:
        return str(self.info["factory"])

    @property
    def skipped(self) -> list[str]:
        """Unreadable files that were skipped while building or adding."""
        return list(self.info.get("skipped", []))

    @property
    def faiss_index(self):
        """The underlying faiss index (an IndexIDMap2; ids are the metadata ids)."""
        return self._index

    def entry(self, image_id: int) -> IndexEntry:
        """The indexed image with this id; ``KeyError`` if there is none."""
        try:
            return self._entries[int(image_id)]
        except (KeyError, ValueError, TypeError):
            raise KeyError(f"no image with id {image_id!r} in the index") from None

    def entries(self) -> list[IndexEntry]:
        return list(self._entries.values())

    @property
    def encoder(self):
        """The model that embeds queries, loaded on first use; refuses a checkpoint whose weights changed."""
        if self._encoder is None:
            with self._lock:
                if self._encoder is None:
                    self._encoder = self._load_encoder()
        return self._encoder

    def _load_encoder(self):
        from vitrieval.amp import resolve_device
        from vitrieval.model import load

        checkpoint = Path(self.info["checkpoint"])
        if not checkpoint.exists():
            raise FileNotFoundError(f"the index's model {checkpoint} is gone; pass checkpoint= to Index.load "
                                    f"(--checkpoint) with the folder of the model that built it")
        encoder = load(checkpoint, device=resolve_device(self.device))
        found = encoder.fingerprint()
        if found != self.fingerprint:
            raise ModelMismatchError(
                f"the model at {checkpoint} changed since the index was built (fingerprint {found}, index built "
                f"with {self.fingerprint}): its descriptors are not comparable; rebuild the index or point to the "
                f"original model")
        if encoder.descriptor_dim != self.descriptor_dim:
            raise ModelMismatchError(f"the model at {checkpoint} gives {encoder.descriptor_dim}-d descriptors, "
                                     f"the index holds {self.descriptor_dim}-d ones")
        return encoder

    # -- search parameters -----------------------------------------------------------------------------------
    def _get(self, name: str) -> int:
        params = get_search_params(self._index)
        if name not in params:
            raise AttributeError(f"{name} applies to {SEARCH_PARAMS[name]} indexes; this index is {self.factory!r}")
        return params[name]

    def _set(self, name: str, value: int) -> None:
        try:
            now = set_search_params(self._index, **{name: value})
        except AttributeError:
            raise AttributeError(f"{name} applies to {SEARCH_PARAMS[name]} indexes; this index is "
                                 f"{self.factory!r}") from None
        self.info["search_params"] = now

    @property
    def search_params(self) -> dict[str, int]:
        """The search parameters of this index and their values (saved in ``index.json``)."""
        return get_search_params(self._index)

    @property
    def nprobe(self) -> int:
        """IVF: how many inverted lists a query visits (recall against speed); clipped to the number of lists."""
        return self._get("nprobe")

    @nprobe.setter
    def nprobe(self, value: int) -> None:
        self._set("nprobe", value)

    @property
    def ef_search(self) -> int:
        """HNSW: size of the candidate list during search (recall against speed)."""
        return self._get("ef_search")

    @ef_search.setter
    def ef_search(self, value: int) -> None:
        self._set("ef_search", value)

    @property
    def k_factor(self) -> int:
        """Refine (``,RFlat``): re-rank ``k * k_factor`` approximate candidates with the exact vectors."""
        return self._get("k_factor")

    @k_factor.setter
    def k_factor(self, value: int) -> None:
        self._set("k_factor", value)

    # -- embedding and search --------------------------------------------------------------------------------
    def embed(self, images: Sequence[ImageLike], batch_size: int = 32) -> np.ndarray:
        """Descriptors of query images (paths, file bytes or PIL images) with the index's model and preprocessing.

        An unreadable image raises :class:`vitrieval.data.images.ImageDecodeError` naming it.
        """
        import torch

        from vitrieval.data.transforms import eval_transform

        pil = [im.convert("RGB") if isinstance(im, Image.Image) else load_image(im) for im in images]
        prep = self.info.get("preprocessing", {})
        transform = eval_transform(self.info["data_config"], prep.get("resize", "shorter"))
        encoder = self.encoder
        with self._lock:
            out = []
            for i in range(0, len(pil), batch_size):
                batch = torch.stack([transform(im) for im in pil[i:i + batch_size]])
                out.append(encoder.embed(batch, batch_size=batch_size, amp=_effective_amp(encoder, prep.get("amp"))))
        if not out:
            return np.zeros((0, self.descriptor_dim), dtype=np.float32)
        return np.concatenate(out)

    def search(self, queries: Sequence[ImageLike] | np.ndarray, k: int = 10,
               fingerprint: str | None = None) -> list[list[Hit]]:
        """Top-``k`` indexed images for each query, best first (score = cosine similarity).

        ``queries``: images (paths, bytes, PIL) embedded with the index's model, or descriptors (``(n, d)`` or
        ``(d,)`` array). Give ``fingerprint`` (``encoder.fingerprint()``) with descriptors computed elsewhere to
        have descriptors of another model refused.
        """
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        if fingerprint is not None and fingerprint != self.fingerprint:
            raise ModelMismatchError(f"query descriptors come from model {fingerprint}, the index was built with "
                                     f"model {self.fingerprint}: embed the queries with the index's model")
        if _is_descriptor_array(queries):
            x = np.asarray(queries.detach().cpu().numpy() if hasattr(queries, "detach") else queries)
            if x.ndim == 1:
                x = x[None, :]
            if x.ndim != 2 or x.shape[1] != self.descriptor_dim:
                raise ModelMismatchError(
                    f"query descriptors have shape {tuple(x.shape)}, the index holds {self.descriptor_dim}-d "
                    f"descriptors (model {self.fingerprint}): were they embedded by another model?")
            if not np.all(np.isfinite(x)):
                raise ValueError("query descriptors contain NaN or infinite values")
        else:
            if isinstance(queries, (str, Path, bytes, Image.Image)):
                queries = [queries]
            x = self.embed(list(queries))
        if len(x) == 0:
            return []
        with self._lock:
            scores, ids = self._index.search(_normalized(x), int(min(k, max(len(self), 1))))
        results = []
        for row_scores, row_ids in zip(scores, ids):
            hits = []
            for score, i in zip(row_scores.tolist(), row_ids.tolist()):
                if i < 0:
                    continue
                e = self._entries[i]
                hits.append(Hit(e.id, e.path, e.label, float(score)))
            results.append(hits)
        return results

    def add(self, images: ImagesArg, batch_size: int = 64, num_workers: int = 2, progress: bool = True,
            save: bool = True, distributed: bool | DistContext | None = None) -> AddReport:
        """Embed and append images (skipping paths already indexed and unreadable files); saves if on disk.

        ``distributed`` as in :func:`vitrieval.embed.extract`: with a process group (torchrun) every rank must
        call ``add`` on its copy of the same index with the same images; the ranks share the embedding, every
        rank's copy gets every image, and rank 0 alone saves (the others wait until it has).
        """
        ctx = resolve_distributed(distributed)
        table = as_table(images)
        fresh = [r for r in table.records if r.path not in self._paths]
        already = len(table) - len(fresh)
        if already and ctx.is_main:
            log.info("%d image(s) already in the index, not added again", already)
        if not fresh:
            return AddReport(0, [], already)
        encoder = self.encoder
        prep = self.info.get("preprocessing", {})
        with self._lock:
            ex = extract(encoder, ImageTable(fresh, "add"), batch_size=batch_size, num_workers=num_workers,
                         amp=_effective_amp(encoder, prep.get("amp")), resize=prep.get("resize", "shorter"), skip_bad=True,
                         progress=progress, desc="adding", distributed=ctx)
            for path in ex.bad_paths if ctx.is_main else ():
                log.warning("skipped unreadable image: %s", path)
            kept = [fresh[i] for i in ex.indices.tolist()]
            next_id = int(self.info.get("next_id", len(self)))
            if kept:
                ids = np.arange(next_id, next_id + len(kept), dtype=np.int64)
                self._index.add_with_ids(_normalized(ex.descriptors), ids)
                for i, r in zip(ids.tolist(), kept):
                    self._entries[i] = IndexEntry(i, r.path, _label(r.label))
                    self._paths.add(r.path)
                self.info["next_id"] = next_id + len(kept)
            self.info["count"] = len(self._entries)
            self.info["skipped"] = sorted(set(self.info.get("skipped", [])) | set(ex.bad_paths))
            self.info["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            if save and self.directory is not None:
                if ctx.is_main:
                    self.save(self.directory)
                ctx.barrier()
        return AddReport(len(kept), list(ex.bad_paths), already)


# ----------------------------------------------------------------------------------------------------------------
# helpers of build


class _RankZero:
    """The parts of a build that rank 0 does alone, under torchrun: the other ranks wait for its outcome.

    They wait on a gloo group of their own with :data:`RANK0_WAIT_TIMEOUT` (CPU objects only), so that NCCL's
    10-minute default does not cut a long faiss training short. Without a process group it only re-raises.
    """

    def __init__(self, ctx: DistContext) -> None:
        self.ctx = ctx
        self.group = None

    def __enter__(self) -> _RankZero:
        if self.ctx.enabled:
            import torch.distributed as dist

            self.group = dist.new_group(backend="gloo", timeout=RANK0_WAIT_TIMEOUT)
        return self

    def __exit__(self, *exc_info: Any) -> None:
        if self.group is not None:
            import torch.distributed as dist

            dist.destroy_process_group(self.group)
            self.group = None

    def check_same(self, value: str, message: str) -> None:
        """Raise ``ValueError(message)`` on every rank unless every rank passes the same ``value``."""
        if self.group is None:
            return
        import torch.distributed as dist

        values: list[Any] = [None] * self.ctx.world_size
        dist.all_gather_object(values, value, group=self.group)
        if len(set(values)) > 1:
            raise ValueError(message)

    def share(self, value: Any, failure: BaseException | None = None) -> Any:
        """Rank 0's ``value`` on every rank, or rank 0's ``failure`` raised on every rank.

        Under torchrun the raised errors (rank 0's own and the others' copies) carry ``raised_on_rank = 0``, so
        that a command can have rank 0 alone report them.
        """
        if self.group is not None:
            import torch.distributed as dist

            box = [(value, _portable(failure)) if self.ctx.is_main else None]
            dist.broadcast_object_list(box, src=0, group=self.group)
            value, remote = box[0]
            if remote is not None:
                failure = failure if self.ctx.is_main else remote
                try:
                    failure.raised_on_rank = 0
                except AttributeError:
                    pass
        if failure is not None:
            raise failure
        return value


def _portable(exc: BaseException | None) -> BaseException | None:
    """``exc`` if it survives pickling (to be sent to the other ranks), else a RuntimeError with its message."""
    if exc is None:
        return None
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:  # noqa: BLE001 - any pickling failure
        return RuntimeError(f"{type(exc).__name__}: {exc}")
    return exc


def _effective_amp(encoder, amp: str | None) -> str:
    """Mixed precision for embedding: as asked on GPU, ``off`` on CPU for ``auto``.

    bf16 matmuls are several times slower than float32 on CPUs without native bf16 (measured: 7.0 s vs 2.7 s for
    64 images with the tiny test model), and the two differ by ~1e-3 in cosine, far below what ranks neighbours.
    """
    amp = amp or "auto"
    device = next(encoder.parameters()).device
    if device.type == "cpu" and amp == "auto":
        return "off"
    return amp


def _is_descriptor_array(x: Any) -> bool:
    if isinstance(x, np.ndarray):
        return x.dtype.kind in "fiu"
    return hasattr(x, "detach") and hasattr(x, "dim")  # a torch tensor


def _check_out_dir(directory: Path) -> None:
    """Refuse to build into a non-empty folder that is not (a former attempt at) an index."""
    if directory.exists() and not directory.is_dir():
        raise ValueError(f"index output {directory} exists and is not a folder")
    if directory.is_dir() and any(directory.iterdir()):
        ours = {INFO_FILE, INDEX_FILE, METADATA_FILE, SHARDS_DIR}
        if not any((directory / name).exists() for name in ours):
            raise ValueError(f"index output {directory} is a non-empty folder that is not a vitrieval index; "
                             f"choose another -o")


def _shard_paths(shard_dir: Path, s: int) -> tuple[Path, Path]:
    return shard_dir / f"{s:05d}.npy", shard_dir / f"{s:05d}.json"


def _write_shard(shard_dir: Path, s: int, key: str, descriptors: np.ndarray, kept: Sequence[Record],
                 bad: Sequence[str]) -> None:
    npy, meta = _shard_paths(shard_dir, s)
    _save_npy(npy, descriptors)
    atomic_write_json(meta, {"key": key, "count": len(kept), "dim": int(descriptors.shape[1]),
                             "rows": [[r.path, r.label] for r in kept], "bad": list(bad)})


def _read_shard(shard_dir: Path, s: int, key: str) -> tuple[np.ndarray, list[Record], list[str]] | None:
    """A finished shard of this exact input (same images, model and preprocessing), or ``None``."""
    npy, meta_path = _shard_paths(shard_dir, s)
    if not (npy.is_file() and meta_path.is_file()):
        return None
    try:
        meta = json.loads(meta_path.read_text())
        if meta.get("key") != key:
            return None
        descriptors = np.load(npy, mmap_mode="r")
    except (OSError, ValueError) as exc:
        log.warning("shard %s unreadable (%s); embedding it again", npy, exc)
        return None
    if descriptors.ndim != 2 or len(descriptors) != int(meta["count"]):
        return None
    records = [Record(p, int(label)) for p, label in meta["rows"]]
    return descriptors.astype(np.float32, copy=False), records, list(meta.get("bad", []))


def _remove_stale_shards(shard_dir: Path, n_shards: int) -> None:
    for p in shard_dir.iterdir():
        m = re.fullmatch(r"(\d{5})\.(npy|json)", p.name)
        if m and int(m.group(1)) >= n_shards:
            p.unlink()


def train_faiss_index(faiss_index, factory: str, chunks: Sequence[np.ndarray], seed: int = 0) -> None:
    """Train IVF / PQ on (a sample of) the descriptor chunks; too few of them for ``factory`` is a clear error.

    At most :data:`MAX_TRAIN_POINTS_PER_CENTROID` vectors per IVF list (and at least 256 x that) are drawn,
    uniformly, with a fixed seed.
    """
    count = sum(len(c) for c in chunks)
    need, why = _parse_training_needs(factory)
    if count < max(need, 1):
        suggestion = max(1, count // 39)
        raise ValueError(f"index {factory!r} needs at least {need} descriptors to train ({why}), the collection "
                         f"has {count}; use fewer lists (e.g. IVF{suggestion}), fewer PQ bits, or 'Flat'")
    nlist = max((int(m.group(1)) for m in re.finditer(r"IVF(\d+)", factory)), default=256)
    limit = max(nlist, 256) * MAX_TRAIN_POINTS_PER_CENTROID
    if count > limit:
        rows = np.sort(np.random.default_rng(seed).choice(count, limit, replace=False))
        picked, offset = [], 0
        for c in chunks:
            local = rows[(rows >= offset) & (rows < offset + len(c))] - offset
            if len(local):
                picked.append(np.asarray(c[local]))
            offset += len(c)
        data = np.concatenate(picked)
    else:
        data = np.concatenate([np.asarray(c) for c in chunks if len(c)])
    log.info("training %s on %d descriptors", factory, len(data))
    try:
        faiss_index.train(_normalized(data))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1][:200]
        raise ValueError(f"training index {factory!r} on {len(data)} descriptors failed: {first}") from None
