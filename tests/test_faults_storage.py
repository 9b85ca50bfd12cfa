"""Issue 28, storage: the live collection under faults of the machine. A full disk (a real 20 MB tmpfs: a write
answered with an error has no effect after SIGKILL and restart, every acknowledged one is there), ids allocated from
the store, uploads stored relative to the index folder (a copied folder is complete), a damaged or replaced journal
and a damaged manifest as one line naming the file (and the key or offset)."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from index_world import COLOURS, build_world, draw, good_images
from vitrieval.cli import main
from vitrieval.index import Index, IndexFormatError
from vitrieval.index.journal import JOURNAL_FILE
from vitrieval.serve import create_app

SRC = Path(__file__).resolve().parents[1] / "src"
TOKEN = "s3cret-token-of-the-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return build_world(tmp_path_factory.mktemp("storage"))


@pytest.fixture()
def small_disk(tmp_path: Path):
    """A 20 MB tmpfs mounted at ``tmp_path / "disk"`` (skipped where mounting is not allowed)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", str(disk)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {done.stderr.strip()[:200]}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def _fill(disk: Path) -> Path:
    """Fill ``disk`` to the last byte with one file; returns it (delete it to free the space)."""
    filler = disk / "filler.bin"
    with open(filler, "wb", buffering=0) as fh:
        block = b"\0" * (1 << 16)
        while True:
            try:
                fh.write(block)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
                break
        for size in (4096, 512, 1):  # the last partial blocks
            while True:
                try:
                    fh.write(b"\0" * size)
                except OSError:
                    break
    return filler


def _unit(seed: int, dim: int = 192) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=dim).astype(np.float32)
    return x / np.linalg.norm(x)


WRITER = textwrap.dedent("""
    import sys
    import numpy as np
    from vitrieval.index import Index
    index = Index.load(sys.argv[1])
    index.hold_writer()
    print("ready", flush=True)
    for line in sys.stdin:
        op, arg = line.split()
        try:
            if op == "remove":
                done = index.remove([int(arg)], save=False)
            else:
                x = np.random.default_rng(int(arg)).normal(size=index.descriptor_dim).astype(np.float32)
                done = int(index.add_descriptors(x[None], [(f"/added/{arg}.png", None)])[0])
            print("ok", done, flush=True)
        except OSError as exc:
            print("error", exc.errno, flush=True)
""")


def test_a_full_disk_error_has_no_effect_and_an_acknowledgement_is_durable(world, small_disk):
    directory = small_disk / "cat.idx"
    shutil.copytree(world["index_dir"], directory, ignore=shutil.ignore_patterns("shards"))
    child = subprocess.Popen([sys.executable, "-c", WRITER, str(directory)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(SRC)})

    def ask(command: str) -> list[str]:
        child.stdin.write(command + "\n")
        child.stdin.flush()
        return child.stdout.readline().split()

    try:
        assert child.stdout.readline().strip() == "ready"
        assert ask("remove 3") == ["ok", "1"]  # acknowledged before the disk is full
        filler = _fill(small_disk)
        # the journal's last page may still take a record or a few: write until the disk refuses
        added, failed_add = [], None
        for seed in range(100, 120):
            answer = ask(f"add {seed}")
            if answer[0] == "error":
                assert answer == ["error", str(errno.ENOSPC)]
                failed_add = seed
                break
            added.append((seed, int(answer[1])))
        removed, failed_remove = [3], None
        for i in range(5, 29):
            answer = ask(f"remove {i}")
            if answer[0] == "error":
                assert answer == ["error", str(errno.ENOSPC)]
                failed_remove = i
                break
            removed.append(i)
        assert failed_add is not None and failed_remove is not None
        filler.unlink()
        assert ask("remove 29") == ["ok", "1"]  # the failed records are not carried along with this one
        removed.append(29)
        last = ask("add 200")
        assert last == ["ok", str(30 + len(added))]  # the failed add took no id
        added.append((200, 30 + len(added)))
    finally:
        child.kill()
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL
    index = Index.load(directory)
    assert index.has(failed_remove) and not any(index.has(i) for i in removed)
    assert len(index) == 30 - len(removed) + len(added) and not index.has(30 + len(added))
    for seed, image_id in added:
        top = index.search(_unit(seed), k=1)[0][0]
        assert (top.id, top.path) == (image_id, f"/added/{seed}.png") and top.score == pytest.approx(1.0, abs=1e-5)
    assert all(h.path != f"/added/{failed_add}.png" for h in index.search(_unit(failed_add), k=len(index))[0])
    index.save()  # the compaction of a folder that saw a full disk loads whole
    again = Index.load(directory)
    assert len(again) == len(index) and [e.id for e in again.entries()] == [e.id for e in index.entries()]


