"""A searchable collection: the descriptors of images in a vector store, their rows, and the model to query it.

:class:`Index` opens (:meth:`Index.load`), builds (:meth:`Index.build`, see :mod:`vitrieval.index.build`),
searches, extends (:meth:`Index.add`), shrinks (:meth:`Index.remove`) and saves an index folder; writes are
journalled and compacted (:mod:`vitrieval.index.live`). It holds a :class:`~vitrieval.index.vector_store.VectorStore`
by composition: a faiss index in this process (:mod:`vitrieval.index.faiss_store`, the rows in SQLite) or a Milvus
collection by URI (:mod:`vitrieval.index.milvus_store`, the rows as its fields); one build path and one
:class:`~vitrieval.index.build.BuildOptions` for both. ``index.json`` is its typed manifest
(:mod:`vitrieval.index.manifest`).

For faiss the index type is a factory string (``"Flat"``, ``"IVF4096,PQ32x4fs,RFlat"``, ``"HNSW32"``...) or
``"auto"``: exact search below :data:`~vitrieval.index.faiss_utils.AUTO_EXACT_LIMIT` vectors, the benchmarked
approximate preset (:data:`~vitrieval.index.faiss_utils.APPROXIMATE_FACTORY`, see ``benchmarks/search.py``) above.

Queries are embedded by the same model (its fingerprint is checked when it is loaded) with the same
preprocessing, so a query of another model or of the wrong dimension is refused with a clear error.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from vitrieval.data.collection import ImagesArg, collection_table
from vitrieval.data.table import ImageTable
from vitrieval.distributed import DistContext
from vitrieval.index.build import BuildOptions, Built, build_index, from_descriptors
from vitrieval.index.faiss_utils import SEARCH_PARAMS, normalized
from vitrieval.index.journal import JournalGap
from vitrieval.index.live import LiveWrites
from vitrieval.index.manifest import Manifest, read_manifest
from vitrieval.index.query_embedding import ImageLike, QueryEmbedding
from vitrieval.index.query_rerank import expand_queries, query_rerank_options
from vitrieval.index.rows import IndexEntry
from vitrieval.index.store import UPLOAD_PREFIX, IndexFormatError, ModelMismatchError
from vitrieval.runtime.embedder import check_runtime

if TYPE_CHECKING:
    import faiss

    from vitrieval.index.vector_store import VectorStore
    from vitrieval.rerank import RerankOptions

log = logging.getLogger(__name__)

BACKENDS = ("faiss", "milvus")
"""The stores an index folder may name in ``index.json`` (``backend``)."""


@dataclass(frozen=True)
class Hit:
    """One search result: the indexed image, its label and class name, and its cosine similarity to the query
    (1 = identical)."""

    id: int
    path: str
    label: int | None
    score: float
    class_name: str | None = None

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


def _options(options: BuildOptions | None, settings: dict[str, Any]) -> BuildOptions:
    """``options`` (default :class:`BuildOptions`) with ``settings`` (its fields as keywords) replaced."""
    unknown = set(settings) - {f.name for f in dataclasses.fields(BuildOptions)}
    if unknown:
        raise TypeError(f"unknown build setting(s) {', '.join(sorted(unknown))} (fields of BuildOptions)")
    if "runtime" in settings:
        settings["runtime"] = check_runtime(settings["runtime"])
    return dataclasses.replace(options or BuildOptions(), **settings)


class Index(QueryEmbedding, LiveWrites):
    """Descriptors of an image collection in a vector store, with their rows and the model to query them.

    Build with :meth:`build`, open with :meth:`load`; :meth:`search` takes images (paths, bytes, PIL) or
    descriptors; :meth:`add` appends images, :meth:`remove` removes them (journalled and compacted,
    :mod:`vitrieval.index.live`). Embedding holds one lock (one model); searches share a readers-writer lock that a
    write takes alone, so an ``Index`` can be shared by the threads of a web server.

    The vectors and rows are reached only through :attr:`store` (:class:`~vitrieval.index.vector_store.VectorStore`).
    ``runtime`` says what embeds the queries (:mod:`vitrieval.index.query_embedding`, :mod:`vitrieval.runtime`):
    ``torch`` (the model) or ``onnx`` (onnxruntime on ``<model>/model.onnx`` from ``vitrieval export``,
    ``threads`` intra-op threads; searching then imports no torch).
    """

    def __init__(self, store: VectorStore, manifest: Manifest, directory: str | Path | None = None,
                 device: str = "auto", *, runtime: str = "torch", threads: int = 0) -> None:
        self.store = store
        self.manifest = manifest
        self.directory = Path(directory) if directory is not None else None
        self.device = device
        self._lock = threading.RLock()
        self._init_query_embedding(runtime, threads)
        self._init_writes()

    # -- construction ----------------------------------------------------------------------------------------
    @classmethod
    def build(cls, checkpoint_dir: str | Path, images: ImagesArg, out_dir: str | Path | None = None,
              options: BuildOptions | None = None, *, distributed: bool | DistContext | None = None,
              **settings: Any) -> Index | None:
        """Embed ``images`` with the model in ``checkpoint_dir`` and index them (saved to ``out_dir`` if given).

        ``options`` (:class:`~vitrieval.index.build.BuildOptions`; or its fields as keywords, which replace those
        of ``options``) says how, and into which store (``milvus=MilvusOptions(uri=...)``: a Milvus collection, which
        needs ``out_dir`` for the manifest; default: faiss in the folder).

        ``images``: a folder (recursively), a ``.csv`` table (``path[,label,...]``), a list of paths or an
        :class:`ImageTable`. With ``out_dir`` the descriptors are written shard by shard (``shard_size`` images)
        into ``out_dir/shards`` and a rerun reuses the shards already there. Unreadable images are logged,
        skipped and listed in ``index.json`` (``skipped``). IVF / PQ factories are trained on the descriptors;
        too few of them for the factory is an error that says how many it needs.

        Several processes (``torchrun``): ``distributed`` is read as by :func:`vitrieval.embed.extract` (``None``:
        shard when a process group is initialised; ``True``: also initialise it from torchrun's environment;
        ``False``: this process builds alone, as if there were no group; or a ``DistContext``). Every rank must
        call ``build`` with the same arguments. The ranks share the embedding (:mod:`vitrieval.index.build`); rank
        0 alone fills the store and writes every file; the other ranks wait for it
        (:data:`~vitrieval.distributed.RANK0_WAIT_TIMEOUT`) and return ``None`` after the folder is complete. An
        error of rank 0's part is raised on every rank, marked ``raised_on_rank = 0``.

        ``scales`` (e.g. ``(1, 0.707, 0.5)``): multi-scale descriptors (:mod:`vitrieval.multiscale`), recorded in
        ``index.json``; queries and added images are then embedded at the same scales. ``dba`` (``(n, alpha)``,
        faiss): database-side augmentation of the indexed vectors. ``runtime="onnx"`` (faiss) embeds with the
        model's ``model.onnx``. ``fast_decode``: large JPEGs decoded at a reduced DCT scale; recorded, and queries,
        adds and the service's uploads decode the same way.
        """
        opts = _options(options, settings)
        if opts.milvus is not None and out_dir is None:
            raise ValueError("a Milvus-backed index needs an out_dir for its manifest")
        return build_index(checkpoint_dir, images, out_dir, opts, distributed, partial(cls._from_built, opts))

    @classmethod
    def from_descriptors(cls, checkpoint_dir: str | Path, descriptors: np.ndarray, paths: Sequence[str | Path],
                         labels: Sequence[int] | None = None, out_dir: str | Path | None = None,
                         options: BuildOptions | None = None, *,
                         class_names: Sequence[str | None] | None = None, **settings: Any) -> Index:
        """Index descriptors computed elsewhere by the model in ``checkpoint_dir`` (e.g. by ``embed.extract``).

        ``descriptors[i]`` belongs to ``paths[i]`` (label ``labels[i]``, class name ``class_names[i]``, each when
        given); the model is loaded for its fingerprint and preprocessing, and its descriptor dimension must match.
        ``options`` / ``settings`` as for :meth:`build`; ``resize`` / ``amp`` / ``fast_decode`` must be what the
        descriptors were made with, so that queries are embedded the same way; ``fast_decode`` defaults to
        ``None`` here (nothing recorded: queries decode at full size).
        """
        if options is None:
            settings.setdefault("fast_decode", None)
        opts = _options(options, settings)
        if opts.milvus is not None and out_dir is None:
            raise ValueError("a Milvus-backed index needs an out_dir for its manifest")
        return cls._from_built(opts, from_descriptors(checkpoint_dir, descriptors, paths, labels, out_dir, opts,
                                                      class_names))

    @classmethod
    def _from_built(cls, options: BuildOptions, built: Built) -> Index:
        """The index of a build's parts in the store of ``options``, saved when the build has a folder."""
        from vitrieval.index.faiss_store import FaissStore
        from vitrieval.index.rows import RowsFile

        store: VectorStore
        if options.milvus is not None:
            from vitrieval.index.milvus_store import store_built

            store = store_built(options.milvus, built, {"nprobe": options.nprobe, "ef_search": options.ef_search})
        else:
            assert built.faiss_index is not None
            store = FaissStore(built.faiss_index, RowsFile.from_entries(built.entries))
        manifest = Manifest.model_validate(built.info)
        index = cls(store, manifest, built.directory, device=options.device,
                    runtime=manifest.preprocessing.get("runtime", "torch"))
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
        (read-only use of a large faiss index). ``runtime="onnx"`` embeds queries with the model's exported
        ``model.onnx`` (see the class docstring). A Milvus index reads its manifest and checks its collection: no
        row is read.
        """
        from vitrieval.index.faiss_store import FaissStore
        from vitrieval.index.store import read_folder

        directory = Path(directory).expanduser()
        manifest = read_manifest(directory)[0]
        if manifest.backend not in BACKENDS:
            raise IndexFormatError(f"{directory / 'index.json'}: unknown index backend {manifest.backend!r} (one of "
                                   f"{', '.join(BACKENDS)}); upgrade vitrieval")
        for _ in range(5):
            store: VectorStore
            if manifest.backend == "milvus":
                from vitrieval.index.milvus_store import MilvusStore

                if manifest.milvus is None:
                    raise IndexFormatError(f"{directory / 'index.json'}: key 'milvus' is missing: a Milvus index "
                                           "manifest without its uri / collection; rebuild the index")
                store = MilvusStore.open(manifest, directory)
            else:
                faiss_index, rows, manifest = read_folder(directory, mmap=mmap)
                store = FaissStore(faiss_index, rows, manifest.tombstones, manifest.search_params)
            if checkpoint is not None:
                manifest.checkpoint = str(Path(checkpoint).expanduser().resolve())
            index = cls(store, manifest, directory, device=device, runtime=runtime, threads=threads)
            try:
                index._replay()  # the journalled writes after this generation (vitrieval.index.journal)
                return index
            except JournalGap:
                store.close()
                again = read_manifest(directory)[0]
                if (again.generation, again.journal_seq) == (manifest.generation, manifest.journal_seq):
                    raise  # the folder did not move on while it was read: writes are missing
                manifest = again  # another process compacted meanwhile: read the new generation
        raise IndexFormatError(f"{directory}: its generation changed 5 times while it was read; is another process "
                               "rewriting it in a loop? try again")

    # -- properties ------------------------------------------------------------------------------------------
    def __repr__(self) -> str:
        return (f"Index({len(self)} x {self.descriptor_dim}-d, {self.manifest.backend}, factory={self.factory!r}, "
                f"model={self.fingerprint}, dir={str(self.directory) if self.directory else None!r})")

    @property
    def info(self) -> dict[str, Any]:
        """The manifest as ``index.json`` holds it (a copy: change :attr:`manifest` instead)."""
        return self.manifest.dump()

    @property
    def backend(self) -> str:
        """Where the vectors and rows live: ``faiss`` or ``milvus``."""
        return self.manifest.backend

    @property
    def factory(self) -> str:
        return self.manifest.factory

    @property
    def skipped(self) -> list[str]:
        """Unreadable files that were skipped while building or adding."""
        return list(self.manifest.skipped)

    @property
    def faiss_index(self) -> faiss.Index:
        """The underlying faiss index of a faiss store (an IndexIDMap2; ids are the row ids)."""
        index = getattr(self.store, "index", None)
        if index is None:
            raise AttributeError(f"a {self.backend} index has no faiss index")
        return index

    def _shown(self, entry: IndexEntry) -> IndexEntry:
        """``entry`` with a path inside the index folder (``@index/...``, an upload) made a real path."""
        if entry.path.startswith(UPLOAD_PREFIX) and self.directory is not None:
            return dataclasses.replace(entry, path=str(self.directory / entry.path[len(UPLOAD_PREFIX):]))
        return entry

    def entry(self, image_id: int) -> IndexEntry:
        """The indexed image with this id; ``KeyError`` if there is none."""
        try:
            key = int(image_id)
        except (ValueError, TypeError):
            raise KeyError(f"no image with id {image_id!r} in the index") from None
        with self._rw.read():
            found = self.store.rows([key]).get(key)
        if found is None:
            raise KeyError(f"no image with id {image_id!r} in the index")
        return self._shown(found)

    def entries(self) -> list[IndexEntry]:
        """Every indexed image, in id order (read from the store: one object per image, for small indexes and
        tests)."""
        with self._rw.read():
            return sorted((self._shown(e) for e in self.store.all_rows()), key=lambda e: e.id)

    # -- search parameters -----------------------------------------------------------------------------------
    def _get(self, name: str) -> int:
        params = self.store.search_params()
        if name not in params:
            raise AttributeError(f"{name} does not apply to this index ({self.factory!r}): {name} applies to "
                                 f"{SEARCH_PARAMS[name]} indexes")
        return params[name]

    def _set(self, name: str, value: int) -> None:
        try:
            now = self.store.set_search_param(name, value)
        except AttributeError:
            raise AttributeError(f"{name} does not apply to this index ({self.factory!r}): {name} applies to "
                                 f"{SEARCH_PARAMS[name]} indexes") from None
        if self.backend == "faiss":
            self.manifest.search_params = now

    @property
    def search_params(self) -> dict[str, int]:
        """The search parameters of this index and their values (saved in ``index.json``)."""
        return self.store.search_params()

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
                x = expand_queries(x, rerank_options, self._search_ids, self.store.vectors)
            found = self.store.search(x, int(min(k, max(len(self), 1))))
            for row_scores, row_ids in zip(found.scores, found.ids):
                hits = []
                for score, i in zip(row_scores.tolist(), row_ids.tolist()):
                    if i >= 0 and (e := found.rows.get(i)) is not None:
                        e = self._shown(e)
                        hits.append(Hit(e.id, e.path, e.label, float(score), e.class_name))
                results.append(hits)
        return results

    def _search_ids(self, x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        found = self.store.search(x, k, with_rows=False)
        return found.scores, found.ids

    def _same_classes(self, table: ImageTable) -> ImageTable:
        """``table`` with class-folder labels numbered by the index's ``classes`` (new names appended); unlabelled
        when the index has labels of its own without names (from a CSV table)."""
        names = table.extras.get("classes")
        if not names:
            return table
        known = list(self.manifest.classes or [])
        if self.manifest.classes is None and self._has_labels():
            return ImageTable([dataclasses.replace(r, label=-1) for r in table.records], table.name, table.extras)
        for name in names:
            if name not in known:
                known.append(name)
        self.manifest.classes = known
        label_of = {name: known.index(name) for name in names}
        return ImageTable([dataclasses.replace(r, label=label_of[names[r.label]]) for r in table.records],
                          table.name, table.extras)

    def _has_labels(self) -> bool:
        """Whether any indexed image has a label (one page of rows at most)."""
        with self._rw.read():
            for n, e in enumerate(self.store.all_rows()):
                if e.label is not None:
                    return True
                if n > 10_000:
                    return False
        return False

    @property
    def root(self) -> str | None:
        """The indexed folder (clients see paths relative to it); ``None`` for an index built before it was kept."""
        return self.manifest.root

    def add(self, images: ImagesArg, batch_size: int = 64, num_workers: int | str = "auto", progress: bool = True,
            save: bool = True, distributed: bool | DistContext | None = None) -> AddReport:
        """Embed and append images (skipping paths already indexed and unreadable files); with a folder the add is
        journalled, and ``save`` compacts it into a new generation before returning (:mod:`vitrieval.index.live`).

        ``distributed`` as in :func:`vitrieval.embed.extract`: with a process group (torchrun) every rank must
        call ``add`` on its copy of the same index with the same images; the ranks share the embedding, every
        rank's copy gets every image, and rank 0 alone saves (the others wait until it has).
        """
        if self.manifest.dba:
            raise ValueError(f"this index's vectors are database-side augmented ({self.manifest.dba}): added images "
                             "would not be, and the others' neighbourhoods would change; rebuild it with the new "
                             "images instead")
        from vitrieval.embed import ExtractionOptions, extract, resolve_distributed

        ctx = resolve_distributed(distributed)
        table = self._same_classes(collection_table(images))
        with self._rw.read():
            held = self.store.held_paths([self._stored_path(r.path) for r in table.records])
        fresh = [r for r in table.records if self._stored_path(r.path) not in held]
        already = len(table) - len(fresh)
        if already and ctx.is_main:
            log.info("%d image(s) already in the index, not added again", already)
        if not fresh:
            return AddReport(0, [], already)
        encoder = self.encoder
        prep = self.manifest.preprocessing
        with self._writer_held(ctx):
            with self._lock:
                model = self._embedding_model(encoder)  # multi-scale when the index is
                options = ExtractionOptions(batch_size=batch_size, num_workers=num_workers,
                                            amp=self._amp(encoder), resize=prep.get("resize", "shorter"),
                                            skip_bad=True, progress=progress, fast_decode=self.fast_decode)
                ex = extract(model, ImageTable(fresh, "add"), options, desc="adding", distributed=ctx)
            for path in ex.bad_paths if ctx.is_main else ():
                log.warning("skipped unreadable image: %s", path)
            kept = [IndexEntry.from_record(-1, fresh[i], self.manifest.classes) for i in ex.indices.tolist()]
            if kept:  # journalled by rank 0 alone (the folder's one writer); every rank's copy gets the images
                self.add_descriptors(ex.descriptors, [(e.path, e.label, e.class_name) for e in kept],
                                     durable=ctx.is_main)
            self.manifest.skipped = sorted(set(self.manifest.skipped) | set(ex.bad_paths))
            if save and self.directory is not None:
                if ctx.is_main:
                    self.save(self.directory)
                ctx.barrier()
        return AddReport(len(kept), list(ex.bad_paths), already)
