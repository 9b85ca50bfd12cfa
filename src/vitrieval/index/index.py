"""A searchable collection: a faiss index of L2-normalised descriptors, their images and the model to query it.

:class:`Index` opens (:meth:`Index.load`), builds (:meth:`Index.build`, see :mod:`vitrieval.index.build`),
searches, extends (:meth:`Index.add`) and saves an index folder (:mod:`vitrieval.index.store`). The index type is
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
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from vitrieval.amp import amp_mode, resolve_device
from vitrieval.data.collection import ImagesArg, collection_table
from vitrieval.data.images import load_image
from vitrieval.data.table import ImageTable
from vitrieval.distributed import DistContext
from vitrieval.index.build import BuildOptions, Built, build_index, from_descriptors
from vitrieval.index.faiss_utils import SEARCH_PARAMS, get_search_params, normalized, set_search_params
from vitrieval.index.shard_cache import DEFAULT_SHARD_SIZE
from vitrieval.index.store import IndexEntry, ModelMismatchError, read_folder, write_folder
from vitrieval.runtime.embedder import Embedder, check_runtime, torch_missing

if TYPE_CHECKING:
    import faiss

    from vitrieval.model import Encoder

log = logging.getLogger(__name__)

ImageLike = str | Path | bytes | Image.Image


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


class Index:
    """Descriptors of an image collection in a faiss index, with the metadata and the model to query it.

    Build with :meth:`build`, open with :meth:`load`; :meth:`search` takes images (paths, bytes, PIL) or
    descriptors; :meth:`add` appends images. Embedding, search and add hold one lock, so an ``Index`` can be shared
    by the threads of a web server. ``runtime`` says what embeds the queries (:mod:`vitrieval.runtime`): ``torch``
    (the model) or ``onnx`` (onnxruntime on ``<model>/model.onnx`` from ``vitrieval export``, ``threads``
    intra-op threads; searching then imports no torch).
    """

    def __init__(self, faiss_index: faiss.Index, entries: Sequence[IndexEntry], info: dict[str, Any],
                 directory: str | Path | None = None, device: str = "auto", *, runtime: str = "torch",
                 threads: int = 0) -> None:
        self._index = faiss_index
        self._entries: dict[int, IndexEntry] = {e.id: e for e in entries}
        self._paths = {e.path for e in entries}
        self.info = info
        self.directory = Path(directory) if directory is not None else None
        self.device = device
        self._encoder: Encoder | None = None
        self.runtime = check_runtime(runtime)
        self.threads = threads
        self._embedder: Embedder | None = None
        self._lock = threading.RLock()
        if info.get("search_params"):
            set_search_params(faiss_index, **info["search_params"])

    # -- construction ----------------------------------------------------------------------------------------
    @classmethod
    def build(cls, checkpoint_dir: str | Path, images: ImagesArg, out_dir: str | Path | None = None,
              factory: str = "auto", batch_size: int = 64, num_workers: int | str = "auto",
              shard_size: int = DEFAULT_SHARD_SIZE, *, device: str = "auto", amp: str = "auto",
              resize: str = "shorter", nprobe: int | None = None, ef_search: int | None = None,
              k_factor: int | None = None, progress: bool = True,
              distributed: bool | DistContext | None = None, runtime: str = "torch") -> Index | None:
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

        ``runtime="onnx"`` embeds with the model's ``model.onnx`` (``vitrieval export``), in one process; the
        index then also queries with it.
        """
        options = BuildOptions(factory=factory, batch_size=batch_size, num_workers=num_workers,
                               shard_size=shard_size, device=device, amp=amp, resize=resize, nprobe=nprobe,
                               ef_search=ef_search, k_factor=k_factor, progress=progress,
                               runtime=check_runtime(runtime))
        return build_index(checkpoint_dir, images, out_dir, options, distributed, cls._from_built)

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
        options = BuildOptions(factory=factory, device=device, amp=amp, resize=resize, nprobe=nprobe,
                               ef_search=ef_search, k_factor=k_factor)
        return cls._from_built(from_descriptors(checkpoint_dir, descriptors, paths, labels, out_dir, options))

    @classmethod
    def _from_built(cls, built: Built) -> Index:
        """The index of a build's parts, saved when the build has a folder."""
        index = cls(built.faiss_index, built.entries, built.info, built.directory, device=built.device,
                    runtime=built.info["preprocessing"].get("runtime", "torch"))
        index._encoder = built.encoder
        if built.directory is not None:
            index.save(built.directory)
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
        faiss_index, entries, info = read_folder(directory, mmap=mmap)
        if checkpoint is not None:
            info["checkpoint"] = str(Path(checkpoint).expanduser().resolve())
        return cls(faiss_index, entries, info, directory, device=device, runtime=runtime, threads=threads)

    def save(self, directory: str | Path | None = None) -> Path:
        """Write the index into ``directory`` as one atomic update: a new generation of ``index.faiss`` and
        ``metadata.jsonl``, then ``index.json`` swapped to it (:func:`vitrieval.index.store.write_folder`)."""
        directory = Path(directory) if directory is not None else self.directory
        if directory is None:
            raise ValueError("Index.save: no directory given and the index was not loaded from one")
        with self._lock:
            write_folder(directory, self._index, self._entries.values(), self.info)
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

    @property
    def encoder(self) -> Encoder:
        """The model that embeds queries, loaded on first use; refuses a checkpoint whose weights changed."""
        if self._encoder is None:
            with self._lock:
                if self._encoder is None:
                    self._encoder = self._load_encoder()
        return self._encoder

    def _load_encoder(self) -> Encoder:
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

    @property
    def embedder(self) -> Embedder:
        """What embeds queries (:attr:`runtime`), made on first use; refuses a model other than the index's."""
        if self._embedder is None:
            with self._lock:
                if self._embedder is None:
                    self._embedder = self._load_embedder()
        return self._embedder

    def use_runtime(self, runtime: str, threads: int | None = None) -> None:
        """Embed queries with ``runtime`` from now on (the embedder is made again on next use when it changes)."""
        with self._lock:
            if check_runtime(runtime) != self.runtime or (threads is not None and threads != self.threads):
                self.runtime, self._embedder = runtime, None
                self.threads = self.threads if threads is None else threads

    def _load_embedder(self) -> Embedder:
        resize = self.info.get("preprocessing", {}).get("resize", "shorter")
        if self.runtime == "onnx":
            from vitrieval.runtime.onnx_embedder import OnnxEmbedder
            from vitrieval.runtime.onnx_file import check_same_model, default_onnx_path

            embedder = OnnxEmbedder(default_onnx_path(self.info["checkpoint"]), resize=resize, threads=self.threads)
            check_same_model(embedder.info, embedder.path, self.fingerprint, self.descriptor_dim)
            return embedder
        from vitrieval.runtime.torch_embedder import TorchEmbedder

        try:
            encoder = self.encoder
        except ImportError as exc:
            raise (torch_missing(exc) or exc) from None
        return TorchEmbedder(encoder, self.info["data_config"], resize, self._amp(encoder))

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
    def _amp(self, encoder: Encoder) -> str:
        """The mixed precision the index's descriptors were made with (see :func:`vitrieval.amp.amp_mode`)."""
        mode = self.info.get("preprocessing", {}).get("amp")
        return amp_mode(next(encoder.parameters()).device, mode, for_index=True)

    def embed(self, images: Sequence[ImageLike], batch_size: int = 32) -> np.ndarray:
        """Descriptors of query images (paths, file bytes or PIL images) with the index's model and preprocessing.

        An unreadable image raises :class:`vitrieval.data.images.ImageDecodeError` naming it.
        """
        pil = [im.convert("RGB") if isinstance(im, Image.Image) else load_image(im) for im in images]
        embedder = self.embedder
        with self._lock:
            return embedder.embed(pil, batch_size=batch_size)

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
            scores, ids = self._index.search(normalized(x), int(min(k, max(len(self), 1))))
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
        """Embed and append images (skipping paths already indexed and unreadable files); saves if on disk.

        ``distributed`` as in :func:`vitrieval.embed.extract`: with a process group (torchrun) every rank must
        call ``add`` on its copy of the same index with the same images; the ranks share the embedding, every
        rank's copy gets every image, and rank 0 alone saves (the others wait until it has).
        """
        from vitrieval.embed import extract, resolve_distributed

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
        with self._lock:
            ex = extract(encoder, ImageTable(fresh, "add"), batch_size=batch_size, num_workers=num_workers,
                         amp=self._amp(encoder), resize=prep.get("resize", "shorter"), skip_bad=True,
                         progress=progress, desc="adding", distributed=ctx)
            for path in ex.bad_paths if ctx.is_main else ():
                log.warning("skipped unreadable image: %s", path)
            kept = [fresh[i] for i in ex.indices.tolist()]
            next_id = int(self.info.get("next_id", len(self)))
            if kept:
                ids = np.arange(next_id, next_id + len(kept), dtype=np.int64)
                self._index.add_with_ids(normalized(ex.descriptors), ids)
                for i, r in zip(ids.tolist(), kept):
                    self._entries[i] = IndexEntry.from_record(i, r)
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