def test_an_upload_on_a_full_disk_is_507_and_leaves_nothing(world, small_disk):
    directory = small_disk / "cat.idx"
    shutil.copytree(world["index_dir"], directory, ignore=shutil.ignore_patterns("shards"))
    app = create_app(Index.load(directory), write_token=TOKEN, compact_every=1000, compact_interval_s=600)
    client = TestClient(app)
    buf = __import__("io").BytesIO()
    draw(COLOURS[9], "cross", dark=True).save(buf, format="PNG")
    try:
        filler = _fill(small_disk)
        r = client.post("/images", files={"file": ("my photo.png", buf.getvalue(), "image/png")}, headers=AUTH)
        assert r.status_code == 507 and "No space left on device" in r.json()["detail"]
        assert client.delete("/images/4", headers=AUTH).status_code == 507
        assert len(app.state.index) == 30 and app.state.index.has(4)
        assert not (directory / "uploads").exists() or not list((directory / "uploads").iterdir())
        filler.unlink()
        r = client.post("/images", files={"file": ("my photo.png", buf.getvalue(), "image/png")}, headers=AUTH)
        assert r.status_code == 201 and r.json()["id"] == 30
    finally:
        app.state.close()
    assert Index.load(directory).has(4) and len(Index.load(directory)) == 31


def test_ids_come_from_the_store_not_from_a_lowered_next_id(world, tmp_path):
    directory = tmp_path / "cat.idx"
    shutil.copytree(world["index_dir"], directory)
    info = json.loads((directory / "index.json").read_text())
    info["next_id"] = 3  # lowered by hand (or by a bug)
    (directory / "index.json").write_text(json.dumps(info))
    index = Index.load(directory)
    before = index.entry(3)
    new = int(index.add_descriptors(_unit(7)[None], [("/new.png", None)])[0])
    assert new == 30 and index.entry(3) == before  # never an existing id
    index.remove([29])
    assert int(index.add_descriptors(_unit(8)[None], [("/newer.png", None)])[0]) == 31  # nor a removed one


def test_a_copied_folder_serves_its_uploads_with_the_original_gone(world, tmp_path):
    original = tmp_path / "cat.idx"
    shutil.copytree(world["index_dir"], original)
    app = create_app(Index.load(original), write_token=TOKEN, compact_every=1000, compact_interval_s=600)
    buf = __import__("io").BytesIO()
    draw(COLOURS[9], "cross", dark=True).save(buf, format="PNG")
    r = TestClient(app).post("/images", files={"file": ("../My Photo (1).png", buf.getvalue(), "image/png")},
                             data={"class_name": "crosses"}, headers=AUTH)
    assert r.status_code == 201, r.text
    added = r.json()["id"]
    stored = Path(app.state.index.entry(added).path)
    assert stored.parent == original / "uploads" and stored.name.endswith("-My_Photo_1.png")
    app.state.close()  # compacts: the row is in the generation, relative to the folder
    copy = tmp_path / "moved.idx"
    shutil.copytree(original, copy)
    shutil.rmtree(original)
    served = create_app(Index.load(copy), write_token=TOKEN, compact_every=1000, compact_interval_s=600)
    client = TestClient(served)
    thumb = client.get(f"/images/{added}")
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    hit = client.post("/search?k=1", files={"file": ("q.png", buf.getvalue(), "image/png")}).json()["results"][0]
    assert (hit["id"], hit["class_name"]) == (added, "crosses") and hit["score"] == pytest.approx(1.0, abs=1e-4)
    assert client.delete(f"/images/{added}", headers=AUTH).status_code == 204
    assert not (copy / "uploads" / stored.name).exists()  # the copy's own file is removed
    served.state.close()


def _one_line(capsys: pytest.CaptureFixture, *names: str) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("vitrieval search: error:")]
    assert "Traceback" not in err and len(lines) == 1, err
    for name in names:
        assert name in lines[0], lines[0]
    return lines[0]


def _journalled(world: dict, tmp_path: Path) -> Path:
    directory = tmp_path / "cat.idx"
    shutil.copytree(world["index_dir"], directory)
    index = Index.load(directory)
    for seed in range(3):
        index.add_descriptors(_unit(seed)[None], [(f"/j{seed}.png", None)])
    return directory


def _empty(directory: Path) -> None:
    (directory / JOURNAL_FILE).write_bytes(b"")


