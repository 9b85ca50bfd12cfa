"""retrieval-SfM-120k: the ``sfm120k`` reader, the layout writer, ``check_dataset`` counts, a COIL-20 stand-in."""

from __future__ import annotations

import hashlib
import os
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vitrieval.data.check import OFFICIAL_COUNTS, check_dataset
from vitrieval.data.images import load_image
from vitrieval.data.readers import READERS, read_dataset
from vitrieval.data.readers.sfm120k import cid2filename, read_sfm120k
from vitrieval.data.sfm120k_layout import sfm120k_from_folder, write_sfm120k_layout

COIL20 = Path(__file__).resolve().parents[2] / "shared" / "data" / "coil20"
TRAIN_CLUSTERS = [10, 11, 12, 13, 14, 15]  # 4 images each
VAL_CLUSTERS = [100, 101, 102]  # 3 images each


def _colour(cluster: int, k: int) -> tuple[int, int, int]:
    """A flat colour that names (cluster, position): survives JPEG within a few levels."""
    return ((cluster * 37) % 256, 40 + 50 * k, 200 if cluster >= 100 else 30)


def _image(cluster: int, k: int) -> Image.Image:
    return Image.new("RGB", (20, 14), _colour(cluster, k))


@pytest.fixture
def sfm_pkl(tmp_path: Path) -> Path:
    """6 train clusters x 4 images, 3 val clusters x 3, written under ``tmp/train/retrieval-SfM-120k/``."""
    train = {c: [_image(c, k) for k in range(4)] for c in TRAIN_CLUSTERS}
    val = {c: [_image(c, k) for k in range(3)] for c in VAL_CLUSTERS}
    return write_sfm120k_layout(tmp_path / "train", train, val, seed=3)


def _db(pkl: Path) -> dict:
    with pkl.open("rb") as fh:
        return pickle.load(fh)


def _rewrite(pkl: Path, db: dict) -> None:
    pkl.write_bytes(pickle.dumps(db))


def _identify(path: str) -> tuple[int, int]:
    """(cluster, position) of a fixture image, from its decoded colour."""
    pixel = np.asarray(load_image(path))[7, 10].astype(int)
    for cluster in TRAIN_CLUSTERS + VAL_CLUSTERS:
        for k in range(4):
            if np.abs(pixel - np.array(_colour(cluster, k))).max() <= 6:
                return cluster, k
    raise AssertionError(f"{path}: unexpected colour {pixel}")


# -- the writer --------------------------------------------------------------------------------------------------

def test_writer_makes_cirtorchs_layout(sfm_pkl: Path) -> None:
    root = sfm_pkl.parent
    assert root.name == "retrieval-SfM-120k" and sfm_pkl.name == "retrieval-SfM-120k.pkl"
    db = _db(sfm_pkl)
    assert set(db) == {"train", "val"}
    for split, clusters, per in (("train", TRAIN_CLUSTERS, 4), ("val", VAL_CLUSTERS, 3)):
        entry = db[split]
        assert set(entry) == {"cids", "cluster", "qidxs", "pidxs"}
        assert len(entry["cids"]) == len(entry["cluster"]) == len(clusters) * per
        assert all(re.fullmatch(r"[0-9a-f]{32}", cid) for cid in entry["cids"])
        assert sorted(set(entry["cluster"])) == clusters
        # default pairs: consecutive images of each cluster, per - 1 of them per cluster
        assert len(entry["qidxs"]) == len(entry["pidxs"]) == len(clusters) * (per - 1)
        for q, p in zip(entry["qidxs"], entry["pidxs"]):
            assert q != p and entry["cluster"][q] == entry["cluster"][p]
        for cid, cluster in zip(entry["cids"], entry["cluster"]):
            path = root / "ims" / cid[-2:] / cid[-4:-2] / cid[-6:-4] / cid  # cirtorch's cid2filename
            assert path.is_file() and _identify(str(path))[0] == cluster
    assert db["train"]["cluster"] != sorted(db["train"]["cluster"])  # shuffled: clusters interleave, as in the pkl


