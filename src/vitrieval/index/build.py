"""Building an index: embed a collection shard by shard (resumably, optionally under torchrun), then train and fill
the faiss index.

The steps of :func:`build_index`:

1. :class:`_Plan`: the collection cut into shards, each with its cache key (model, preprocessing, records);
2. rank 0 checks the output folder, takes its write lock (:class:`~vitrieval.index.journal.JournalWriter`: a
   folder that a service or another command writes is refused here, before anything is embedded or written, and
   the lock is held until the index is saved) and reads the finished shards of the cache; the other ranks learn
   which shards are still to embed (:meth:`_Plan.shards_to_embed`);
3. every missing shard is embedded by all ranks together (``extract`` with the group: every rank embeds a
   contiguous run of whole batches of the one-process batching, no padding and no duplicate) and written by rank 0
   (:func:`_embed_shards`). So the shards, hence the index, are bit for bit those of one process with the same
   ``batch_size`` and ``shard_size``, and the cache is interchangeable between runs with any number of ranks.
   Splitting whole shards between the ranks instead would have every rank write files and leave all but one rank
   idle when there are fewer shards than ranks (with the default 10,000 images per shard, any collection under
   10,000 x ranks);
4. rank 0 alone trains and fills the faiss index (:func:`assemble`) and has it saved; the other ranks wait for it
   (:class:`~vitrieval.distributed.RankZero`) and get ``None``. An error of rank 0's part is raised on every rank.

This module makes the parts of an index (:class:`Built`); :class:`vitrieval.index.Index` turns them into itself.

Fast decoding (:attr:`BuildOptions.fast_decode`, ``data.fast_decode``; on by default, ``vitrieval index
--full-decode`` turns it off): large JPEGs are decoded at a reduced DCT scale that still covers the eval resize
(:mod:`vitrieval.data.images`), by either runtime. ``index.json`` records it as ``preprocessing.fast_decode`` (true
or false), so queries, ``add`` and the service decode their images the same way (an index.json without the key was
built before it was recorded, with full decodes: its queries decode at full size). The shard keys hash the
pre-processing, so shards embedded with and without it are never mixed; an older build's shard cache (no key) is
embedded once again by the first rebuild.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from vitrieval.amp import amp_mode, resolve_device
from vitrieval.data.collection import ImagesArg, collection_root, collection_table
from vitrieval.data.table import ImageTable, Record
from vitrieval.distributed import DistContext, RankZero
from vitrieval.index.faiss_utils import (
    check_factory,
    default_search_params,
    make_faiss_index,
    normalized,
    resolve_factory,
    set_search_params,
    train_faiss_index,
)
from vitrieval.index.journal import JournalWriter
from vitrieval.index.milvus_store import MilvusOptions
from vitrieval.index.shard_cache import (
    DEFAULT_SHARD_SIZE,
    SHARDS_DIR,
    CachedShard,
    read_cached_shards,
    remove_stale_shards,
    shard_key,
    split_records,
    write_shard,
)
from vitrieval.index.store import FORMAT, FORMAT_VERSION, INFO_FILE, IndexEntry, ModelMismatchError, check_out_dir
from vitrieval.rerank import RerankOptions, database_side_augmentation

if TYPE_CHECKING:
    import faiss

    from vitrieval.embed import ExtractionOptions
    from vitrieval.model import Encoder
    from vitrieval.runtime.embedder import Embedder
    from vitrieval.runtime.extraction import Extraction

log = logging.getLogger(__name__)

T = TypeVar("T")
Chunk = tuple[np.ndarray, list[Record]]
"""Descriptors and the records of their rows."""


@dataclass(frozen=True)
class BuildOptions:
    """The settings of a build, for either store: :meth:`vitrieval.index.Index.build` and
    :meth:`~vitrieval.index.Index.from_descriptors` take one (or its fields as keywords).

    ``milvus``: where a Milvus-backed index keeps its rows (:class:`~vitrieval.index.milvus_store.MilvusOptions`);
    ``None`` (default): a faiss index in the folder. ``factory``, ``k_factor``, ``dba`` and ``runtime="onnx"`` are
    the faiss store's and refused with ``milvus``; ``nprobe`` / ``ef_search`` apply to both.
    """

    factory: str = "auto"
    batch_size: int = 64
    num_workers: int | str = "auto"
    shard_size: int = DEFAULT_SHARD_SIZE
    device: str = "auto"
    amp: str = "auto"
    resize: str = "shorter"
    nprobe: int | None = None
    ef_search: int | None = None
    k_factor: int | None = None
    progress: bool = True
    scales: Sequence[float] | None = None
    dba: RerankOptions | tuple[int, float] | None = None
    runtime: str = "torch"  # "onnx": embed with <model>/model.onnx (vitrieval.runtime), in one process
    fast_decode: bool | None = True  # large JPEGs at a reduced DCT scale; None: not recorded (from_descriptors)
    milvus: MilvusOptions | None = None

    def __post_init__(self) -> None:
        if self.shard_size <= 0:
            raise ValueError(f"shard_size must be > 0, got {self.shard_size}")
        if self.runtime not in ("torch", "onnx"):
            raise ValueError(f"runtime must be torch or onnx, got {self.runtime!r}")
        if self.milvus is not None and (self.factory != "auto" or self.k_factor is not None or self.dba is not None
                                        or self.runtime != "torch"):
            raise ValueError("factory, k_factor, dba and runtime onnx apply to the faiss store (a Milvus build embeds "
                             "with torch and stores the vectors as they are extracted, in its --milvus-index)")
        if self.scales is not None:
            from vitrieval.multiscale import parse_scales  # torch: only when asked for

            object.__setattr__(self, "scales", parse_scales(self.scales))
        if self.dba is not None and not isinstance(self.dba, RerankOptions):
            n, alpha = self.dba
            object.__setattr__(self, "dba", RerankOptions(("dba",), n, alpha))

    @property
    def multi_scale(self) -> bool:
        return self.scales is not None and tuple(self.scales) != (1.0,)

    def preprocessing(self, encoder: Encoder) -> dict[str, Any]:
        """What ``index.json`` records of how the descriptors were made (and what the shard keys hash)."""
        prep: dict[str, Any] = {"resize": self.resize,
                                "amp": amp_mode(next(encoder.parameters()).device, self.amp, for_index=True)}
        if self.multi_scale:
            prep["scales"] = [float(s) for s in self.scales]
        if self.fast_decode is not None:
            prep["fast_decode"] = bool(self.fast_decode)
        return prep

    def extraction(self, amp: str) -> ExtractionOptions:
        """The :class:`~vitrieval.embed.ExtractionOptions` of the build's torch extraction (under ``amp``, the mode
        it records): unreadable images skipped and listed."""
        from vitrieval.embed import ExtractionOptions

        return ExtractionOptions(batch_size=self.batch_size, num_workers=self.num_workers, amp=amp,
                                 resize=self.resize, skip_bad=True, progress=self.progress,
                                 fast_decode=bool(self.fast_decode))

    def embedding_model(self, encoder: Encoder) -> Any:
        """``encoder``, or its :class:`~vitrieval.multiscale.MultiScaleEncoder` at :attr:`scales`."""
        if not self.multi_scale:
            return encoder
        from vitrieval.multiscale import MultiScaleEncoder

        return MultiScaleEncoder(encoder, self.scales)

    @property
    def search_params(self) -> dict[str, int | None]:
        """The search parameters asked for (``None``: the index's default)."""
        return {"nprobe": self.nprobe, "ef_search": self.ef_search, "k_factor": self.k_factor}


@dataclass
class Built:
    """What a build made: the filled faiss index, its entries and ``index.json``, the model, where to save it; or,
    from a backend's assembler (``build_index(assembler=)``), no faiss index and the descriptors it is to store."""

    faiss_index: faiss.Index | None
    entries: list[IndexEntry]
    info: dict[str, Any]
    encoder: Encoder
    directory: Path | None
    device: str
    pending: list[Chunk] = field(default_factory=list)
    writer: JournalWriter | None = None
    """The write lock of ``directory``, taken before the build embedded or wrote anything (rank 0; ``finish``
    hands it to the index it saves; the build closes it if nobody did)."""


@dataclass
class _Plan:
    """The collection cut into shards, each with the key its cached descriptors must carry."""

    table: ImageTable
    directory: Path | None
    shards: list[Sequence[Record]]
    keys: list[str]
    cached: dict[int, CachedShard] = field(default_factory=dict)  # rank 0 only
    writer: JournalWriter | None = None  # rank 0: the folder's write lock, held from before any embedding

    @classmethod
    def make(cls, table: ImageTable, directory: Path | None, shard_size: int, fingerprint: str,
             preprocessing: dict[str, Any]) -> _Plan:
        shards = split_records(table.records, shard_size)
        return cls(table, directory, shards, [shard_key(r, fingerprint, preprocessing) for r in shards])

    @property
    def shard_dir(self) -> Path | None:
        return self.directory / SHARDS_DIR if self.directory is not None else None

    @property
    def digest(self) -> str:
        """One hash of every shard key: equal on every rank when they see the same images and model."""
        return hashlib.sha256("".join(self.keys).encode()).hexdigest()

    def shards_to_embed(self, ctx: DistContext, rank0: RankZero, lock: bool = False) -> set[int]:
        """Rank 0 checks the output folder, with ``lock`` (an index build) takes its write lock (refused, before any
        embedding or write, when a service or another command writes it; the caller releases it), and reads the
        cache; every rank gets the shards still to embed."""
        failure = None
        if ctx.is_main and self.shard_dir is not None:
            try:
                check_out_dir(self.directory)
                if lock:
                    # JournalLocked: another process writes the folder; a damaged journal is replaced with the index
                    self.writer = JournalWriter(self.directory, replace_damaged=True)
                self.cached = read_cached_shards(self.shard_dir, self.keys)
            except (OSError, ValueError) as exc:
                failure = exc
        return set(rank0.share(sorted(set(range(len(self.shards))) - set(self.cached)), failure))


def build_index(checkpoint_dir: str | Path, images: ImagesArg, out_dir: str | Path | None, options: BuildOptions,
                distributed: bool | DistContext | None, finish: Callable[[Built], T],
                assembler: Callable[..., Built] | None = None) -> T | None:
    """Embed ``images`` with the model in ``checkpoint_dir`` and make the index (the module docstring's steps).

    ``finish`` turns the parts into the result (and saves it when ``out_dir`` is given); it runs on rank 0, inside
    the part whose errors reach every rank. Returns its result on rank 0, ``None`` on the other ranks once rank 0
    is done. The parts are made by ``assembler`` (same arguments), by default :func:`assemble` (a faiss index) or,
    for a Milvus build, :func:`collect` (the descriptors handed on in :attr:`Built.pending`).
    """
    from vitrieval.embed import resolve_distributed
    from vitrieval.model import load

    ctx = resolve_distributed(distributed)
    table = collection_table(images)
    checkpoint = Path(checkpoint_dir).expanduser().resolve()
    encoder = load(checkpoint, device=resolve_device(options.device))
    preprocessing = options.preprocessing(encoder)
    embedder = _onnx_embedder(encoder, checkpoint, options, ctx, preprocessing) if options.runtime == "onnx" \
        else None
    directory = Path(out_dir).expanduser() if out_dir is not None else None
    plan = _Plan.make(table, directory, options.shard_size, encoder.fingerprint(), preprocessing)

    try:
        with RankZero(ctx) as rank0:
            rank0.check_same(plan.digest,
                             f"the ranks see different images to index or models ({len(table)} images here)")
            if assembler is None and options.milvus is None:  # faiss: a factory it refuses is named before embedding
                refusal = None
                if ctx.is_main:
                    try:
                        check_factory(options.factory, encoder.descriptor_dim, len(table))
                    except ValueError as exc:
                        refusal = exc
                rank0.share(None, refusal)  # raised on every rank, reported by rank 0
            todo = plan.shards_to_embed(ctx, rank0, lock=True)
            started = time.time()
            chunks, skipped = _embed_shards(options.embedding_model(encoder), plan, todo,
                                            options.extraction(preprocessing["amp"]), ctx, embedder)
            result, failure = None, None
            if ctx.is_main:  # rank 0 alone trains, fills and writes the index; the others wait for the folder
                try:
                    result = finish(_finish_build(encoder, checkpoint, plan, chunks, skipped, started, options,
                                                  preprocessing, assembler or _assembler(options)))
                except Exception as exc:  # noqa: BLE001 - re-raised below, on every rank
                    failure = exc
            rank0.share(None, failure)
    finally:
        if plan.writer is not None:
            plan.writer.close()  # the folder's lock (a no-op once the index that saved the folder closed it)
    return result


def extract(encoder: Encoder, table: ImageTable, options: ExtractionOptions, *, desc: str,
            distributed: DistContext) -> Extraction:
    """:func:`vitrieval.embed.extract`, imported when a build embeds (that module needs torch; an index opened
    for ``runtime="onnx"`` search imports this one without it)."""
    from vitrieval.embed import extract as torch_extract

    return torch_extract(encoder, table, options, desc=desc, distributed=distributed)


def _onnx_embedder(encoder: Encoder, checkpoint: Path, options: BuildOptions, ctx: DistContext,
                   preprocessing: dict[str, Any]) -> Embedder:
    """The exported file of ``encoder`` (refused when it is another model's); the build records
    ``runtime: onnx`` (float32, so ``amp: off``) in its pre-processing, which keys its shards apart."""
    from vitrieval.runtime.onnx_embedder import OnnxEmbedder
    from vitrieval.runtime.onnx_file import check_same_model, default_onnx_path

    if ctx.enabled:
        raise ValueError("runtime onnx builds an index in one process: run it without torchrun")
    if options.multi_scale:
        raise ValueError("runtime onnx runs the exported graph at one scale: build a multi-scale index with torch")
    embedder = OnnxEmbedder(default_onnx_path(checkpoint), resize=options.resize)
    check_same_model(embedder.info, embedder.path, encoder.fingerprint(), encoder.descriptor_dim)
    preprocessing.update(amp="off", runtime="onnx")
    return embedder


def _embed_shards(encoder: Any, plan: _Plan, todo: set[int], options: ExtractionOptions, ctx: DistContext,
                  embedder: Embedder | None = None) -> tuple[list[Chunk], list[str]]:
    """Embed the shards in ``todo`` with ``options`` (all ranks; with ``embedder`` rank 0 alone, at the options'
    batch size and decode size), write them and gather every shard's chunk (rank 0)."""
    from vitrieval.data.preprocessing import Preprocessing
    from vitrieval.progress import tqdm
    from vitrieval.runtime.extraction import embed_table

    chunks: list[Chunk] = []
    skipped: list[str] = []
    n_shards = len(plan.shards)
    min_side = None if embedder is None else Preprocessing.from_data_config(
        encoder.data_config, options.resize, options.fast_decode).min_side  # the torch transform's decode size
    bar = tqdm(total=len(plan.table), desc="indexing", unit="img", disable=not (options.progress and ctx.is_main))
    for s, records in enumerate(plan.shards):
        if s in todo:
            sub = ImageTable(list(records), f"{plan.table.name}/shard{s:05d}")
            if embedder is not None:
                ex = embed_table(embedder, sub, options.batch_size, min_side=min_side, progress=options.progress,
                                 desc=f"shard {s + 1}/{n_shards}")
            else:
                ex = extract(encoder, sub, options, desc=f"shard {s + 1}/{n_shards}", distributed=ctx)
            descriptors = ex.descriptors
            kept = [records[i] for i in ex.indices.tolist()]
            bad = list(ex.bad_paths)
            if plan.shard_dir is not None and ctx.is_main:
                write_shard(plan.shard_dir, s, plan.keys[s], descriptors, kept, bad)
        elif ctx.is_main:
            descriptors, kept, bad = plan.cached[s]
            log.info("shard %05d: reusing %d descriptors from %s", s, len(kept), plan.shard_dir)
        if ctx.is_main:
            for path in bad:
                log.warning("skipped unreadable image: %s", path)
            skipped.extend(bad)
            chunks.append((descriptors, kept))
            bar.update(len(records))
    bar.close()
    return chunks, skipped


def _finish_build(encoder: Encoder, checkpoint: Path, plan: _Plan, chunks: list[Chunk], skipped: list[str],
                  started: float, options: BuildOptions, preprocessing: dict[str, Any],
                  assembler: Callable[..., Built]) -> Built:
    """Rank 0, after embedding: drop stale shards, refuse an empty collection, assemble the index."""
    if plan.shard_dir is not None:
        remove_stale_shards(plan.shard_dir, len(plan.shards))
    if skipped:
        log.warning("%d unreadable image(s) skipped (listed in %s)", len(skipped),
                    plan.directory / INFO_FILE if plan.directory else "index.info['skipped']")
    if sum(len(k) for _, k in chunks) == 0:
        raise ValueError(f"none of the {len(plan.table)} images could be read (first: {skipped[0]})")
    built = assembler(encoder, checkpoint, chunks, plan.directory, options, preprocessing, skipped, started)
    built.writer = plan.writer
    return _with_collection(built, plan.table)


def _assembler(options: BuildOptions) -> Callable[..., Built]:
    return collect if options.milvus is not None else assemble


def _with_collection(built: Built, table: ImageTable) -> Built:
    """The build's manifest with the collection's ``root`` and ``classes``, its rows with their class names."""
    info = collection_info(table)
    built.info.update(info)
    classes = info.get("classes")
    if classes:
        built.entries = [dataclasses.replace(e, class_name=classes[e.label]) if e.label is not None and
                         e.label < len(classes) else e for e in built.entries]
    return built


def from_descriptors(checkpoint_dir: str | Path, descriptors: np.ndarray, paths: Sequence[str | Path],
                     labels: Sequence[int] | None, out_dir: str | Path | None, options: BuildOptions,
                     class_names: Sequence[str | None] | None = None) -> Built:
    """The parts of an index of descriptors computed elsewhere by the model in ``checkpoint_dir``; ``class_names``:
    each row's class name, when known."""
    from vitrieval.model import load

    x = np.asarray(descriptors, dtype=np.float32)
    if x.ndim != 2 or len(x) != len(paths) or len(x) == 0:
        raise ValueError(f"descriptors of shape {x.shape} do not match {len(paths)} paths (need (n, d), n > 0)")
    if labels is not None and len(labels) != len(paths):
        raise ValueError(f"{len(labels)} labels for {len(paths)} paths")
    checkpoint = Path(checkpoint_dir).expanduser().resolve()
    encoder = load(checkpoint, device=resolve_device(options.device))
    if x.shape[1] != encoder.descriptor_dim:
        raise ModelMismatchError(f"descriptors are {x.shape[1]}-d but the model at {checkpoint} gives "
                                 f"{encoder.descriptor_dim}-d ones")
    if class_names is not None and len(class_names) != len(paths):
        raise ValueError(f"{len(class_names)} class names for {len(paths)} paths")
    records = [Record(str(Path(p).expanduser().resolve()), -1 if labels is None or labels[i] is None
                      else int(labels[i]), class_name=None if class_names is None else class_names[i])
               for i, p in enumerate(paths)]
    directory = Path(out_dir).expanduser() if out_dir is not None else None
    if directory is not None:
        check_out_dir(directory)
    preprocessing = options.preprocessing(encoder)
    built = _assembler(options)(encoder, checkpoint, [(x, records)], directory, options, preprocessing, [],
                                time.time())
    return _with_collection(built, ImageTable(records, "descriptors"))


def collection_info(table: ImageTable) -> dict[str, Any]:
    """What ``index.json`` records about the collection: ``root`` (hits are named relative to it) and the class
    names of a folder laid out in classes (``classes``, label order)."""
    info: dict[str, Any] = {}
    root = collection_root(table)
    if root is not None:
        info["root"] = root
    if table.extras.get("classes"):
        info["classes"] = list(table.extras["classes"])
    return info


def _augmented(chunks: list[Chunk], dba: RerankOptions) -> list[Chunk]:
    """The chunks' descriptors replaced by their DBA over the whole collection (one array, rows in chunk order)."""
    kept = [(d, k) for d, k in chunks if len(k)]
    augmented = database_side_augmentation(normalized(np.concatenate([d for d, _ in kept])), dba.n, dba.alpha)
    bounds = np.cumsum([0] + [len(k) for _, k in kept])
    return [(augmented[a:b], k) for (_, k), a, b in zip(kept, bounds[:-1], bounds[1:])]


def recorded_checkpoint(checkpoint: Path, directory: Path | None) -> str:
    """How ``index.json`` names the model folder: relative to the index when it lies inside it (``index --model``
    writes ``OUT/model``: the folder then moves as a whole), else its absolute path."""
    if directory is not None:
        try:
            return str(Path(checkpoint).resolve().relative_to(Path(directory).expanduser().resolve()))
        except ValueError:
            pass
    return str(checkpoint)


def _numbered_entries(chunks: list[Chunk]) -> list[IndexEntry]:
    """The rows of every chunk, ids consecutive from 0 in chunk order (what both stores number them)."""
    return [IndexEntry.from_record(i, r) for i, r in enumerate(r for _, kept in chunks for r in kept)]


def _manifest_info(encoder: Encoder, checkpoint: Path, directory: Path | None, preprocessing: dict[str, Any],
                   dim: int, count: int, skipped: list[str], started: float, **store: Any) -> dict[str, Any]:
    """The manifest of a fresh build, whichever store holds the vectors; ``store``: that store's own keys."""
    now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    return {"format": FORMAT, "version": FORMAT_VERSION, "checkpoint": recorded_checkpoint(checkpoint, directory),
            "fingerprint": encoder.fingerprint(), "descriptor_dim": dim, "metric": "inner_product",
            "data_config": encoder.data_config, "preprocessing": preprocessing, "count": count, "next_id": count,
            "created": now, "updated": now, "build_seconds": round(time.time() - started, 3),
            "skipped": list(skipped), **store}


def collect(encoder: Encoder, checkpoint: Path, chunks: list[Chunk], directory: Path | None,
            options: BuildOptions, preprocessing: dict[str, Any], skipped: list[str], started: float) -> Built:
    """The parts of a build whose store takes the descriptors itself (Milvus): the entries (ids consecutive from 0,
    as :func:`assemble` numbers them) and the manifest; the descriptors are handed on in :attr:`Built.pending`."""
    entries = _numbered_entries(chunks)
    dim = next(int(d.shape[1]) for d, k in chunks if len(k))
    info = _manifest_info(encoder, checkpoint, directory, preprocessing, dim, len(entries), skipped, started,
                          backend="milvus", factory="milvus")
    return Built(None, entries, info, encoder, directory, options.device, pending=chunks)


def assemble(encoder: Encoder, checkpoint: Path, chunks: list[Chunk], directory: Path | None,
             options: BuildOptions, preprocessing: dict[str, Any], skipped: list[str], started: float) -> Built:
    """Train (if needed) and fill the faiss index from descriptor chunks; ids are consecutive from 0."""
    if options.dba is not None:
        chunks = _augmented(chunks, options.dba)
    entries = _numbered_entries(chunks)
    dim = next(int(d.shape[1]) for d, k in chunks if len(k))
    resolved = resolve_factory(options.factory, len(entries))
    faiss_index = make_faiss_index(resolved, dim)
    if not faiss_index.is_trained:
        train_faiss_index(faiss_index, resolved, [d for d, _ in chunks])
    next_id = 0
    for descriptors, kept in chunks:
        if len(kept):
            faiss_index.add_with_ids(normalized(descriptors), np.arange(next_id, next_id + len(kept), dtype=np.int64))
            next_id += len(kept)
    params = default_search_params(faiss_index, resolved)
    params.update({k: v for k, v in options.search_params.items() if v is not None})
    info = _manifest_info(encoder, checkpoint, directory, preprocessing, dim, len(entries), skipped, started,
                          factory=resolved, requested_factory=options.factory,
                          search_params=set_search_params(faiss_index, **params))
    if options.dba is not None:
        info["dba"] = {"n": int(options.dba.n), "alpha": float(options.dba.alpha)}
    return Built(faiss_index, entries, info, encoder, directory, options.device)
