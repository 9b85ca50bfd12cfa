"""index/descriptor_cache: an interrupted extraction resumes and equals one go; another model's cache is not used."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

import vitrieval.index.build as build_module
from index_world import COLOURS, make_images, make_model
from vitrieval.data.collection import collection_table
from vitrieval.embed import ExtractionOptions, extract
from vitrieval.index.descriptor_cache import CACHE_FILE, cache_folder, cached_descriptors, preprocessing_key
from vitrieval.model import load
from vitrieval.multiscale import MultiScaleEncoder

OPTIONS = ExtractionOptions(batch_size=3, num_workers=0, amp="off", resize="square", output="normalized",
                            progress=False)
SHARDS = dict(shard_size=4)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("dcache")
    images = make_images(root / "distractors", COLOURS[:3], corrupt=1)  # 15 images + 1 unreadable: 4 shards
    return {"root": root, "images": root / "distractors", "paths": images,
            "encoder": load(make_model(root / "model")), "other": load(make_model(root / "other", seed=1))}


class CountingExtract:
    """``extract`` that counts its calls and raises on call number ``fail_at`` (an interruption)."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.calls = 0
        self.fail_at = fail_at

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.calls == self.fail_at:
            raise KeyboardInterrupt("interrupted")
        return extract(*args, **kwargs)


def test_one_go_equals_the_direct_extraction(world: dict, tmp_path: Path) -> None:
    enc = world["encoder"]
    got = cached_descriptors(enc, enc.fingerprint(), world["images"], tmp_path, OPTIONS, **SHARDS)
    table = collection_table(world["images"])
    ref = extract(enc, table, ExtractionOptions(num_workers=0, amp="off", resize="square", skip_bad=True,
                                                output="normalized", progress=False))
    np.testing.assert_allclose(got.descriptors, ref.descriptors, atol=1e-6)
    assert got.paths == [table[i].path for i in ref.indices] and len(got.paths) == 15
    assert len(got.skipped) == 1 and "corrupt" in got.skipped[0] and got.embedded
    meta = json.loads((got.directory / CACHE_FILE).read_text())
    assert meta["count"] == 15 and meta["fingerprint"] == enc.fingerprint()
    assert got.directory.name.startswith(enc.fingerprint() + "-")
    assert meta["preprocessing"] == preprocessing_key(enc, OPTIONS)


def test_the_key_is_derived_from_the_options_and_the_model(world: dict, tmp_path: Path) -> None:
    """The recorded preprocessing follows the options value (one owner): what changes the descriptors splits the
    cache, what does not (batch size, workers, progress) does not; ``evaluate --distractors``' folders of before
    (the dict it wrote out by hand) keep their names."""
    enc = world["encoder"]
    key = preprocessing_key(enc, OPTIONS)
    assert key == {"resize": "square", "amp": "off", "device": "cpu", "pca": "before",
                   "image_size": int(enc.data_config["image_size"]), "scales": [1.0], "fast_decode": True}
    assert cache_folder(tmp_path, "fp", key, "c") == cache_folder(tmp_path, "fp", dict(reversed(key.items())), "c")
    same = dataclasses.replace(OPTIONS, batch_size=5, num_workers=2, progress=True, skip_bad=True)
    assert preprocessing_key(enc, same) == key
    changes = {"resize": ("shorter", "shorter"), "amp": ("bf16", "bf16"), "fast_decode": (False, False),
               "output": ("descriptor", "after")}
    for field, (value, recorded) in changes.items():
        changed = preprocessing_key(enc, dataclasses.replace(OPTIONS, **{field: value}))
        name = "pca" if field == "output" else field
        assert changed == {**key, name: recorded}
    assert preprocessing_key(enc, dataclasses.replace(OPTIONS, output="pooled"))["pca"] == "pooled"
    assert preprocessing_key(MultiScaleEncoder(enc, (1.0, 0.5)), OPTIONS) == {**key, "scales": [1.0, 0.5]}


def test_an_interrupted_extraction_resumes_and_equals_one_go(world: dict, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    enc = world["encoder"]
    one_go = cached_descriptors(enc, enc.fingerprint(), world["images"], tmp_path / "a", OPTIONS, **SHARDS)
    interrupted = CountingExtract(fail_at=3)
    monkeypatch.setattr(build_module, "extract", interrupted)
    with pytest.raises(KeyboardInterrupt):
        cached_descriptors(enc, enc.fingerprint(), world["images"], tmp_path / "b", OPTIONS, **SHARDS)
    (folder,) = (tmp_path / "b").iterdir()
    assert sorted(p.name for p in (folder / "shards").glob("*.json")) == ["00000.json", "00001.json"]
    assert not (folder / CACHE_FILE).exists()  # incomplete: never read back as a cache
    resumed = CountingExtract()
    monkeypatch.setattr(build_module, "extract", resumed)
    again = cached_descriptors(enc, enc.fingerprint(), world["images"], tmp_path / "b", OPTIONS, **SHARDS)
    assert resumed.calls == 2  # shards 2 and 3 only
    np.testing.assert_array_equal(np.asarray(again.descriptors), np.asarray(one_go.descriptors))
    assert again.paths == one_go.paths and again.skipped == one_go.skipped
    reused = CountingExtract()
    monkeypatch.setattr(build_module, "extract", reused)
    third = cached_descriptors(enc, enc.fingerprint(), world["images"], tmp_path / "b", OPTIONS, **SHARDS)
    assert reused.calls == 0 and not third.embedded
    np.testing.assert_array_equal(np.asarray(third.descriptors), np.asarray(one_go.descriptors))


def test_another_model_or_preprocessing_does_not_reuse_the_cache(world: dict, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    enc, other = world["encoder"], world["other"]
    first = cached_descriptors(enc, enc.fingerprint(), world["images"], tmp_path, OPTIONS, **SHARDS)
    counting = CountingExtract()
    monkeypatch.setattr(build_module, "extract", counting)
    theirs = cached_descriptors(other, other.fingerprint(), world["images"], tmp_path, OPTIONS, **SHARDS)
    assert counting.calls == 4 and theirs.embedded and theirs.directory != first.directory
    assert np.abs(np.asarray(theirs.descriptors) - np.asarray(first.descriptors)).max() > 1e-2
    # a model claiming the first one's fingerprint with other preprocessing (scales) gets a folder of its own too
    multi = cached_descriptors(MultiScaleEncoder(enc, (1.0, 0.5)), enc.fingerprint(), world["images"], tmp_path,
                               OPTIONS, **SHARDS)
    assert counting.calls == 8 and multi.directory not in (first.directory, theirs.directory)
    assert len(list(tmp_path.iterdir())) == 3
    # the first model's folder is untouched and still reused
    again = cached_descriptors(enc, enc.fingerprint(), world["images"], tmp_path, OPTIONS, **SHARDS)
    assert counting.calls == 8 and not again.embedded
