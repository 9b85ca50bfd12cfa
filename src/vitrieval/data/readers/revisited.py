"""Revisited Oxford and Paris (Radenović et al. 2018): ``roxford5k`` and ``rparis6k``.

Ground truth ships as ``gnd_<name>.pkl``: a dict with ``imlist`` (database image names), ``qimlist`` (query image
names) and ``gnd`` (one dict a query: ``bbx`` = ``[x1, y1, x2, y2]``, ``easy``, ``hard``, ``junk`` = 0-based
database indices). Images are ``jpg/<name>.jpg``.

The table lists the database images first (split ``test``, gallery only, label ``-1``), then the queries (query
only, ``bbox`` = their box: queries are cropped to it). ``table.extras["gnd"]`` carries the per-query ground truth
(indices into the database part, i.e. into ``table.gallery()``) for the revisited mAP.
"""

from __future__ import annotations

from pathlib import Path

from vitrieval.data.readers._common import RestrictedUnpickler, load_restricted_pickle, require_file
from vitrieval.data.table import ImageTable, Record

DATASETS = ("roxford5k", "rparis6k")


def _layout(name: str) -> str:
    return (f"  {name}/                       (the data root, or its parent)\n"
            f"    gnd_{name}.pkl              dict with imlist, qimlist, gnd\n"
            f"    jpg/<image name>.jpg")


_GroundTruthUnpickler = RestrictedUnpickler  # the name this module used before it moved to _common


def load_ground_truth(path: str | Path) -> dict:
    """Load a ``gnd_*.pkl`` file (restricted unpickler) and normalise it to plain lists of ints / floats.

    Raises :class:`ValueError` naming the file when keys are missing or indices are out of range.
    """
    path = Path(path)
    raw = load_restricted_pickle(path)
    if not isinstance(raw, dict) or not {"imlist", "qimlist", "gnd"} <= set(raw):
        keys = sorted(raw) if isinstance(raw, dict) else type(raw).__name__
        raise ValueError(f"{path}: expected a dict with keys imlist, qimlist, gnd; got {keys}")
    imlist = [str(n) for n in raw["imlist"]]
    qimlist = [str(n) for n in raw["qimlist"]]
    if len(raw["gnd"]) != len(qimlist):
        raise ValueError(f"{path}: {len(raw['gnd'])} gnd entries for {len(qimlist)} queries")
    gnd: list[dict] = []
    for q, entry in enumerate(raw["gnd"]):
        try:
            item = {"bbx": [float(v) for v in entry["bbx"]]}
            for key in ("easy", "hard", "junk"):
                item[key] = [int(i) for i in entry[key]]
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path}: gnd[{q}] needs bbx (4 numbers), easy, hard, junk (index lists): {exc!r}") \
                from None
        if len(item["bbx"]) != 4:
            raise ValueError(f"{path}: gnd[{q}]['bbx'] must have 4 numbers, got {item['bbx']}")
        bad = [i for key in ("easy", "hard", "junk") for i in item[key] if not 0 <= i < len(imlist)]
        if bad:
            raise ValueError(f"{path}: gnd[{q}] has database indices out of range [0, {len(imlist)}): {bad[:5]}")
        gnd.append(item)
    return {"imlist": imlist, "qimlist": qimlist, "gnd": gnd}


def read_revisited(root: str | Path, name: str = "roxford5k") -> ImageTable:
    """Read ``roxford5k`` or ``rparis6k`` from ``root`` (the dataset folder, or its parent)."""
    if name not in DATASETS:
        raise ValueError(f"revisited dataset must be one of {DATASETS}, got {name!r}")
    base = Path(root).expanduser()
    pkl = f"gnd_{name}.pkl"
    if not (base / pkl).is_file() and (base / name / pkl).is_file():
        base = base / name
    base = base.resolve()
    gt = load_ground_truth(require_file(base / pkl, name, _layout(name)))
    images = base / "jpg"
    records = [Record(str(images / f"{n}.jpg"), -1, "test", False, True) for n in gt["imlist"]]
    for n, entry in zip(gt["qimlist"], gt["gnd"]):
        records.append(Record(str(images / f"{n}.jpg"), -1, "test", True, False, tuple(entry["bbx"])))
    return ImageTable(records, name, {"gnd": gt["gnd"], "imlist": gt["imlist"], "qimlist": gt["qimlist"]})


def read_roxford5k(root: str | Path) -> ImageTable:
    """Revisited Oxford 5k: 70 queries, 4,993 database images."""
    return read_revisited(root, "roxford5k")


def read_rparis6k(root: str | Path) -> ImageTable:
    """Revisited Paris 6k: 70 queries, 6,322 database images."""
    return read_revisited(root, "rparis6k")