def test_writer_copies_files_and_draws_pairs(tmp_path: Path) -> None:
    sources = []
    for k in range(5):
        sources.append(tmp_path / "src" / f"{k}.png")
        sources[-1].parent.mkdir(exist_ok=True)
        _image(1, k % 4).save(sources[-1])
    pkl = write_sfm120k_layout(tmp_path / "out", {1: sources[:3], 2: sources[3:]}, {3: sources[:2]},
                               pairs_per_cluster=2, shuffle=False)
    db = _db(pkl)
    assert db["train"]["cluster"] == [1, 1, 1, 2, 2] and db["val"]["cluster"] == [3, 3]
    ims = pkl.parent / "ims"
    for cid, src in zip(db["train"]["cids"], sources):
        assert Path(cid2filename(cid, ims)).read_bytes() == src.read_bytes()  # copied byte for byte (PNG kept)
    pairs = list(zip(db["train"]["qidxs"], db["train"]["pidxs"]))
    assert len(pairs) == 2 + 2 and len(set(pairs)) == 4  # cluster 2 has only 2 ordered pairs: (3, 4), (4, 3)
    assert {(3, 4), (4, 3)} <= set(pairs) and all(q < 3 and p < 3 for q, p in pairs[:2])
    assert write_sfm120k_layout(tmp_path / "again", {1: sources[:3], 2: sources[3:]}, {3: sources[:2]},
                                pairs_per_cluster=2, shuffle=False).read_bytes() == pkl.read_bytes()  # reproducible
    with pytest.raises(FileNotFoundError, match="nope.jpg"):
        write_sfm120k_layout(tmp_path / "bad", {1: [tmp_path / "nope.jpg"]}, {})


def test_cid2filename_is_cirtorchs() -> None:
    cid = "29fdc243aeb939388cfdf2d081dc080e"
    assert cid2filename(cid, "ims") == os.path.join("ims", "0e", "08", "dc", cid)
    assert cid2filename(cid, Path("/d/ims/")) == os.path.join("/d/ims", "0e", "08", "dc", cid)


# -- the reader --------------------------------------------------------------------------------------------------

def test_read_back_counts_order_and_labels(sfm_pkl: Path) -> None:
    table = read_sfm120k(sfm_pkl.parent)
    db = _db(sfm_pkl)
    assert len(table) == 24 + 9
    assert [r.split for r in table] == ["train"] * 24 + ["test"] * 9
    assert table.summary() == {"train_images": 24, "train_classes": 6, "test_images": 9, "test_classes": 3,
                               "queries": 9, "gallery": 9}
    ims = (sfm_pkl.parent / "ims").resolve()
    expected = [(cid2filename(cid, ims), c) for split in ("train", "val")
                for cid, c in zip(db[split]["cids"], db[split]["cluster"])]
    assert [(r.path, r.label) for r in table] == expected  # pkl order, train then val; label = cluster
    assert all(Path(r.path).is_absolute() and r.bbox is None for r in table)
    assert all(r.is_query and r.is_gallery for r in table if r.split == "test")
    for r in table:
        assert _identify(r.path)[0] == r.label
    assert table.extras["clusters_are_labels"] is True
    assert table.extras["pkl"] == str(sfm_pkl)
    assert isinstance(table.labels, np.ndarray) and table.labels.dtype == np.int64


def test_pairs_are_split_relative_and_map_to_the_right_files(sfm_pkl: Path) -> None:
    table = read_sfm120k(sfm_pkl)
    db = _db(sfm_pkl)
    pairs = table.extras["pairs"]
    assert set(pairs) == {"train", "test"}
    for split, pkl_split in (("train", "train"), ("test", "val")):
        rows = pairs[split]
        assert rows.dtype == np.int64 and rows.shape == (len(db[pkl_split]["qidxs"]), 2)
        assert rows.tolist() == [[q, p] for q, p in zip(db[pkl_split]["qidxs"], db[pkl_split]["pidxs"])]
        part = table.split(split)
        assert part.extras["pairs"][split] is rows  # split() keeps extras: indices are relative to the split
        for q, p in rows:
            assert Path(part[q].path).name == db[pkl_split]["cids"][q]
            assert Path(part[p].path).name == db[pkl_split]["cids"][p]
            (cq, kq), (cp, kp) = _identify(part[q].path), _identify(part[p].path)
            assert cq == cp == part[q].label == part[p].label and abs(kq - kp) == 1  # consecutive views


