"""vitrieval.evaluation.protocol: the paper's protocols on tiny fixtures in the official formats.

Every number is checked against the metric functions called directly on ``extract()`` descriptors of the same
images, with a tiny random-init DeiT (32 px, patch 8, 2 blocks). The command's tests: ``test_cli_evaluate.py``.
"""

from __future__ import annotations

import dataclasses
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import vitrieval
from evaluation_fixtures import CATEGORY_KEYS, COLOURS, EVAL, OPTS, SHAPES, draw, tiny_encoder, write_shapes_folder
from evaluation_fixtures import direct as _direct
from vitrieval.data.images import ImageDecodeError
from vitrieval.data.readers import read_dataset
from vitrieval.data.table import ImageTable
from vitrieval.evaluation.pca_fit import PCAOptions
from vitrieval.evaluation.protocol import ExtractionOptions, evaluate_model, recall_on_table
from vitrieval.metrics import map_at_r, recall_at_k, revisited_map_from_descriptors
from vitrieval.model import Encoder, at_image_size
from vitrieval.pca import PCAReduction

LANDMARK_KEYS = {"dataset", "model", "descriptor_dim", "image_size", "num_queries", "num_gallery", "protocol",
                 "map", "mp_at_k", "pca"}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The machine is shared: keep torch on one thread for this module."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def save_jpeg(img: Image.Image, path: Path) -> Path:
    """JPEG without chroma subsampling: a block-aligned crop of a saved image decodes to the same pixels."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, "JPEG", quality=95, subsampling=0)
    return path


# -- fixtures in the official layouts ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def folder_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``ROOT/<class>/<image>``: 6 classes x 5 images; the first 3 classes train, the last 3 test."""
    return write_shapes_folder(tmp_path_factory.mktemp("folder") / "shapes")


INSHOP_IDS = [(1, "train"), (2, "train"), (3, "train"), (7, "test"), (8, "test"), (9, "test"), (12, "test")]


@pytest.fixture(scope="module")
def inshop_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """In-Shop: Eval/list_eval_partition.txt; test items have 2 queries and 3 gallery images each."""
    root = tmp_path_factory.mktemp("inshop") / "inshop"
    rows = []
    for c, (item, part) in enumerate(INSHOP_IDS):
        for i, shape in enumerate(SHAPES):
            name = f"img/WOMEN/Dresses/id_{item:08d}/{i:02d}_{shape}.jpg"
            save_jpeg(draw(COLOURS[c], shape, dark=bool(i % 2)), root / name)
            status = "train" if part == "train" else ("query" if i < 2 else "gallery")
            rows.append(f"{name} id_{item:08d} {status}")
    (root / "Eval").mkdir(parents=True)
    (root / "Eval" / "list_eval_partition.txt").write_text(
        f"{len(rows)}\nimage_name item_id evaluation_status\n" + "\n".join(rows) + "\n")
    return root


# Revisited: database images are 48 x 48 drawings; query q shows database image TARGETS[q] pasted at a
# block-aligned spot of a larger, different scene, and its bbx is exactly that spot.
REV_DB = [f"db_{i:03d}" for i in range(10)]
REV_Q = ["query_a", "query_b", "query_c"]
TARGETS = [0, 3, 5]
SPOTS = [(48, 16), (0, 32), (96, 48)]
REV_GND = [
    {"bbx": [48.0, 16.0, 96.0, 64.0], "easy": [0], "hard": [4], "junk": [7]},
    {"bbx": np.array([0.0, 32.0, 48.0, 80.0]), "easy": np.array([3], dtype=np.int64), "hard": [8], "junk": [0]},
    {"bbx": [96.0, 48.0, 144.0, 96.0], "easy": [], "hard": [5, 6], "junk": [1, 2]},
]


def _db_image(i: int) -> Image.Image:
    return draw(COLOURS[i % len(COLOURS)], SHAPES[i % len(SHAPES)], dark=bool(i % 3 == 0), size=(48, 48))


@pytest.fixture(scope="module")
def roxford_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("revisited") / "roxford5k"
    root.mkdir()
    with (root / "gnd_roxford5k.pkl").open("wb") as fh:
        pickle.dump({"imlist": REV_DB, "qimlist": REV_Q, "gnd": REV_GND}, fh)
    for i, name in enumerate(REV_DB):
        save_jpeg(_db_image(i), root / "jpg" / f"{name}.jpg")
    rng = np.random.default_rng(0)
    for name, target, (x, y) in zip(REV_Q, TARGETS, SPOTS):
        scene = Image.fromarray(rng.integers(0, 256, (112, 160, 3), dtype=np.uint8))
        scene.paste(_db_image(target), (x, y))
        save_jpeg(scene, root / "jpg" / f"{name}.jpg")
    return root


