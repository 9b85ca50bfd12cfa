"""``index.json`` as a typed manifest (vitrieval.index.manifest): a folder written by format version 3 (the fixture
``tests/fixtures/index_v3``) and by the current format 4 (``index_v4``) still load, with their pending journals;
reading validates every key; writing upgrades the version and keeps keys this version does not know."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from vitrieval.index import FORMAT_VERSION, Index, ManifestError
from vitrieval.index.manifest import Manifest, parse_manifest, read_manifest

FIXTURES = Path(__file__).resolve().parent / "fixtures"
sys.path.insert(0, str(FIXTURES))
from make_index_v3 import vectors  # noqa: E402


@pytest.mark.parametrize("version", [3, 4])
def test_a_folder_written_by_an_earlier_or_the_current_format_still_loads(tmp_path: Path, version: int) -> None:
    """Format 3 (``journal.log``) and format 4 (``journal.sqlite``), each with an add and a removal pending."""
    directory = tmp_path / f"v{version}.idx"
    shutil.copytree(FIXTURES / f"index_v{version}", directory)
    index = Index.load(directory)
    assert index.manifest.version == version and index.backend == "faiss" and index.pending_writes == 2
    assert len(index) == 6 and not index.has(2) and index.has(6)  # the journal: id 6 added, id 2 removed
    x = vectors(7)
    hits = index.search(x, k=1)
    want = [(i, f"/collection/{['cats', 'dogs'][i % 2]}/{i}.jpg", i % 2, ["cats", "dogs"][i % 2]) for i in range(7)]
    for i, row in enumerate(hits):
        if i == 2:  # removed: its nearest live neighbour by brute force instead
            live = [j for j in range(7) if j != 2]
            assert row[0].id == live[int(np.argmax(x[live] @ x[2]))]
            continue
        assert (row[0].id, row[0].path, row[0].label, row[0].class_name) == want[i]
        assert row[0].score == pytest.approx(1.0, abs=1e-6)
    index.save()  # compacted as the current version, and loads again the same
    again = Index.load(directory)
    assert again.manifest.version == FORMAT_VERSION and again.pending_writes == 0
    assert [(e.id, e.path, e.label, e.class_name) for e in again.entries()] == [w for w in want if w[0] != 2]


def test_the_manifest_round_trips_and_keeps_unknown_keys(tmp_path: Path) -> None:
    shutil.copytree(FIXTURES / "index_v3", tmp_path / "v3.idx")
    info = json.loads((tmp_path / "v3.idx" / "index.json").read_text())
    info["written_by_a_newer_minor"] = {"kept": True}
    manifest = parse_manifest(tmp_path / "index.json", json.dumps(info))
    assert manifest.dump() == info
    assert isinstance(read_manifest(tmp_path / "v3.idx")[0], Manifest)


@pytest.mark.parametrize("text, message", [
    ("[1, 2]", "not a vitrieval index"),
    ('{"format": "vitrieval-index", "version": 99}', "version 99 is newer than this vitrieval understands"),
    ('{"format": "vitrieval-index", "version": 3, "checkpoint": "m", "fingerprint": "f", "descriptor_dim": 8, '
     '"factory": "Flat"}', "key 'count' is missing"),
    ('{"format": "vitrieval-index", "version": 3, "checkpoint": "m", "fingerprint": "f", "descriptor_dim": 8, '
     '"factory": "Flat", "count": 1, "tombstones": ["x"]}', "key 'tombstones.0' is invalid"),
])
def test_a_bad_manifest_names_the_file_and_the_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ManifestError, match=message) as caught:
        parse_manifest(tmp_path / "index.json", text)
    assert str(caught.value).startswith(str(tmp_path / "index.json")) and "\n" not in str(caught.value)


def test_a_compacted_format_3_folder_takes_writes_numbered_after_its_journal_seq(tmp_path: Path) -> None:
    """A format-3 folder compacted through write 2 (no ``journal.log`` left): the first write is write 3, into a new
    ``journal.sqlite``, and the folder loads with it (not refused as "written by another process")."""
    directory = tmp_path / "v3.idx"
    shutil.copytree(FIXTURES / "index_v3", directory)
    (directory / "journal.log").unlink()
    info = json.loads((directory / "index.json").read_text())
    info["journal_seq"] = 2
    (directory / "index.json").write_text(json.dumps(info))
    index = Index.load(directory)
    assert index.remove([1], save=False) == 1
    again = Index.load(directory)
    assert not again.has(1) and again.pending_writes == 1 and again.manifest.version == 3
    from vitrieval.index.journal import read_journal

    state = read_journal(directory)
    assert state.marked and state.last_seq == 3 and [w.seq for w in state.writes] == [3]