def test_root_may_be_folder_parent_or_pkl(sfm_pkl: Path) -> None:
    tables = [read_sfm120k(root) for root in (sfm_pkl.parent, sfm_pkl.parent.parent, sfm_pkl)]
    assert tables[0].paths == tables[1].paths == tables[2].paths
    assert read_dataset("sfm120k", sfm_pkl.parent.parent).paths == tables[0].paths
    assert READERS["sfm120k"] is read_sfm120k


def test_missing_files_are_named(sfm_pkl: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_sfm120k(tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError) as info:
        read_sfm120k(empty)
    for looked in (empty / "retrieval-SfM-120k.pkl", empty / "retrieval-SfM-120k" / "retrieval-SfM-120k.pkl"):
        assert str(looked) in str(info.value)
    ims = sfm_pkl.parent / "ims"
    ims.rename(sfm_pkl.parent / "images")
    with pytest.raises(FileNotFoundError, match=re.escape(str(ims.resolve()))):
        read_sfm120k(sfm_pkl.parent.parent)


def test_a_pair_across_clusters_is_refused_naming_it(sfm_pkl: Path) -> None:
    db = _db(sfm_pkl)
    train = db["train"]
    other = next(i for i, c in enumerate(train["cluster"]) if c != train["cluster"][train["qidxs"][1]])
    train["pidxs"][1] = other
    _rewrite(sfm_pkl, db)
    with pytest.raises(ValueError) as info:
        read_sfm120k(sfm_pkl)
    message = str(info.value)
    assert str(sfm_pkl) in message and "1 train pair(s) join different clusters" in message
    assert "first: pair 1" in message and train["cids"][other] in message


@pytest.mark.parametrize("corrupt, message", [
    (lambda db: db["val"]["pidxs"].__setitem__(0, 9), r"val\['pidxs'\] out of range \[0, 9\)"),
    (lambda db: db["val"]["qidxs"].__setitem__(0, -1), r"val\['qidxs'\] out of range"),
    (lambda db: db["train"]["cluster"].pop(), r"train has 24 cids but 23 cluster ids"),
    (lambda db: db["train"]["qidxs"].pop(), r"train has 17 qidxs but 18 pidxs"),
    (lambda db: db["train"].pop("cluster"), r"'train' must be a dict with keys cids, cluster, qidxs, pidxs"),
    (lambda db: db.pop("val"), r"expected a dict with keys 'train' and 'val'"),
    (lambda db: db["val"]["cids"].__setitem__(0, "abc"), r"val\['cids'\]\[0\] must be an image id"),
    (lambda db: db["val"].__setitem__("cluster", ["a"] * 9), r"val\['cluster'\] must be a flat list of integers"),
])
def test_malformed_pickles_are_named(sfm_pkl: Path, corrupt, message: str) -> None:
    db = _db(sfm_pkl)
    corrupt(db)
    _rewrite(sfm_pkl, db)
    with pytest.raises(ValueError, match=message) as info:
        read_sfm120k(sfm_pkl)
    assert str(sfm_pkl) in str(info.value)


def test_numpy_entries_load_and_code_is_refused(sfm_pkl: Path) -> None:
    db = _db(sfm_pkl)
    for entry in db.values():  # cluster ids and indices as numpy arrays / numpy ints: still plain data
        entry["cluster"] = np.asarray(entry["cluster"], dtype=np.int32)
        entry["qidxs"] = [np.int64(i) for i in entry["qidxs"]]
        entry["pidxs"] = np.asarray(entry["pidxs"])
    before = read_sfm120k(sfm_pkl)
    _rewrite(sfm_pkl, db)
    after = read_sfm120k(sfm_pkl)
    assert [(r.path, r.label) for r in after] == [(r.path, r.label) for r in before]
    assert after.extras["pairs"]["train"].tolist() == before.extras["pairs"]["train"].tolist()

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    db["train"]["bbxs"] = [Evil()]
    _rewrite(sfm_pkl, db)
    with pytest.raises(ValueError, match="refusing to load"):
        read_sfm120k(sfm_pkl)


# -- vitrieval datasets check ------------------------------------------------------------------------------------

def test_official_counts() -> None:
    official = OFFICIAL_COUNTS["sfm120k"]
    assert official["train_images"] == 91_642 and official["test_images"] == 6_403
    assert official["train_classes"] == 551 and official["test_classes"] == 162
    assert official["train_pairs"] == 181_697 and official["test_pairs"] == 1_691
    assert official["queries"] == official["gallery"] == official["test_images"]


def test_check_reports_counts_and_pairs(sfm_pkl: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fixture = {"train_images": 24, "train_classes": 6, "test_images": 9, "test_classes": 3, "queries": 9,
               "gallery": 9, "train_pairs": 18, "test_pairs": 6}
    monkeypatch.setitem(OFFICIAL_COUNTS, "sfm120k", fixture)
    result = check_dataset("sfm120k", sfm_pkl.parent, progress=False, workers=1)
    assert result.ok and result.counts == fixture and not result.warnings, result.format()
    report = result.format()
    assert re.search(r"train_pairs\s+18  \(official\)", report) and "OK" in report.splitlines()[-1]

    monkeypatch.setitem(OFFICIAL_COUNTS, "sfm120k", dict(fixture, test_pairs=1_691))
    result = check_dataset("sfm120k", sfm_pkl.parent, verify_images=False, progress=False)
    assert not result.ok and result.mismatches == ["test_pairs: found 6, official 1,691 (-1,685)"]
    assert "!= official 1,691" in result.format() and "FAILED" in result.format()


def test_check_against_the_real_counts_marks_every_mismatch(sfm_pkl: Path) -> None:
    cid = _db(sfm_pkl)["val"]["cids"][0]
    missing = Path(cid2filename(cid, sfm_pkl.parent / "ims"))
    missing.unlink()
    result = check_dataset("sfm120k", sfm_pkl, verify_images=False, progress=False)
    assert not result.ok
    assert "train_images: found 24, official 91,642 (-91,618)" in result.mismatches
    assert len(result.mismatches) == 8
    assert result.missing == [str(missing.resolve())]
    assert "!= official 181,697" in result.format()


# -- a real-pixel stand-in: COIL-20 ------------------------------------------------------------------------------

@pytest.mark.skipif(not COIL20.is_dir(), reason=f"COIL-20 not found at {COIL20}")
def test_coil20_stand_in(tmp_path: Path) -> None:
    pkl = sfm120k_from_folder(COIL20, tmp_path / "train", val_fraction=0.25, max_classes=4, max_images_per_class=6,
                              pairs_per_cluster=5, seed=1)
    table = read_dataset("sfm120k", tmp_path / "train")
    assert table.summary() == {"train_images": 18, "train_classes": 3, "test_images": 6, "test_classes": 1,
                               "queries": 6, "gallery": 6}
    assert sorted(table.split("train").class_counts()) == [0, 1, 2] and set(table.split("test").labels) == {3}
    assert table.extras["pairs"]["train"].shape == (15, 2) and table.extras["pairs"]["test"].shape == (5, 2)
    originals = {hashlib.md5(p.read_bytes()).hexdigest(): (int(p.parent.name[3:]) - 1, p)
                 for d in sorted(COIL20.iterdir())[:4] for p in sorted(d.glob("*.png"))[:6]}
    assert len(originals) == 24
    for r in table:
        label, source = originals[hashlib.md5(Path(r.path).read_bytes()).hexdigest()]
        assert r.label == label  # each file is a byte-for-byte copy of a view of its object
    for split in ("train", "test"):
        part = table.split(split)
        assert all(part[q].label == part[p].label for q, p in part.extras["pairs"][split])
    assert load_image(table[0].path).size == Image.open(source).size
    assert pkl.parent == (tmp_path / "train" / "retrieval-SfM-120k").resolve()
