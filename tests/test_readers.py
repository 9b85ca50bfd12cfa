"""Dataset readers (tiny fixtures in each official format), ``check_dataset`` and ``vitrieval datasets``."""

from __future__ import annotations

import argparse
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vitrieval.data.check import OFFICIAL_COUNTS, DatasetCheck, check_dataset
from vitrieval.data.readers import READERS, read_dataset
from vitrieval.data.readers.revisited import load_ground_truth


def _jpeg(path: Path, seed: int = 0, size: tuple[int, int] = (24, 16)) -> Path:
    """A small noisy JPEG (noise, so that cutting the file in half really truncates the pixel data)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path, "JPEG", quality=90)
    return path


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# -- fixtures in the official layouts ----------------------------------------------------------------------------

SOP_TRAIN = [(1, 1, 1, "bicycle_final/1_0.JPG"), (2, 1, 1, "bicycle_final/1_1.JPG"),
             (3, 2, 1, "bicycle_final/2_0.JPG"), (4, 2, 1, "bicycle_final/2_1.JPG"),
             (5, 3, 2, "chair_final/3_0.JPG"), (6, 3, 2, "chair_final/3_1.JPG")]
SOP_TEST = [(7, 4, 1, "bicycle_final/4_0.JPG"), (8, 4, 1, "bicycle_final/4_1.JPG"), (9, 4, 1, "bicycle_final/4_2.JPG"),
            (10, 5, 2, "chair_final/5_0.JPG"), (11, 5, 2, "chair_final/5_1.JPG")]


@pytest.fixture
def sop_root(tmp_path: Path) -> Path:
    root = tmp_path / "Stanford_Online_Products"
    for name, rows in (("Ebay_train.txt", SOP_TRAIN), ("Ebay_test.txt", SOP_TEST)):
        _write(root / name, "image_id class_id super_class_id path\n"
               + "".join(f"{i} {c} {s} {p}\n" for i, c, s, p in rows))
        for i, _, _, p in rows:
            _jpeg(root / p, seed=i)
    return root


CUB_ROWS = [  # image_id, class, name, (x, y, w, h)
    (1, 1, "001.Black_footed_Albatross/a1.jpg", (1, 2, 10, 8)),
    (2, 1, "001.Black_footed_Albatross/a2.jpg", (0, 0, 24, 16)),
    (3, 100, "100.Brown_Pelican/p1.jpg", (3.5, 4.0, 5.0, 6.5)),
    (4, 101, "101.White_Pelican/w1.jpg", (2, 2, 4, 4)),
    (5, 101, "101.White_Pelican/w2.jpg", (2, 2, 4, 4)),
    (6, 200, "200.Common_Yellowthroat/c1.jpg", (0, 1, 2, 3)),
]


@pytest.fixture
def cub_root(tmp_path: Path) -> Path:
    root = tmp_path / "CUB_200_2011"
    _write(root / "images.txt", "".join(f"{i} {n}\n" for i, _, n, _ in CUB_ROWS))
    _write(root / "image_class_labels.txt", "".join(f"{i} {c}\n" for i, c, _, _ in CUB_ROWS))
    _write(root / "bounding_boxes.txt", "".join(f"{i} {b[0]} {b[1]} {b[2]} {b[3]}\n" for i, _, _, b in CUB_ROWS))
    _write(root / "train_test_split.txt", "".join(f"{i} {i % 2}\n" for i, *_ in CUB_ROWS))
    for i, _, n, _ in CUB_ROWS:
        _jpeg(root / "images" / n, seed=i)
    return root


INSHOP_ROWS = [
    ("img/WOMEN/Dresses/id_00000001/01_1_front.jpg", "id_00000001", "train"),
    ("img/WOMEN/Dresses/id_00000001/01_2_side.jpg", "id_00000001", "train"),
    ("img/MEN/Denim/id_00000002/02_1_front.jpg", "id_00000002", "train"),
    ("img/WOMEN/Skirts/id_00000007/07_1_front.jpg", "id_00000007", "query"),
    ("img/WOMEN/Skirts/id_00000007/07_2_side.jpg", "id_00000007", "gallery"),
    ("img/WOMEN/Skirts/id_00000007/07_3_back.jpg", "id_00000007", "gallery"),
    ("img/MEN/Tees/id_00012345/01_1_front.jpg", "id_00012345", "query"),
    ("img/MEN/Tees/id_00012345/01_2_side.jpg", "id_00012345", "query"),
    ("img/MEN/Tees/id_00012345/01_3_back.jpg", "id_00012345", "gallery"),
]


def _inshop_partition(rows: list[tuple[str, str, str]], count: int | None = None) -> str:
    body = "".join(f"{n}  {i}  {s}\n" for n, i, s in rows)
    return f"{len(rows) if count is None else count}\nimage_name item_id evaluation_status\n{body}"


@pytest.fixture
def inshop_root(tmp_path: Path) -> Path:
    root = tmp_path / "inshop"
    _write(root / "Eval" / "list_eval_partition.txt", _inshop_partition(INSHOP_ROWS))
    for k, (n, _, _) in enumerate(INSHOP_ROWS):
        _jpeg(root / n, seed=k)
    return root


REVISITED_DB = ["all_souls_000001", "all_souls_000002", "radcliffe_000003", "bodleian_000004", "ashmolean_000005"]
REVISITED_Q = ["all_souls_000001", "radcliffe_000003"]
REVISITED_GND = [
    {"bbx": [1.0, 2.0, 20.0, 14.0], "easy": [1], "hard": [0], "junk": [4]},
    {"bbx": np.array([3.5, 0.0, 10.0, 9.0]), "easy": np.array([2], dtype=np.int64), "hard": [], "junk": [3, 4]},
]


@pytest.fixture
def roxford_root(tmp_path: Path) -> Path:
    root = tmp_path / "roxford5k"
    root.mkdir()
    with (root / "gnd_roxford5k.pkl").open("wb") as fh:
        pickle.dump({"imlist": REVISITED_DB, "qimlist": REVISITED_Q, "gnd": REVISITED_GND}, fh)
    for k, n in enumerate(REVISITED_DB):
        _jpeg(root / "jpg" / f"{n}.jpg", seed=k)
    return root


# -- SOP ---------------------------------------------------------------------------------------------------------

def test_sop(sop_root: Path) -> None:
    for root in (sop_root, sop_root.parent):  # the dataset folder or its parent
        table = read_dataset("sop", root)
        assert len(table) == 11
        assert table.summary() == {"train_images": 6, "train_classes": 3, "test_images": 5, "test_classes": 2,
                                   "queries": 5, "gallery": 5}
        assert table.is_leave_one_out()
        assert table.labels.tolist() == [c for _, c, _, _ in SOP_TRAIN + SOP_TEST]
        assert table.labels.dtype == np.int64
        assert table[0].path == str(sop_root.resolve() / "bicycle_final/1_0.JPG")
        assert all(Path(r.path).is_absolute() and Path(r.path).is_file() for r in table)
        assert all(r.bbox is None for r in table)
        assert table.extras["super_class_of"] == {1: 1, 2: 1, 3: 2, 4: 1, 5: 2}


def test_sop_missing_split_file(sop_root: Path) -> None:
    (sop_root / "Ebay_test.txt").unlink()
    with pytest.raises(FileNotFoundError, match="Ebay_test.txt") as info:
        read_dataset("sop", sop_root)
    assert "expected layout" in str(info.value) and "Ebay_train.txt" in str(info.value)


def test_sop_malformed_lines(sop_root: Path) -> None:
    path = sop_root / "Ebay_train.txt"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:3] + ["4 2 bicycle_final/2_1.JPG"] + lines[4:]) + "\n")
    with pytest.raises(ValueError, match=r"Ebay_train.txt, line 4: expected 'image_id class_id"):
        read_dataset("sop", sop_root)
    path.write_text("\n".join(lines[:2] + ["3 two 1 bicycle_final/2_0.JPG"] + lines[3:]) + "\n")
    with pytest.raises(ValueError, match=r"Ebay_train.txt, line 3: class_id must be an integer, got 'two'"):
        read_dataset("sop", sop_root)


# -- CUB ---------------------------------------------------------------------------------------------------------

def test_cub(cub_root: Path) -> None:
    for root in (cub_root, cub_root.parent):
        table = read_dataset("cub", root)
        assert table.summary() == {"train_images": 3, "train_classes": 2, "test_images": 3, "test_classes": 2,
                                   "queries": 3, "gallery": 3}
        assert [r.split for r in table] == ["train", "train", "train", "test", "test", "test"]  # 100 | 101
        assert table.labels.tolist() == [1, 1, 100, 101, 101, 200]
        assert table.is_leave_one_out()
        assert all(r.bbox is None for r in table)
        assert table[0].path == str(cub_root.resolve() / "images" / CUB_ROWS[0][2])
        assert all(Path(r.path).is_file() for r in table)


def test_cub_bbox(cub_root: Path) -> None:
    table = read_dataset("cub", cub_root, use_bbox=True)
    assert table[0].bbox == (1.0, 2.0, 11.0, 10.0)     # x y w h -> x1 y1 x2 y2
    assert table[2].bbox == (3.5, 4.0, 8.5, 10.5)
    assert all(isinstance(v, float) for r in table for v in r.bbox)


def test_cub_bbox_file_needed_only_with_use_bbox(cub_root: Path) -> None:
    (cub_root / "bounding_boxes.txt").unlink()
    assert len(read_dataset("cub", cub_root)) == 6
    with pytest.raises(FileNotFoundError, match="bounding_boxes.txt"):
        read_dataset("cub", cub_root, use_bbox=True)


def test_cub_errors(cub_root: Path) -> None:
    _write(cub_root / "bounding_boxes.txt", "1 1 2 10 8\n2 0 0 24\n")
    with pytest.raises(ValueError, match=r"bounding_boxes.txt, line 2: expected 'image_id x y width height'"):
        read_dataset("cub", cub_root, use_bbox=True)
    _write(cub_root / "image_class_labels.txt", "1 1\n2 1\n3 x100\n")
    with pytest.raises(ValueError, match=r"image_class_labels.txt: class of image_id 3 must be an integer"):
        read_dataset("cub", cub_root)
    _write(cub_root / "image_class_labels.txt", "1 1\n2 1\n")
    with pytest.raises(ValueError, match=r"image_class_labels.txt: no class for image_id 3"):
        read_dataset("cub", cub_root)
    _write(cub_root / "images.txt", "1 a.jpg\nfoo b.jpg\n")
    with pytest.raises(ValueError, match=r"images.txt, line 2: image_id must be an integer"):
        read_dataset("cub", cub_root)
    (cub_root / "images.txt").unlink()
    with pytest.raises(FileNotFoundError, match="images.txt") as info:
        read_dataset("cub", cub_root)
    assert "image_class_labels.txt" in str(info.value)  # the layout is spelled out


# -- In-Shop -----------------------------------------------------------------------------------------------------

def test_inshop(inshop_root: Path) -> None:
    table = read_dataset("inshop", inshop_root)
    assert table.summary() == {"train_images": 3, "train_classes": 2, "test_images": 6, "test_classes": 2,
                               "queries": 3, "gallery": 3}
    assert table.labels.tolist() == [1, 1, 2, 7, 7, 7, 12345, 12345, 12345]
    assert not table.is_leave_one_out()
    flags = [(r.split, r.is_query, r.is_gallery) for r in table]
    assert flags[:3] == [("train", True, True)] * 3
    assert flags[3:] == [("test", True, False), ("test", False, True), ("test", False, True),
                         ("test", True, False), ("test", True, False), ("test", False, True)]
    assert table.queries().labels.tolist() == [7, 12345, 12345]
    assert table.gallery().labels.tolist() == [7, 7, 12345]
    assert table[0].path == str(inshop_root.resolve() / INSHOP_ROWS[0][0])
    assert all(Path(r.path).is_file() for r in table)


def test_inshop_partition_in_root_and_names_without_img_prefix(inshop_root: Path) -> None:
    (inshop_root / "Eval" / "list_eval_partition.txt").unlink()
    rows = [(n.removeprefix("img/"), i, s) for n, i, s in INSHOP_ROWS]
    _write(inshop_root / "list_eval_partition.txt", _inshop_partition(rows))
    table = read_dataset("inshop", inshop_root)
    assert table[0].path == str(inshop_root.resolve() / INSHOP_ROWS[0][0])
    assert all(Path(r.path).is_file() for r in table)


def test_inshop_errors(inshop_root: Path) -> None:
    part = inshop_root / "Eval" / "list_eval_partition.txt"
    bad = list(INSHOP_ROWS)
    bad[4] = (bad[4][0], bad[4][1], "validation")
    _write(part, _inshop_partition(bad))
    with pytest.raises(ValueError, match=r"list_eval_partition.txt, line 7: evaluation_status must be"):
        read_dataset("inshop", inshop_root)
    bad[4] = (bad[4][0], "item7", "gallery")
    _write(part, _inshop_partition(bad))
    with pytest.raises(ValueError, match=r"line 7: item_id must look like 'id_00000001', got 'item7'"):
        read_dataset("inshop", inshop_root)
    _write(part, _inshop_partition(INSHOP_ROWS, count=52712))
    with pytest.raises(ValueError, match="declares 52712 images but 9 are listed"):
        read_dataset("inshop", inshop_root)
    part.unlink()
    with pytest.raises(FileNotFoundError, match=r"Eval/list_eval_partition.txt") as info:
        read_dataset("inshop", inshop_root)
    assert "evaluation_status" in str(info.value)


# -- ROxford5k / RParis6k ----------------------------------------------------------------------------------------

def test_revisited(roxford_root: Path) -> None:
    for root in (roxford_root, roxford_root.parent):
        table = read_dataset("roxford5k", root)
        assert len(table) == 7
        db, queries = table.records[:5], table.records[5:]
        assert [Path(r.path).name for r in db] == [f"{n}.jpg" for n in REVISITED_DB]
        assert all(r.split == "test" and r.is_gallery and not r.is_query and r.bbox is None for r in db)
        assert [Path(r.path).name for r in queries] == [f"{n}.jpg" for n in REVISITED_Q]
        assert all(r.split == "test" and r.is_query and not r.is_gallery for r in queries)
        assert queries[0].bbox == (1.0, 2.0, 20.0, 14.0) and queries[1].bbox == (3.5, 0.0, 10.0, 9.0)
        assert table.labels.tolist() == [-1] * 7
        assert table.summary()["queries"] == 2 and table.summary()["gallery"] == 5
        gnd = table.extras["gnd"]
        assert gnd == [{"bbx": [1.0, 2.0, 20.0, 14.0], "easy": [1], "hard": [0], "junk": [4]},
                       {"bbx": [3.5, 0.0, 10.0, 9.0], "easy": [2], "hard": [], "junk": [3, 4]}]
        assert all(type(i) is int for g in gnd for k in ("easy", "hard", "junk") for i in g[k])
        # gnd indices point into the gallery (database) part, in order
        assert table.gallery().paths[gnd[0]["easy"][0]].endswith("all_souls_000002.jpg")
        assert all(Path(r.path).is_file() for r in table)


def test_rparis_and_missing_ground_truth(roxford_root: Path) -> None:
    with pytest.raises(FileNotFoundError, match="gnd_rparis6k.pkl") as info:
        read_dataset("rparis6k", roxford_root.parent)
    assert "jpg/" in str(info.value)
    paris = roxford_root.parent / "rparis6k"
    paris.mkdir()
    (roxford_root / "gnd_roxford5k.pkl").rename(paris / "gnd_rparis6k.pkl")
    assert read_dataset("rparis6k", paris).name == "rparis6k"


def test_revisited_bad_ground_truth(roxford_root: Path) -> None:
    pkl = roxford_root / "gnd_roxford5k.pkl"
    pkl.write_bytes(pickle.dumps({"imlist": REVISITED_DB, "gnd": []}))
    with pytest.raises(ValueError, match="keys imlist, qimlist, gnd"):
        read_dataset("roxford5k", roxford_root)
    gnd = [dict(REVISITED_GND[0]), dict(REVISITED_GND[0], junk=[5])]
    pkl.write_bytes(pickle.dumps({"imlist": REVISITED_DB, "qimlist": REVISITED_Q, "gnd": gnd}))
    with pytest.raises(ValueError, match=r"gnd\[1\] has database indices out of range"):
        read_dataset("roxford5k", roxford_root)
    pkl.write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="gnd_roxford5k.pkl"):
        read_dataset("roxford5k", roxford_root)


class _Evil:
    def __reduce__(self):
        import os
        return (os.system, ("echo pwned",))


def test_revisited_refuses_code_in_the_pickle(tmp_path: Path) -> None:
    path = tmp_path / "gnd_roxford5k.pkl"
    path.write_bytes(pickle.dumps({"imlist": [], "qimlist": [], "gnd": [_Evil()]}))
    with pytest.raises(ValueError, match="refusing to load"):
        load_ground_truth(path)


# -- CSV ---------------------------------------------------------------------------------------------------------

def test_csv(tmp_path: Path) -> None:
    _jpeg(tmp_path / "images" / "a.jpg")
    _write(tmp_path / "table.csv",
           "path,label,split,is_query,is_gallery,x1,y1,x2,y2\n"
           "images/a.jpg,3,train,1,1,,,,\n"
           f"{tmp_path / 'images' / 'b.jpg'},4,test,1,0,1,2,5.5,6\n"
           '"images/with,comma.jpg",4,test,false,true,,,,\n')
    for root in (tmp_path, tmp_path / "table.csv"):
        table = read_dataset("csv", root)
        assert table.labels.tolist() == [3, 4, 4]
        assert [r.split for r in table] == ["train", "test", "test"]
        assert [(r.is_query, r.is_gallery) for r in table] == [(True, True), (True, False), (False, True)]
        assert [r.bbox for r in table] == [None, (1.0, 2.0, 5.5, 6.0), None]
        assert table[0].path == str(tmp_path.resolve() / "images" / "a.jpg")
        assert table[2].path == str(tmp_path.resolve() / "images" / "with,comma.jpg")


def test_csv_minimal_and_image_root(tmp_path: Path) -> None:
    _write(tmp_path / "list.csv", "path,label\nx.jpg,1\ny.jpg,\n")
    table = read_dataset("csv", tmp_path / "list.csv", image_root=tmp_path / "pics")
    assert table.labels.tolist() == [1, -1]
    assert [r.split for r in table] == ["test", "test"] and table.is_leave_one_out()
    assert table[0].path == str(tmp_path.resolve() / "pics" / "x.jpg")


def test_csv_round_trip(sop_root: Path, tmp_path: Path) -> None:
    table = read_dataset("sop", sop_root)
    table.to_csv(tmp_path / "out" / "table.csv")
    again = read_dataset("csv", tmp_path / "out")
    assert again.records == table.records


def test_csv_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="table.csv") as info:
        read_dataset("csv", tmp_path)
    assert "path,label" in str(info.value)
    cases = {
        "path,label\na.jpg,1\nb.jpg,one\n": r"line 3: 'label' must be an integer",
        "path,label,split\na.jpg,1,val\n": r"line 2: 'split' must be one of",
        "path,label,x1,y1,x2,y2\na.jpg,1,0,0,5\n": r"line 2: a bounding box needs all of",
        "path,label,x1,y1,x2,y2\na.jpg,1,0,0,a,5\n": r"line 2: bounding box values must be numbers",
        "path,label\na.jpg,1,extra\n": r"line 2: more fields",
        "path,label,is_query\na.jpg,1,maybe\n": r"line 2: 'is_query' must be",
        "file,label\na.jpg,1\n": r"line 1: the header must contain a 'path' column",
        "path,label\n": r"no images listed",
    }
    for text, message in cases.items():
        _write(tmp_path / "t.csv", text)
        with pytest.raises(ValueError, match=message) as info:
            read_dataset("csv", tmp_path / "t.csv")
        assert "t.csv" in str(info.value)


# -- registry ----------------------------------------------------------------------------------------------------

def test_registry() -> None:
    assert {"folder", "csv", "sop", "cub", "inshop", "roxford5k", "rparis6k", "sfm120k"} <= set(READERS)
    assert set(OFFICIAL_COUNTS) == {"sop", "cub", "inshop", "roxford5k", "rparis6k", "sfm120k"}
    with pytest.raises(ValueError, match="unknown dataset 'nope'"):
        read_dataset("nope", ".")


def test_missing_data_root(tmp_path: Path) -> None:
    for name in ("sop", "cub", "inshop", "roxford5k", "csv"):
        with pytest.raises(FileNotFoundError):
            read_dataset(name, tmp_path / "does-not-exist")


def test_official_counts_are_the_published_ones() -> None:
    assert OFFICIAL_COUNTS["sop"]["train_images"] == 59_551 and OFFICIAL_COUNTS["sop"]["test_classes"] == 11_316
    assert OFFICIAL_COUNTS["cub"]["train_images"] + OFFICIAL_COUNTS["cub"]["test_images"] == 11_788
    inshop = OFFICIAL_COUNTS["inshop"]
    assert inshop["queries"] + inshop["gallery"] == inshop["test_images"]
    assert inshop["train_images"] + inshop["test_images"] == 52_712
    assert inshop["train_classes"] + inshop["test_classes"] == 7_982
    assert OFFICIAL_COUNTS["roxford5k"]["gallery"] == 4_993 and OFFICIAL_COUNTS["rparis6k"]["gallery"] == 6_322


# -- check_dataset -----------------------------------------------------------------------------------------------

@pytest.fixture
def sop_official(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    fake = {"train_images": 6, "train_classes": 3, "test_images": 5, "test_classes": 2, "queries": 5, "gallery": 5}
    monkeypatch.setitem(OFFICIAL_COUNTS, "sop", fake)
    return fake


def test_check_ok(sop_root: Path, sop_official: dict[str, int]) -> None:
    result = check_dataset("sop", sop_root, progress=False)
    assert isinstance(result, DatasetCheck)
    assert result.ok and result.images_verified
    assert result.counts == sop_official and result.official == sop_official
    assert not (result.mismatches or result.missing or result.unreadable or result.warnings)
    report = result.format()
    assert "OK" in report.splitlines()[-1] and "train_images" in report and "(official)" in report


def test_check_reports_missing_truncated_empty_and_mismatch(sop_root: Path, sop_official: dict[str, int],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    missing = sop_root / "bicycle_final/1_0.JPG"
    truncated = sop_root / "chair_final/3_1.JPG"
    empty = sop_root / "bicycle_final/4_2.JPG"
    missing.unlink()
    data = truncated.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    empty.write_bytes(b"")
    monkeypatch.setitem(OFFICIAL_COUNTS, "sop", dict(sop_official, train_images=59_551))

    result = check_dataset("sop", sop_root, progress=False, workers=2)
    assert not result.ok
    assert result.missing == [str(missing.resolve())]
    unreadable = dict(result.unreadable)
    assert set(unreadable) == {str(truncated.resolve()), str(empty.resolve())}
    assert "truncated" in unreadable[str(truncated.resolve())]
    assert "empty" in unreadable[str(empty.resolve())]
    assert result.mismatches == ["train_images: found 6, official 59,551 (-59,545)"]
    report = result.format()
    for text in ("missing files (1)", "unreadable files (2)", "count mismatches (1)", str(missing.resolve()),
                 "59,551", "FAILED"):
        assert text in report

    quick = check_dataset("sop", sop_root, verify_images=False, progress=False)
    assert not quick.images_verified
    assert quick.missing == result.missing
    assert dict(quick.unreadable) == {str(empty.resolve()): "the file is empty"}  # the truncated one goes unseen


def test_check_without_official_counts_and_warnings(tmp_path: Path) -> None:
    for k, name in enumerate(["a.jpg", "b.jpg", "c.jpg"]):
        _jpeg(tmp_path / name, seed=k)
    _write(tmp_path / "table.csv", "path,label,split\na.jpg,1,train\nb.jpg,1,test\nc.jpg,2,test\n")
    result = check_dataset("csv", tmp_path, progress=False)
    assert result.official is None and result.ok
    assert any("both train and test" in w for w in result.warnings)
    assert any("no other gallery image" in w for w in result.warnings)
    assert "no official counts" in result.format()


def test_check_passes_reader_options(cub_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(OFFICIAL_COUNTS, "cub", {"train_images": 3, "test_images": 3})
    assert check_dataset("cub", cub_root, progress=False, use_bbox=True).ok
    (cub_root / "bounding_boxes.txt").unlink()
    with pytest.raises(FileNotFoundError):
        check_dataset("cub", cub_root, progress=False, use_bbox=True)


def test_check_revisited(roxford_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(OFFICIAL_COUNTS, "roxford5k", {"train_images": 0, "test_images": 7, "queries": 2,
                                                       "gallery": 5})
    result = check_dataset("roxford5k", roxford_root, progress=False)
    assert result.ok, result.format()
    assert not result.warnings


# -- CLI ---------------------------------------------------------------------------------------------------------

def _cli(argv: list[str]) -> int:
    """``vitrieval.cli.main``, or the ``datasets`` command alone while other command modules are not there yet."""
    try:
        from vitrieval.cli import build_parser
        build_parser()
    except ImportError:
        from vitrieval.cli import datasets_cmd

        parser = argparse.ArgumentParser(prog="vitrieval")
        sub = parser.add_subparsers(dest="command")
        datasets_cmd.add_parser(sub).set_defaults(_run=datasets_cmd.run)
        args = parser.parse_args(argv)
        return int(args._run(args))
    from vitrieval.cli import main
    return main(argv)


def test_cli_check_exit_codes(sop_root: Path, sop_official: dict[str, int], capsys: pytest.CaptureFixture) -> None:
    assert _cli(["datasets", "check", "--dataset", "sop", "--data-root", str(sop_root), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "OK" in out and "test_images" in out

    (sop_root / "bicycle_final/1_1.JPG").write_bytes(b"")
    assert _cli(["datasets", "check", "--dataset", "sop", "--data-root", str(sop_root), "--no-progress"]) == 1
    out = capsys.readouterr().out
    assert "FAILED" in out and "1_1.JPG" in out

    (sop_root / "chair_final/5_1.JPG").unlink()
    (sop_root / "bicycle_final/1_1.JPG").write_bytes(b"")
    assert _cli(["datasets", "check", "--dataset", "sop", "--data-root", str(sop_root),
                 "--no-verify-images"]) == 1
    assert "5_1.JPG" in capsys.readouterr().out


def test_cli_check_unreadable_split_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert _cli(["datasets", "check", "--dataset", "sop", "--data-root", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "Ebay_train.txt" in err and "FAILED" in err
    assert _cli(["datasets", "check", "--dataset", "nope", "--data-root", str(tmp_path)]) == 1


def test_cli_list(capsys: pytest.CaptureFixture) -> None:
    assert _cli(["datasets", "list"]) == 0
    out = capsys.readouterr().out
    for name in READERS:
        assert name in out
    assert "59,551" in out and "14,218" in out and "4,993" in out
    assert "train_pairs 181,697" in out  # SfM-120k's query-positive pairs
