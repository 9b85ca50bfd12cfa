"""Dataset readers: each turns an on-disk format into the canonical :class:`~vitrieval.data.table.ImageTable`.

======== ===================================================================================
name     format
======== ===================================================================================
folder   ``ROOT/<class>/<image>`` (or ``ROOT/train/…`` and ``ROOT/test/…``)
csv      ``path,label[,split,is_query,is_gallery,x1,y1,x2,y2]`` (``ROOT`` = the CSV or its folder)
sop      Stanford Online Products: ``Ebay_train.txt`` / ``Ebay_test.txt``
cub      CUB-200-2011: ``images.txt``, ``image_class_labels.txt`` (option ``use_bbox``)
inshop   In-Shop Clothes Retrieval: ``Eval/list_eval_partition.txt``
roxford5k, rparis6k  revisited Oxford / Paris: ``gnd_<name>.pkl`` + ``jpg/``
sfm120k  retrieval-SfM-120k (cirtorch): ``retrieval-SfM-120k.pkl`` + ``ims/``; query–positive pairs in extras
======== ===================================================================================
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from vitrieval.data.readers.csv_table import read_csv
from vitrieval.data.readers.cub import read_cub
from vitrieval.data.readers.folder import read_folder
from vitrieval.data.readers.inshop import read_inshop
from vitrieval.data.readers.revisited import read_roxford5k, read_rparis6k
from vitrieval.data.readers.sfm120k import read_sfm120k
from vitrieval.data.readers.sop import read_sop
from vitrieval.data.table import ImageTable

READERS: dict[str, Callable[..., ImageTable]] = {
    "folder": read_folder,
    "csv": read_csv,
    "sop": read_sop,
    "cub": read_cub,
    "inshop": read_inshop,
    "roxford5k": read_roxford5k,
    "rparis6k": read_rparis6k,
    "sfm120k": read_sfm120k,
}


def read_dataset(name: str, root: str | Path, **options: Any) -> ImageTable:
    """Read dataset ``name`` from ``root`` (see ``READERS`` for the names)."""
    if name not in READERS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(sorted(READERS))}")
    return READERS[name](root, **options)