def _replace_by_folder(directory: Path) -> None:
    (directory / JOURNAL_FILE).unlink()
    (directory / JOURNAL_FILE).mkdir()


def _overwrite_page(directory: Path) -> None:
    data = bytearray((directory / JOURNAL_FILE).read_bytes())
    data[4096:8192] = bytes(range(256)) * 16  # the second page: a damaged copy
    (directory / JOURNAL_FILE).write_bytes(bytes(data))


def _delete_last_write(directory: Path) -> None:
    import sqlite3

    db = sqlite3.connect(directory / JOURNAL_FILE)
    with db:
        db.execute("DELETE FROM writes WHERE seq = 3")
    db.close()


def _raise_journal_seq(directory: Path) -> None:
    info = json.loads((directory / "index.json").read_text())
    info["journal_seq"] = 7
    (directory / "index.json").write_text(json.dumps(info))


@pytest.mark.parametrize("damage, file, says", [
    (_replace_by_folder, JOURNAL_FILE, "journal.sqlite is not a file"),
    (_empty, JOURNAL_FILE, "journal.sqlite is empty (0 bytes)"),
    (lambda d: (d / JOURNAL_FILE).unlink(), JOURNAL_FILE, "journal.sqlite is missing"),
    (_overwrite_page, JOURNAL_FILE, "journal.sqlite is damaged"),
    (_delete_last_write, JOURNAL_FILE, "the acknowledged write 3 since the generation of index.json (journal_seq 0) "
                                       "is missing"),
    (_raise_journal_seq, "index.json", "key 'journal_seq' is 7, beyond the last write"),
], ids=["folder", "emptied", "deleted", "damaged", "write-deleted", "journal_seq-raised"])
def test_a_damaged_journal_is_one_line_naming_the_file_never_a_silent_drop(world, tmp_path, capsys, damage, file,
                                                                           says):
    """Three acknowledged writes in the journal, then the journal damaged (or ``journal_seq`` raised by hand): a
    load is one line naming the file and what is missing, and changes nothing."""
    directory = _journalled(world, tmp_path)
    damage(directory)
    before = {p.relative_to(directory): p.read_bytes() for p in directory.rglob("*") if p.is_file()}
    with pytest.raises(IndexFormatError, match=re.escape(says)):
        Index.load(directory)
    assert main(["search", "--index", str(directory), str(good_images(world)[0])]) == 2
    _one_line(capsys, str(directory / file), says, "restore the index folder from a copy, or rebuild it")
    assert {p.relative_to(directory): p.read_bytes() for p in directory.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("edit, key", [(lambda info: info.pop("count"), "'count' is missing"),
                                       (lambda info: info.update(generation="abc"), "'generation' is invalid"),
                                       (lambda info: info.update(descriptor_dim=[1]), "'descriptor_dim' is invalid"),
                                       (lambda info: info.update(version="2"), "'version' must be an integer")])
def test_a_missing_or_ill_typed_manifest_key_is_one_line_naming_the_file_and_key(world, tmp_path, capsys, edit,
                                                                                  key):
    directory = tmp_path / "cat.idx"
    shutil.copytree(world["index_dir"], directory)
    info = json.loads((directory / "index.json").read_text())
    edit(info)
    (directory / "index.json").write_text(json.dumps(info))
    assert main(["search", "--index", str(directory), str(good_images(world)[0])]) == 2
    _one_line(capsys, str(directory / "index.json"), key)


@pytest.mark.parametrize("damage", [_empty, _overwrite_page,
                                    _delete_last_write, _raise_journal_seq], ids=["emptied", "damaged",
                                                                                   "write-deleted", "raised"])
def test_a_rebuild_replaces_a_damaged_journal_as_its_error_line_says(world, tmp_path, caplog, damage):
    """The fix the error names works: a build over the folder (which replaces the index, pending writes included)
    takes a damaged journal as none, says so in one warning, and leaves a folder that loads."""
    directory = _journalled(world, tmp_path)
    damage(directory)
    before = json.loads((directory / "index.json").read_text())["journal_seq"]
    Index.build(world["model"], world["root"] / "images", directory, factory="Flat", num_workers=0, progress=False)
    index = Index.load(directory)
    assert len(index) == 30 and index.pending_writes == 0
    assert index.manifest.journal_seq >= min(before, 3)
    damaged = [r.getMessage() for r in caplog.records if "this build replaces it" in r.getMessage()]
    # an unreadable file is named; a readable one that lost writes, or a raised journal_seq, is simply replaced
    assert len(damaged) == (1 if damage in (_empty, _overwrite_page) else 0)