@pytest.fixture(scope="module")
def encoder() -> Encoder:
    return tiny_encoder()


# -- category-level ------------------------------------------------------------------------------------------------

def test_folder_leave_one_out_matches_the_metrics(encoder: Encoder, folder_root: Path) -> None:
    result = evaluate_model(encoder, "folder", folder_root, **EVAL)
    assert set(result) == CATEGORY_KEYS
    test = read_dataset("folder", folder_root).split("test")
    assert len(test) == 15 and test.is_leave_one_out()
    z = _direct(encoder, test)
    expected = recall_at_k(z, test.labels, [1, 2, 4, 8])
    assert result["recall_at_k"] == {str(k): v for k, v in expected.items()}
    assert list(result["recall_at_k"]) == ["1", "2", "4", "8"]
    assert result["map_at_r"] == pytest.approx(map_at_r(z, test.labels), abs=1e-12)
    assert result["protocol"] == "leave-one-out"
    assert (result["num_queries"], result["num_gallery"]) == (15, 15)
    assert (result["dataset"], result["model"], result["descriptor_dim"], result["image_size"]) == \
        ("folder", "deit_tiny_patch16_224", 192, 32)
    assert result["pca"] is None
    json.loads(json.dumps(result, allow_nan=False))
    # the trainer's helper agrees
    table = read_dataset("folder", folder_root)
    assert recall_on_table(encoder, table, [1, 2, 4, 8], OPTS) == expected


def test_explicit_ks_and_too_large_k(encoder: Encoder, folder_root: Path) -> None:
    result = evaluate_model(encoder, "folder", folder_root, ks=[3, 1], **EVAL)
    assert list(result["recall_at_k"]) == ["1", "3"]
    with pytest.raises(ValueError, match="15"):
        evaluate_model(encoder, "folder", folder_root, ks=[1, 15], **EVAL)


