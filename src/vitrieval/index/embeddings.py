"""``vitrieval embed``: a collection's descriptors as files, the extraction of an index build without the index.

:func:`embed_collection` runs :func:`vitrieval.index.build.build_index` (the same shards, keys, resume and torchrun
sharding: every shard embedded by all ranks together and written by rank 0) and, instead of a faiss index, writes
``embeddings.json`` beside the shards::

    OUT/shards/NNNNN.npy    float32 (n, D) descriptors of the shard's readable images, in order
    OUT/shards/NNNNN.csv    path,label of those rows
    OUT/shards/NNNNN.json   the shard's key (model fingerprint, pre-processing, records), rows, unreadable files
    OUT/embeddings.json     {"format": "vitrieval-embeddings", "version", "checkpoint", "fingerprint",
                             "descriptor_dim", "data_config", "preprocessing", "count", "skipped",
                             "shards": [{"descriptors", "table", "count"}]}; written last: the folder is complete

A rerun embeds only the shards not yet written; ``vitrieval index`` with the same model, images and ``-o OUT``
reuses them (the build's own cache), so a cluster job can embed and another machine index.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vitrieval.data.collection import ImagesArg
from vitrieval.distributed import DistContext
from vitrieval.index.build import BuildOptions, Built, Chunk, build_index, recorded_checkpoint
from vitrieval.index.shard_cache import SHARDS_DIR, shard_csv, shard_paths
from vitrieval.io_utils import atomic_write_json

MANIFEST_FILE = "embeddings.json"
FORMAT = "vitrieval-embeddings"
VERSION = 1


@dataclass
class Embedded:
    """What :func:`embed_collection` wrote: the manifest's content and its folder."""

    info: dict[str, Any]
    directory: Path

    @property
    def count(self) -> int:
        return int(self.info["count"])

    @property
    def skipped(self) -> list[str]:
        return list(self.info["skipped"])


def _assemble(encoder: Any, checkpoint: Path, chunks: list[Chunk], directory: Path | None, options: BuildOptions,
              preprocessing: dict[str, Any], skipped: list[str], started: float) -> Built:
    """The manifest of the shards (no faiss index): the build's ``assembler``."""
    assert directory is not None
    shards = []
    for s, (_, kept) in enumerate(chunks):
        npy, _ = shard_paths(directory / SHARDS_DIR, s)
        shards.append({"descriptors": str(npy.relative_to(directory)),
                       "table": str(shard_csv(directory / SHARDS_DIR, s).relative_to(directory)), "count": len(kept)})
    info = {"format": FORMAT, "version": VERSION, "checkpoint": recorded_checkpoint(checkpoint, directory),
            "fingerprint": encoder.fingerprint(), "descriptor_dim": int(encoder.descriptor_dim),
            "data_config": encoder.data_config, "preprocessing": preprocessing,
            "count": sum(len(k) for _, k in chunks), "skipped": list(skipped), "shards": shards,
            "seconds": round(time.time() - started, 3)}
    return Built(None, [], info, encoder, directory, options.device)


def _write(built: Built) -> Embedded:
    assert built.directory is not None
    atomic_write_json(built.directory / MANIFEST_FILE, built.info)
    return Embedded(built.info, built.directory)


def embed_collection(checkpoint_dir: str | Path, images: ImagesArg, out_dir: str | Path, options: BuildOptions,
                     distributed: bool | DistContext | None = None) -> Embedded | None:
    """Embed ``images`` with the model in ``checkpoint_dir`` into shard files under ``out_dir`` (module docstring);
    rank 0 gets what was written, the other ranks ``None``."""
    return build_index(checkpoint_dir, images, out_dir, options, distributed, _write, assembler=_assemble)
