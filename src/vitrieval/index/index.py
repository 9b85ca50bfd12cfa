"""A searchable collection: a faiss index of L2-normalised descriptors, their images and the model to query it.

:class:`Index` opens (:meth:`Index.load`), builds (:meth:`Index.build`, see :mod:`vitrieval.index.build`),
searches, extends (:meth:`Index.add`), shrinks (:meth:`Index.remove`) and saves an index folder
(:mod:`vitrieval.index.store`); writes are journalled and compacted (:mod:`vitrieval.index.live`). The index type is
a faiss factory string (``"Flat"``, ``"IVF4096,PQ32x4fs,RFlat"``, ``"HNSW32"``...) or ``"auto"``: exact search
below :data:`~vitrieval.index.faiss_utils.AUTO_EXACT_LIMIT` vectors, the benchmarked approximate preset
(:data:`~vitrieval.index.faiss_utils.APPROXIMATE_FACTORY`, see ``benchmarks/search.py``) above.

Queries are embedded by the same model (its fingerprint is checked when it is loaded) with the same
preprocessing, so a query of another model or of the wrong dimension is refused with a clear error.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from vitrieval.data.collection import ImagesArg, collection_table
from vitrieval.data.table import ImageTable
from vitrieval.distributed import DistContext
from vitrieval.index.build import BuildOptions, Built, build_index, from_descriptors
from vitrieval.index.faiss_utils import SEARCH_PARAMS, get_search_params, normalized, set_search_params
from vitrieval.index.live import LiveWrites
from vitrieval.index.query_embedding import ImageLike, QueryEmbedding
from vitrieval.index.query_rerank import expand_queries, query_rerank_options
from vitrieval.index.shard_cache import DEFAULT_SHARD_SIZE
from vitrieval.index.store import IndexEntry, IndexFormatError, ModelMismatchError, folder_backend, read_folder
from vitrieval.runtime.embedder import check_runtime

if TYPE_CHECKING:
    import faiss

    from vitrieval.rerank import RerankOptions

log = logging.getLogger(__name__)


BACKENDS: dict[str, type[Index]] = {}
"""Index implementations by ``index.json``'s ``backend`` (faiss when absent); a subclass that sets ``backend``
registers itself (:class:`vitrieval.index.milvus_index.MilvusIndex`, imported by the package)."""


@dataclass(frozen=True)
class Hit:
    """One search result: the indexed image and its cosine similarity to the query (1 = identical)."""

    id: int
    path: str
    label: int | None
    score: float

    def to_dict(self) -> dict[str, Any]:
        """The hit as a JSON-able dict."""
        return asdict(self)


@dataclass
class AddReport:
    """What :meth:`Index.add` (and a build) did: images added, unreadable files skipped, paths already indexed."""

    added: int
    skipped: list[str] = field(default_factory=list)
    already_indexed: int = 0


def _is_descriptor_array(x: Any) -> bool:
    if isinstance(x, np.ndarray):
        return x.dtype.kind in "fiu"
    return hasattr(x, "detach") and hasattr(x, "dim")  # a torch tensor


class Index(QueryEmbedding, LiveWrites):
    """Descriptors of an image collection in a faiss index, with the metadata and the model to query it.

    Build with :meth:`build`, open with :meth:`load`; :meth:`search` takes images (paths, bytes, PIL) or
    descriptors; :meth:`add` appends images, :meth:`remove` removes them (journalled and compacted,
    :mod:`vitrieval.index.live`). Embedding holds one lock (one model); searches share a readers-writer lock that a
    write takes alone, so an ``Index`` can be shared by the threads of a web server.

    The vectors are reached only through :meth:`_search_vectors`, :meth:`_add_vectors`, :meth:`_remove_vectors`,
    :meth:`_stored_vectors` and :meth:`__len__` (:class:`~vitrieval.index.live.LiveWrites`): another backend
    (:data:`BACKENDS`) overrides these, :meth:`load` and :meth:`save`.
    ``runtime`` says what embeds the queries (:mod:`vitrieval.index.query_embedding`, :mod:`vitrieval.runtime`):
    ``torch`` (the model) or ``onnx`` (onnxruntime on ``<model>/model.onnx`` from ``vitrieval export``,
    ``threads`` intra-op threads; searching then imports no torch).
    """

    backend = "faiss"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "backend" in cls.__dict__:
            BACKENDS[cls.backend] = cls

    def __init__(self, faiss_index: faiss.Index, entries: Sequence[IndexEntry], info: dict[str, Any],
                 directory: str | Path | None = None, device: str = "auto", *, runtime: str = "torch",
                 threads: int = 0) -> None:
        self._index = faiss_index
        self._entries: dict[int, IndexEntry] = {e.id: e for e in entries}
        self._paths = {e.path for e in entries}
        self.info = info
        self.directory = Path(directory) if directory is not None else None
        self.device = device
        self._lock = threading.RLock()
        self._init_query_embedding(runtime, threads)
        if info.get("search_params"):
            set_search_params(faiss_index, **info["search_params"])
        self._init_writes()

    # -- construction ----------------------------------------------------------------------------------------
    @classmethod
    def build(cls, checkpoint_dir: str | Path, images: ImagesArg, out_dir: str | Path | None = None,
              factory: str = "auto", batch_size: int = 64, num_workers: int | str = "auto",
              shard_size: int = DEFAULT_SHARD_SIZE, *, device: str = "auto", amp: str = "auto",
              resize: str = "shorter", nprobe: int | None = None, ef_search: int | None = None,
              k_factor: int | None = None, progress: bool = True,
              distributed: bool | DistContext | None = None, scales: Sequence[float] | None = None,
              dba: RerankOptions | tuple[int, float] | None = None, runtime: str = "torch",
              fast_decode: bool = True) -> Index | None:
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
        and tells the others; each missing shard is then embedded by all ranks together and written by rank 0, so
        the shards, hence the index, are bit for bit those of one process with the same ``batch_size`` and
        ``shard_size`` (an interrupted torchrun build can be resumed by one process and the other way round; see
        :mod:`vitrieval.index.build`). Rank 0 alone then trains and fills the faiss index and writes every file;
        the other ranks wait for it (:data:`~vitrieval.distributed.RANK0_WAIT_TIMEOUT`) and return ``None`` after
        the folder is complete (rank 0's index is not sent to them: open it with :meth:`load` where needed). An
        error of rank 0's part (a foreign ``out_dir``, too few descriptors for ``factory``, no readable image) is
        raised on every rank, marked ``raised_on_rank = 0`` (the command has rank 0 alone print it).

        ``scales`` (e.g. ``(1, 0.707, 0.5)``): multi-scale descriptors (:mod:`vitrieval.multiscale`), recorded in
        ``index.json`` (``preprocessing.scales``); queries and added images are then embedded at the same scales.
        ``dba`` (``(n, alpha)``): database-side augmentation of the indexed vectors
        (:func:`vitrieval.rerank.database_side_augmentation`, recorded as ``index.json`` ``dba``); the shards keep
        the plain descriptors, so a rebuild with other DBA settings embeds nothing again.
        ``runtime="onnx"`` embeds with the model's ``model.onnx`` (``vitrieval export``), in one process; the
        index then also queries with it. ``fast_decode`` (``data.fast_decode``): large JPEGs decoded at a reduced
        DCT scale that still covers the eval resize; recorded (``preprocessing.fast_decode``), and queries, adds
        and the service's uploads decode the same way (:mod:`vitrieval.index.build`).
        """
        options = BuildOptions(factory=factory, batch_size=batch_size, num_workers=num_workers,
                               shard_size=shard_size, device=device, amp=amp, resize=resize, nprobe=nprobe,
                               ef_search=ef_search, k_factor=k_factor, progress=progress, scales=scales, dba=dba,
                               runtime=check_runtime(runtime), fast_decode=bool(fast_decode))
        return build_index(checkpoint_dir, images, out_dir, options, distributed, cls._from_built)

    @classmethod
    def from_descriptors(cls, checkpoint_dir: str | Path, descriptors: np.ndarray, paths: Sequence[str | Path],
                         labels: Sequence[int] | None = None, out_dir: str | Path | None = None,
                         factory: str = "auto", *, device: str = "auto", resize: str = "shorter",
                         amp: str = "auto", nprobe: int | None = None, ef_search: int | None = None,
                         k_factor: int | None = None, fast_decode: bool | None = None) -> Index:
        """Index descriptors computed elsewhere by the model in ``checkpoint_dir`` (e.g. by ``embed.extract``).

        ``descriptors[i]`` belongs to ``paths[i]``; the model is loaded for its fingerprint and preprocessing,
        and its descriptor dimension must match. ``resize`` / ``amp`` / ``fast_decode`` must be what the
        descriptors were made with, so that queries are embedded the same way (``embed.extract`` fast-decodes by
        default: pass ``fast_decode=True`` for its descriptors); ``fast_decode=None`` records nothing and queries
        decode at full size.
        """
        options = BuildOptions(factory=factory, device=device, amp=amp, resize=resize, nprobe=nprobe,
                               ef_search=ef_search, k_factor=k_factor, fast_decode=fast_decode)
        return cls._from_built(from_descriptors(checkpoint_dir, descriptors, paths, labels, out_dir, options))

    @classmethod
    def _from_built(cls, built: Built) -> Index:
        """The index of a build's parts, saved when the build has a folder."""
        index = cls(built.faiss_index, built.entries, built.info, built.directory, device=built.device,
                    runtime=built.info["preprocessing"].get("runtime", "torch"))
        index._encoder = built.encoder
        if built.directory is not None:
            index.hold_writer(built.writer)  # the folder's lock, taken before the build embedded anything
            try:
                index.save(built.directory)
            finally:
                index.release_writer()
        return index

    @classmethod
    def load(cls, directory: str | Path, checkpoint: str | Path | None = None, device: str = "auto",
             mmap: bool = False, *, runtime: str = "torch", threads: int = 0) -> Index:
        """Open an index folder. ``checkpoint`` overrides the stored model path (a model folder that moved).

        The model itself is loaded on first use (:attr:`embedder`); ``mmap=True`` memory-maps ``index.faiss``
        (read-only use of a large index). ``runtime="onnx"`` embeds queries with the model's exported
        ``model.onnx`` (see the class docstring).
        """
        directory = Path(directory).expanduser()
        backend = folder_backend(directory, known=["faiss", *BACKENDS])
        if backend != cls.backend:
            return BACKENDS[backend].load(directory, checkpoint=checkpoint, device=device, mmap=mmap, runtime=runtime,
                                          threads=threads)
        for _ in range(5):
            faiss_index, entries, info = read_folder(directory, mmap=mmap)
            if checkpoint is not None:
                info["checkpoint"] = str(Path(checkpoint).expanduser().resolve())
            index = cls(faiss_index, entries, info, directory, device=device, runtime=runtime, threads=threads)
            if index._replay():  # the journalled writes after this generation (vitrieval.index.journal)
                return index
        raise IndexFormatError(f"{directory}: its journal does not follow its generation (journal_seq "
                               f"{index._seq}); is another process rewriting it? rebuild the index or copy it again")

    # -- properties ------------------------------------------------------------------------------------------
    def __repr__(self) -> str:
        return (f"Index({len(self)} x {self.descriptor_dim}-d, factory={self.factory!r}, "
                f"model={self.fingerprint}, dir={str(self.directory) if self.directory else None!r})")

    @property
    def factory(self) -> str:
        return str(self.info["factory"])

    @property
    def skipped(self) -> list[str]:
        """Unreadable files that were skipped while building or adding."""
        return list(self.info.get("skipped", []))

    @property
    def faiss_index(self) -> faiss.Index:
        """The underlying faiss index (an IndexIDMap2; ids are the metadata ids)."""
        return self._index

    def entry(self, image_id: int) -> IndexEntry:
        """The indexed image with this id; ``KeyError`` if there is none."""
        try:
            return self._entries[int(image_id)]
        except (KeyError, ValueError, TypeError):
            raise KeyError(f"no image with id {image_id!r} in the index") from None

    def entries(self) -> list[IndexEntry]:
        """Every indexed image, in id order of insertion."""
        return list(self._entries.values())

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

    # -- search --------------------------------------------------------------------------------------------------
    def search(self, queries: Sequence[ImageLike] | np.ndarray, k: int = 10,
               fingerprint: str | None = None, rerank: str | RerankOptions | None = None) -> list[list[Hit]]:
        """Top-``k`` indexed images for each query, best first (score = cosine similarity).

        ``queries``: images (paths, bytes, PIL) embedded with the index's model, or descriptors (``(n, d)`` or
        ``(d,)`` array). Give ``fingerprint`` (``encoder.fingerprint()``) with descriptors computed elsewhere to
        have descriptors of another model refused. ``rerank="aqe"`` (or a ``RerankOptions(("aqe",), n, alpha)``)
        expands each query with αQE over its top-n neighbours in the index before the final search
        (:mod:`vitrieval.index.query_rerank`); scores are then cosines to the expanded query.
        """
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        rerank_options = query_rerank_options(rerank)
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
        results = []
        with self._rw.read():  # the vectors and the metadata of one state: no write is half-applied
            x = normalized(x)
            if rerank_options is not None:
                x = expand_queries(x, rerank_options, self._search_vectors, self._stored_vectors)
            scores, ids = self._search_vectors(x, int(min(k, max(len(self), 1))))
            for row_scores, row_ids in zip(scores, ids):
                results.append([Hit(e.id, e.path, e.label, float(score))
                                for score, i in zip(row_scores.tolist(), row_ids.tolist())
                                if i >= 0 and (e := self._entries.get(i)) is not None])
        return results

    def _same_classes(self, table: ImageTable) -> ImageTable:
        """``table`` with class-folder labels numbered by the index's ``classes`` (new names appended); unlabelled
        when the index has labels of its own without names (from a CSV table)."""
        names = table.extras.get("classes")
        if not names:
            return table
        known = self.info.get("classes")
        if known is None:
            if any(e.label is not None for e in self._entries.values()):
                return ImageTable([dataclasses.replace(r, label=-1) for r in table.records], table.name,
                                  table.extras)
            known = self.info["classes"] = []
        for name in names:
            if name not in known:
                known.append(name)
        label_of = {name: known.index(name) for name in names}
        return ImageTable([dataclasses.replace(r, label=label_of[names[r.label]]) for r in table.records],
                          table.name, table.extras)

    @property
    def root(self) -> str | None:
        """The indexed folder (clients see paths relative to it); ``None`` for an index built before it was kept."""
        return self.info.get("root")

    def add(self, images: ImagesArg, batch_size: int = 64, num_workers: int | str = "auto", progress: bool = True,
            save: bool = True, distributed: bool | DistContext | None = None) -> AddReport:
        """Embed and append images (skipping paths already indexed and unreadable files); with a folder the add is
        journalled, and ``save`` compacts it into a new generation before returning (:mod:`vitrieval.index.live`).

        ``distributed`` as in :func:`vitrieval.embed.extract`: with a process group (torchrun) every rank must
        call ``add`` on its copy of the same index with the same images; the ranks share the embedding, every
        rank's copy gets every image, and rank 0 alone saves (the others wait until it has).
        """
        if self.info.get("dba"):
            raise ValueError(f"this index's vectors are database-side augmented ({self.info['dba']}): added images "
                             "would not be, and the others' neighbourhoods would change; rebuild it with the new "
                             "images instead")
        from vitrieval.embed import ExtractionOptions, extract, resolve_distributed

        ctx = resolve_distributed(distributed)
        table = self._same_classes(collection_table(images))
        fresh = [r for r in table.records if r.path not in self._paths]
        already = len(table) - len(fresh)
        if already and ctx.is_main:
            log.info("%d image(s) already in the index, not added again", already)
        if not fresh:
            return AddReport(0, [], already)
        encoder = self.encoder
        prep = self.info.get("preprocessing", {})
        with self._writer_held(ctx):
            with self._lock:
                model = self._embedding_model(encoder)  # multi-scale when the index is
                options = ExtractionOptions(batch_size=batch_size, num_workers=num_workers,
                                            amp=self._amp(encoder), resize=prep.get("resize", "shorter"),
                                            skip_bad=True, progress=progress, fast_decode=self.fast_decode)
                ex = extract(model, ImageTable(fresh, "add"), options, desc="adding", distributed=ctx)
            for path in ex.bad_paths if ctx.is_main else ():
                log.warning("skipped unreadable image: %s", path)
            kept = [IndexEntry.from_record(-1, fresh[i]) for i in ex.indices.tolist()]
            if kept:  # journalled by rank 0 alone (the folder's one writer); every rank's copy gets the images
                self.add_descriptors(ex.descriptors, [(e.path, e.label) for e in kept], durable=ctx.is_main)
            self.info["skipped"] = sorted(set(self.info.get("skipped", [])) | set(ex.bad_paths))
            if save and self.directory is not None:
                if ctx.is_main:
                    self.save(self.directory)
                ctx.barrier()
        return AddReport(len(kept), list(ex.bad_paths), already)

    @contextmanager
    def _writer_held(self, ctx: DistContext) -> Iterator[None]:
        """The folder's write lock held by rank 0 (the folder's one writer) for a whole :meth:`add`, so that a
        folder another process writes is refused before anything is embedded; rank 0's refusal is raised on every
        rank."""
        from vitrieval.distributed import RankZero

        held, failure = False, None
        if ctx.is_main and self.directory is not None and self.journals:
            try:
                self.hold_writer()
                held = True
            except Exception as exc:  # noqa: BLE001 - re-raised below, on every rank
                failure = exc
        with RankZero(ctx) as rank0:
            rank0.share(None, failure)
        try:
            yield
        finally:
            if held:
                self.release_writer()