def test_inshop_query_gallery_matches_the_metrics(encoder: Encoder, inshop_root: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    result = evaluate_model(encoder, "inshop", inshop_root, **EVAL)
    assert set(result) == CATEGORY_KEYS
    test = read_dataset("inshop", inshop_root).split("test")
    z = _direct(encoder, test)
    q = np.array([r.is_query for r in test])
    g = np.array([r.is_gallery for r in test])
    assert (q.sum(), g.sum()) == (8, 12)
    # the paper's K for In-Shop are 1, 10, 20, 30; a query here can only see 12 gallery images
    expected = recall_at_k(z[q], test.labels[q], [1, 10], gallery=z[g], gallery_labels=test.labels[g])
    assert result["recall_at_k"] == {str(k): v for k, v in expected.items()}
    assert "Recall@20,30 dropped" in caplog.text
    assert result["map_at_r"] == pytest.approx(
        map_at_r(z[q], test.labels[q], gallery=z[g], gallery_labels=test.labels[g]), abs=1e-12)
    assert (result["protocol"], result["num_queries"], result["num_gallery"]) == ("query-gallery", 8, 12)


# -- PCA ---------------------------------------------------------------------------------------------------------

def _tree_bytes(folder: Path) -> dict[str, bytes]:
    return {str(f.relative_to(folder)): f.read_bytes() for f in sorted(folder.rglob("*")) if f.is_file()}


def test_pca_is_fitted_on_the_train_split_and_saved_as_a_new_model(folder_root: Path, tmp_path: Path) -> None:
    """``PCAOptions(save_to=DIR)``: the evaluated model folder stays byte-identical; DIR is a new model folder (the
    model plus the PCA, its own fingerprint) whose descriptors are the evaluation's."""
    model_dir = tiny_encoder(seed=1).save(tmp_path / "run" / "model", extra={"run": "r1", "trained_iterations": 7})
    before = _tree_bytes(tmp_path / "run")
    enc = vitrieval.load(tmp_path / "run")
    fingerprint = enc.fingerprint()
    saved = tmp_path / "run-pca8"
    result = evaluate_model(enc, "folder", folder_root, pca=PCAOptions(dim=8, save_to=saved), **EVAL)
    assert result["pca"] == {"dim": 8, "whiten": False, "fitted_on": "folder/train"}
    assert result["descriptor_dim"] == 8 and result["saved_model"] == str(saved)
    assert _tree_bytes(tmp_path / "run") == before  # RUN/model untouched
    assert enc.pca is None and enc.fingerprint() == fingerprint

    table = read_dataset("folder", folder_root)
    fresh = vitrieval.load(saved)
    assert fresh.descriptor_dim == 8 and fresh.feature_dim == 192 and fresh.fingerprint() != fingerprint
    # fitted on the training split's pooled vectors (before PCA and L2: pool -> PCA -> L2), not on the test split's
    train_raw = _direct(fresh, table.split("train"), output="pooled")
    test_raw = _direct(fresh, table.split("test"), output="pooled")
    ref = PCAReduction.fit(train_raw, 8)
    assert torch.allclose(fresh.pca.matrix, ref.matrix, atol=1e-6)
    assert torch.allclose(fresh.pca.bias, ref.bias, atol=1e-6)
    assert not torch.allclose(fresh.pca.matrix.abs(), PCAReduction.fit(test_raw, 8).matrix.abs(), atol=1e-3)
    # the saved model computes the evaluation's descriptors: PCA, then L2 again
    z = _direct(fresh, table.split("test"))
    assert z.shape == (15, 8)
    assert np.allclose(z, ref.apply_numpy(test_raw), atol=1e-5)
    assert np.allclose(np.linalg.norm(z, axis=1), 1.0, atol=1e-5)
    assert result["recall_at_k"] == {str(k): v for k, v in recall_at_k(z, table.split("test").labels,
                                                                       [1, 2, 4, 8]).items()}
    meta = json.loads((saved / "config.json").read_text())
    assert meta["descriptor_dim"] == 8 and meta["pca"] == result["pca"]
    assert (meta["run"], meta["trained_iterations"], meta["derived_from"]) == ("r1", 7, fingerprint)
    assert meta["fingerprint"] == fresh.fingerprint()
    assert json.loads((model_dir / "config.json").read_text())["descriptor_dim"] == 192

    # evaluating the saved model again (no --pca) goes through its PCA and reports where it came from
    again = evaluate_model(fresh, "folder", folder_root, **EVAL)
    assert again["pca"] == result["pca"] and again["recall_at_k"] == result["recall_at_k"]
    with pytest.raises(ValueError, match="already there"):  # never over another model
        evaluate_model(enc, "folder", folder_root, pca=PCAOptions(dim=8, save_to=saved), **EVAL)


def test_whitened_pca_and_pca_errors(encoder: Encoder, folder_root: Path, roxford_root: Path) -> None:
    result = evaluate_model(encoder, "folder", folder_root, pca=PCAOptions(dim=4, whiten=True), **EVAL)
    assert result["pca"] == {"dim": 4, "whiten": True, "fitted_on": "folder/train"}
    assert encoder.pca is None  # nothing stored or attached without a model folder
    with pytest.raises(ValueError, match="--pca"):
        evaluate_model(encoder, "folder", folder_root, pca=PCAOptions(whiten=True), **EVAL)
    with pytest.raises(ValueError, match="PCA dimension must be in 1..192"):
        evaluate_model(encoder, "folder", folder_root, pca=PCAOptions(dim=500), **EVAL)
    with pytest.raises(ValueError, match="both"):
        evaluate_model(encoder, "roxford5k", roxford_root, pca=PCAOptions(dim=4, fit_dataset="folder"), **EVAL)


def test_evaluating_at_another_size_does_not_store_the_pca(folder_root: Path, tmp_path: Path) -> None:
    model_dir = tiny_encoder().save(tmp_path / "m")
    enc = vitrieval.load(model_dir)
    bigger = at_image_size(enc, 48)
    assert bigger is not enc and bigger.data_config["image_size"] == 48 and enc.data_config["image_size"] == 32
    assert bigger(torch.randn(2, 3, 48, 48)).shape == (2, 192)
    result = evaluate_model(enc, "folder", folder_root, pca=PCAOptions(dim=8, save_to=tmp_path / "s"), image_size=48,
                            **EVAL)
    assert result["image_size"] == 48 and result["descriptor_dim"] == 8 and "saved_model" not in result
    assert not (tmp_path / "s").exists() and enc.pca is None
    assert at_image_size(enc, 32) is enc and at_image_size(enc, None) is enc
    # a failed evaluation leaves the model folder untouched
    with pytest.raises(ValueError, match="99"):
        evaluate_model(enc, "folder", folder_root, pca=PCAOptions(dim=8, save_to=tmp_path / "s"), ks=[1, 99],
                       **EVAL)
    assert not (tmp_path / "s").exists() and vitrieval.load(model_dir).descriptor_dim == 192


# -- revisited Oxford / Paris ----------------------------------------------------------------------------------------

def test_revisited_protocol(encoder: Encoder, roxford_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import vitrieval.evaluation.protocol as ev

    resizes: list[str] = []
    real_extract = ev.extract

    def spy(*args, **kwargs):
        resizes.append(args[2].resize)
        return real_extract(*args, **kwargs)

    monkeypatch.setattr(ev, "extract", spy)
    result = evaluate_model(encoder, "roxford5k", roxford_root, **EVAL)
    assert resizes == ["square"]
    assert set(result) == LANDMARK_KEYS
    assert (result["protocol"], result["num_queries"], result["num_gallery"]) == ("revisited", 3, 10)

    table = read_dataset("roxford5k", roxford_root)
    db = _direct(encoder, table.gallery(), resize="square")
    qs = _direct(encoder, table.queries(), resize="square")
    ref = revisited_map_from_descriptors(db, qs, table.extras["gnd"])
    for p in ("easy", "medium", "hard"):
        assert result["map"][p] == pytest.approx(ref[p]["map"], abs=1e-12)
        assert result["mp_at_k"][p] == {str(k): pytest.approx(v, abs=1e-12) for k, v in ref[p]["mp_at_k"].items()}
    assert list(result["mp_at_k"]["medium"]) == ["1", "5", "10"]

    # queries are cropped to their bbx: the crop is exactly the target database image, which comes first
    sims = qs @ db.T
    assert np.argmax(sims, axis=1).tolist() == TARGETS
    assert np.allclose(sims[np.arange(3), TARGETS], 1.0, atol=1e-5)
    uncropped = _direct(encoder, ImageTable([dataclasses.replace(r, bbox=None) for r in table.queries()]),
                        resize="square")
    assert np.all((uncropped @ db.T)[np.arange(3), TARGETS] < sims[np.arange(3), TARGETS] - 1e-4)
    # easy positives are the targets: easy mAP and mP@1 are perfect (query_c has no easy positive: left out)
    assert result["map"]["easy"] == 1.0 and result["mp_at_k"]["easy"]["1"] == 1.0
    assert result["pca"] is None and "pca_fitted_on" not in result


def test_revisited_pca_fit_sets(encoder: Encoder, roxford_root: Path, folder_root: Path) -> None:
    on_db = evaluate_model(encoder, "roxford5k", roxford_root, pca=PCAOptions(dim=4), **EVAL)
    assert on_db["pca_fitted_on"] == "roxford5k/database" and on_db["pca"]["fitted_on"] == "roxford5k/database"
    assert on_db["descriptor_dim"] == 4
    table = read_dataset("roxford5k", roxford_root)
    db = _direct(encoder, table.gallery(), resize="square", output="normalized")
    qs = _direct(encoder, table.queries(), resize="square", output="normalized")
    pca = PCAReduction.fit(db, 4)
    ref = revisited_map_from_descriptors(pca.apply_numpy(db), pca.apply_numpy(qs), table.extras["gnd"])
    assert on_db["map"] == {p: pytest.approx(ref[p]["map"], abs=1e-9) for p in ("easy", "medium", "hard")}

    other = evaluate_model(encoder, "roxford5k", roxford_root,
                           pca=PCAOptions(dim=4, fit_dataset="folder", fit_root=folder_root), **EVAL)
    assert other["pca_fitted_on"] == "folder/train"
    assert other["pca"] == {"dim": 4, "whiten": False, "fitted_on": "folder/train"}


def test_landmark_pca_fitted_on_sfm120k(encoder: Encoder, roxford_root: Path, tmp_path: Path) -> None:
    """The paper's 128-d landmark rows: the PCA is fitted on SfM-120k's training images, not on the benchmark."""
    from vitrieval.data.sfm120k_layout import write_sfm120k_layout

    shapes = ("ellipse", "rectangle", "triangle")
    train = {c: [draw(((40 * c) % 255, 90 + 20 * v, 200 - 30 * c % 200), shapes[v % 3], v % 2 == 0)
                 for v in range(4)] for c in range(5)}
    val = {9: [draw((10, 200, 10), "ellipse", False), draw((10, 190, 20), "cross", True)]}
    write_sfm120k_layout(tmp_path / "train", train, val)
    result = evaluate_model(encoder, "roxford5k", roxford_root,
                            pca=PCAOptions(dim=4, fit_dataset="sfm120k", fit_root=tmp_path / "train"), **EVAL)
    assert result["pca"] == {"dim": 4, "whiten": False, "fitted_on": "sfm120k/train"}
    sfm_train = read_dataset("sfm120k", tmp_path / "train").split("train")
    pca = PCAReduction.fit(_direct(encoder, sfm_train, resize="square", output="normalized"), 4)
    table = read_dataset("roxford5k", roxford_root)
    db = _direct(encoder, table.gallery(), resize="square", output="normalized")
    qs = _direct(encoder, table.queries(), resize="square", output="normalized")
    ref = revisited_map_from_descriptors(pca.apply_numpy(db), pca.apply_numpy(qs), table.extras["gnd"])
    assert result["map"] == {p: pytest.approx(ref[p]["map"], abs=1e-9) for p in ("easy", "medium", "hard")}

    # at most 10 of the 20 training images: every 2nd, as fitting on them directly gives
    capped = evaluate_model(encoder, "roxford5k", roxford_root,
                            pca=PCAOptions(dim=4, fit_dataset="sfm120k", fit_root=tmp_path / "train",
                                           fit_max_images=10), **EVAL)
    every_2nd = sfm_train.select([i % 2 == 0 for i in range(len(sfm_train))])
    pca2 = PCAReduction.fit(_direct(encoder, every_2nd, resize="square", output="normalized"), 4)
    ref2 = revisited_map_from_descriptors(pca2.apply_numpy(db), pca2.apply_numpy(qs), table.extras["gnd"])
    assert capped["map"] == {p: pytest.approx(ref2[p]["map"], abs=1e-9) for p in ("easy", "medium", "hard")}


# -- unreadable images ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("workers", [0, 1])
def test_an_unreadable_image_stops_the_evaluation_naming_it(encoder: Encoder, folder_root: Path, tmp_path: Path,
                                                            workers: int) -> None:
    import shutil

    root = tmp_path / "broken"
    shutil.copytree(folder_root, root)
    bad = root / "class4" / "zz_broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG")
    with pytest.raises(ImageDecodeError, match="zz_broken.jpg") as info:
        evaluate_model(encoder, "folder", root,
                       extraction=ExtractionOptions(batch_size=16, num_workers=workers, progress=False))
    assert info.value.path == str(bad)


def test_csv_table_crops_to_its_boxes_and_a_bad_box_is_one_clear_line(encoder: Encoder, folder_root: Path,
                                                                       tmp_path: Path) -> None:
    paths = sorted(folder_root.glob("class[345]/*.png"))
    rows = [f"{p},{p.parent.name[-1]},test,1,1,4,4,40,36" for p in paths]
    (tmp_path / "table.csv").write_text("path,label,split,is_query,is_gallery,x1,y1,x2,y2\n" + "\n".join(rows) + "\n")
    result = evaluate_model(encoder, "csv", tmp_path / "table.csv", ks=[1, 4], **EVAL)
    table = read_dataset("csv", tmp_path / "table.csv")
    z = _direct(encoder, table)  # the dataset crops to each record's bbox
    assert result["recall_at_k"] == {str(k): v for k, v in recall_at_k(z, table.labels, [1, 4]).items()}
    uncropped = _direct(encoder, ImageTable([dataclasses.replace(r, bbox=None) for r in table]))
    assert not np.allclose(z, uncropped, atol=1e-3)

    rows[3] = f"{paths[3]},{paths[3].parent.name[-1]},test,1,1,400,4,440,36"
    (tmp_path / "table.csv").write_text("path,label,split,is_query,is_gallery,x1,y1,x2,y2\n" + "\n".join(rows) + "\n")
    with pytest.raises(ValueError, match="bounding box"):
        evaluate_model(encoder, "csv", tmp_path / "table.csv", **EVAL)


def test_worker_errors_become_one_line(encoder: Encoder, folder_root: Path, tmp_path: Path) -> None:
    """A bad box read inside a DataLoader worker: one clear line naming the file and the box (no traceback).

    (Real workers now: the dataset carries the ImageDecodeError out of the worker as data, no traceback text is
    parsed; this replaces a simulation of torch's re-raised traceback text.)
    """
    paths = sorted(folder_root.glob("class[345]/*.png"))
    rows = [f"{p},{p.parent.name[-1]},test,1,1,4,4,40,36" for p in paths]
    rows[3] = f"{paths[3]},{paths[3].parent.name[-1]},test,1,1,400,4,440,36"
    (tmp_path / "table.csv").write_text("path,label,split,is_query,is_gallery,x1,y1,x2,y2\n" + "\n".join(rows) + "\n")
    with pytest.raises(ImageDecodeError) as info:
        evaluate_model(encoder, "csv", tmp_path / "table.csv",
                       extraction=ExtractionOptions(batch_size=4, num_workers=2, progress=False))
    assert info.value.path == str(paths[3])
    assert str(info.value) == (f"cannot read image {paths[3]}: bounding box (400.0, 4.0, 440.0, 36.0) is empty "
                               "inside an image of size 48x40")
