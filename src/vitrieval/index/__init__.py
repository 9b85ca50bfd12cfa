"""A searchable collection: an :class:`Index` holding a vector store (faiss in process, Milvus by URI), its rows and
the model to query it.

=================  ==========================================================================================
module             one idea
=================  ==========================================================================================
``index``          :class:`Index`: load / build / search / add / remove / save over a store, :class:`Hit`
``vector_store``   the :class:`~vitrieval.index.vector_store.VectorStore` interface the index holds
``faiss_store``    the faiss store: vectors in a faiss index, rows in the generation's ``rows.sqlite``
``rows``           the rows table on disk (SQLite): lookup by id and by path, :class:`IndexEntry`
``milvus_store``   the Milvus store: vectors and rows as fields of a collection; :class:`MilvusOptions`
``milvus_backend`` the Milvus side: connecting by URI, the collection's schema and checks, batched writes
``manifest``       ``index.json``: the typed, versioned :class:`Manifest`, read and written in one place
``live``           the write path: journal, apply, compact (``save``), replay at load
``journal``        the writes since the generation, one SQLite transaction each, with their high-water mark
                   (``journal.sqlite``)
``journal_write``  one journalled write (:class:`~vitrieval.index.journal_write.Write`) and the journal's errors
``journal_log``    a format-3 folder's ``journal.log``, read until its first write moves it into ``journal.sqlite``
``compaction``     background compaction for a service taking writes
``removal``        removal from faiss indexes: in place over Flat, else tombstones until a rebuild
``rwlock``         the readers-writer lock of searches and writes
``build``          the build orchestration: shard by shard, resumable, under torchrun (:class:`BuildOptions`)
``shard_cache``    the resumable descriptor shards of a build (``<index>/shards/``)
``store``          the index folder on disk: its files, generations, the format errors
``faiss_utils``    pure faiss helpers: factories, training, search parameters, ID-selector search
``query_rerank``   αQE at query time against the index (``Index.search(rerank="aqe")``)
=================  ==========================================================================================

``descriptor_cache`` caches a collection's descriptors by model fingerprint through the build's shards
(``vitrieval evaluate --distractors DIR``).

Imports run one way: ``index`` -> ``build`` / ``live`` / the stores -> ``store`` -> ``manifest`` / ``rows``. Under
``torchrun`` :meth:`Index.build` shards the embedding across the ranks and rank 0 alone writes the folder (see
:mod:`vitrieval.index.build` and ``docs/DISTRIBUTED.md``).
"""

from __future__ import annotations

from vitrieval.data.collection import ImagesArg, collection_table
from vitrieval.distributed import RANK0_WAIT_TIMEOUT
from vitrieval.index.build import BuildOptions, Built, build_index
from vitrieval.index.faiss_utils import (
    APPROXIMATE_FACTORY,
    APPROXIMATE_SEARCH_PARAMS,
    AUTO_EXACT_LIMIT,
    DEFAULT_EF_SEARCH,
    DEFAULT_K_FACTOR,
    DEFAULT_NPROBE_FRACTION,
    MAX_TRAIN_POINTS_PER_CENTROID,
    SEARCH_PARAMS,
    default_search_params,
    get_search_params,
    make_faiss_index,
    parse_training_needs,
    resolve_factory,
    set_search_params,
    train_faiss_index,
)
from vitrieval.index.index import BACKENDS, AddReport, Hit, ImageLike, Index
from vitrieval.index.manifest import Manifest, ManifestError
from vitrieval.index.milvus_backend import (
    CollectionMismatchError,
    CollectionMissingError,
    MilvusBackendError,
    MilvusUnreachableError,
)
from vitrieval.index.milvus_store import MilvusOptions
from vitrieval.index.shard_cache import DEFAULT_SHARD_SIZE, SHARDS_DIR
from vitrieval.index.store import (
    FORMAT,
    FORMAT_VERSION,
    INDEX_FILE,
    INFO_FILE,
    METADATA_FILE,
    ROWS_FILE,
    IndexEntry,
    IndexFormatError,
    ModelMismatchError,
)

__all__ = [
    "APPROXIMATE_FACTORY", "APPROXIMATE_SEARCH_PARAMS", "AUTO_EXACT_LIMIT", "AddReport", "BACKENDS",
    "BuildOptions", "Built", "CollectionMismatchError", "CollectionMissingError", "DEFAULT_EF_SEARCH",
    "DEFAULT_K_FACTOR", "DEFAULT_NPROBE_FRACTION", "DEFAULT_SHARD_SIZE", "FORMAT", "FORMAT_VERSION", "Hit",
    "INDEX_FILE", "INFO_FILE", "ImageLike", "ImagesArg", "Index", "IndexEntry", "IndexFormatError",
    "MAX_TRAIN_POINTS_PER_CENTROID", "METADATA_FILE", "Manifest", "ManifestError", "MilvusBackendError",
    "MilvusOptions", "MilvusUnreachableError", "ModelMismatchError", "RANK0_WAIT_TIMEOUT", "ROWS_FILE",
    "SEARCH_PARAMS", "SHARDS_DIR", "build_index", "collection_table", "default_search_params",
    "get_search_params", "make_faiss_index", "parse_training_needs", "resolve_factory", "set_search_params",
    "train_faiss_index",
]
