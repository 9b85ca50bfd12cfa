"""The ``index``, ``search`` and ``serve`` commands on the index tests' small world."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import pytest

from index_world import COLOURS, build_world, make_images
from vitrieval.index import Index


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A model, 30 images + 1 corrupt file, and a Flat index of them (built once for the module)."""
    return build_world(tmp_path_factory.mktemp("index"))


def _cli(module, argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="vitrieval")
    sub = parser.add_subparsers(dest="command")
    module.add_parser(sub)
    return module.run(parser.parse_args(argv))


def test_cli_index_add_and_search(world: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from vitrieval.cli import CLIError, index_cmd, search_cmd

    out = tmp_path / "cli.idx"
    images = tmp_path / "images"
    shutil.copytree(world["root"] / "images", images)
    assert _cli(index_cmd, ["index", "--checkpoint", str(world["model"]), "--images", str(images), "-o", str(out),
                            "--factory", "Flat", "--workers", "0", "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "indexed 30 image(s)" in text and "1 unreadable skipped" in text and "img_corrupt0.jpg" in text

    make_images(tmp_path / "more", COLOURS[7:8], prefix="more")
    assert _cli(index_cmd, ["index", "--images", str(tmp_path / "more"), "-o", str(out), "--add",
                            "--workers", "0", "--no-progress"]) == 0
    assert "30 -> 35" in capsys.readouterr().out
    assert len(Index.load(out)) == 35

    query = sorted((tmp_path / "more").iterdir())[2]
    assert _cli(search_cmd, ["search", "--index", str(out), str(query), "-k", "3", "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload[0]["query"] == str(query) and len(payload[0]["results"]) == 3
    top = payload[0]["results"][0]
    assert top["rank"] == 1 and top["path"] == str(query.resolve()) and top["score"] == pytest.approx(1, abs=1e-4)
    assert set(top) == {"rank", "id", "path", "label", "class_name", "score"}

    assert _cli(search_cmd, ["search", "--index", str(out), str(query), "-k", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"query: {query}" and lines[1].split() == ["rank", "id", "score", "label", "class", "path"]
    assert lines[2].split()[0] == "1" and lines[2].split()[-1] == str(query.resolve()) and len(lines) == 4
    assert lines[2].split()[1] == str(top["id"])  # the id that --remove takes

    with pytest.raises(CLIError, match="cannot read image"):
        _cli(search_cmd, ["search", "--index", str(out), str(images / "img_corrupt0.jpg")])
    with pytest.raises(CLIError, match="--checkpoint or --model is required"):
        _cli(index_cmd, ["index", "--images", str(images), "-o", str(tmp_path / "x.idx")])
    with pytest.raises(CLIError, match="nprobe applies to IVF"):
        _cli(search_cmd, ["search", "--index", str(out), str(query), "--nprobe", "4"])


def test_cli_serve_builds_the_app_for_uvicorn(world: dict, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture) -> None:
    import uvicorn
    from fastapi.testclient import TestClient

    from vitrieval.cli import CLIError, serve_cmd

    seen: dict = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.update(app=app, **kw))
    assert _cli(serve_cmd, ["serve", "--index", str(world["index_dir"]), "--port", "8123",
                            "--max-upload-mb", "2", "--max-k", "20"]) == 0
    assert seen["host"] == "127.0.0.1" and seen["port"] == 8123
    assert "serving 30 images" in capsys.readouterr().out
    health = TestClient(seen["app"]).get("/healthz").json()
    assert health["count"] == 30 and health["max_k"] == 20 and health["max_upload_bytes"] == 2 * 2 ** 20
    with pytest.raises(CLIError, match="--port"):
        _cli(serve_cmd, ["serve", "--index", str(world["index_dir"]), "--port", "70000"])


def test_cli_index_remove(world: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from vitrieval.cli import CLIError, index_cmd

    out = tmp_path / "rm.idx"
    shutil.copytree(world["index_dir"], out)
    generation = Index.load(out).generation
    with pytest.raises(CLIError, match="no image with id 999 .*nothing removed"):
        _cli(index_cmd, ["index", "-o", str(out), "--remove", "3", "999"])
    assert len(Index.load(out)) == 30
    assert _cli(index_cmd, ["index", "-o", str(out), "--remove", "3", "4"]) == 0
    printed = capsys.readouterr().out
    assert "removed 2 image(s)" in printed and "30 -> 28" in printed
    index = Index.load(out)
    assert len(index) == 28 and not index.has(3) and not index.has(4) and index.generation == generation + 1
    assert index.pending_writes == 0 and not (out / "journal.log").exists()  # compacted before returning
    with pytest.raises(CLIError, match="not an index folder"):
        _cli(index_cmd, ["index", "-o", str(tmp_path / "none"), "--remove", "1"])


def test_cli_serve_takes_writes_with_a_token_file(world: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture) -> None:
    import uvicorn
    from fastapi.testclient import TestClient

    from vitrieval.cli import CLIError, serve_cmd

    out = tmp_path / "w.idx"
    shutil.copytree(world["index_dir"], out)
    token = tmp_path / "token"
    token.write_text("a-token-of-the-cli-test\n")
    seen: dict = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.update(app=app, **kw))
    assert _cli(serve_cmd, ["serve", "--index", str(out), "--port", "8124", "--write-token-file", str(token),
                            "--max-batch", "4", "--max-wait-ms", "1"]) == 0
    assert "writes on" in capsys.readouterr().out
    client = TestClient(seen["app"])
    health = client.get("/healthz").json()
    assert health["writable"] and health["max_batch"] == 4 and health["max_wait_ms"] == 1.0
    assert client.delete("/images/5", headers={"Authorization": "Bearer a-token-of-the-cli-test"}).status_code == 204
    seen["app"].state.close()
    assert len(Index.load(out)) == 29
    token.write_text("short")
    with pytest.raises(CLIError, match="at least 16 characters"):
        _cli(serve_cmd, ["serve", "--index", str(out), "--port", "8124", "--write-token-file", str(token)])


def test_cli_index_full_decode_is_recorded(world: dict, tmp_path: Path) -> None:
    """``--full-decode`` builds record ``fast_decode: false`` (the default records true); ``--add`` follows the
    index's own and refuses the flag."""
    from vitrieval.cli import CLIError, index_cmd

    common = ["--checkpoint", str(world["model"]), "--images", str(world["root"] / "images"), "--factory", "Flat",
              "--workers", "0", "--no-progress"]
    assert _cli(index_cmd, ["index", *common, "-o", str(tmp_path / "fast.idx")]) == 0
    assert _cli(index_cmd, ["index", *common, "-o", str(tmp_path / "full.idx"), "--full-decode"]) == 0
    for name, expected in (("fast.idx", True), ("full.idx", False)):
        info = json.loads((tmp_path / name / "index.json").read_text())
        assert info["preprocessing"]["fast_decode"] is expected
        assert Index.load(tmp_path / name).fast_decode is expected
    with pytest.raises(CLIError, match="--full-decode are set when an index is built"):
        _cli(index_cmd, ["index", "--images", str(world["root"] / "images"), "-o", str(tmp_path / "fast.idx"),
                         "--add", "--full-decode"])


def _snapshot(folder: Path) -> dict[str, tuple[bytes | None, int]]:
    """Every file and folder under ``folder``: its bytes (``None`` for a folder) and mode."""
    return {str(p.relative_to(folder)): (None if p.is_dir() else p.read_bytes(), p.stat().st_mode)
            for p in sorted(folder.rglob("*"))}


@pytest.mark.parametrize("command", ["overwrite", "rebuild", "add"])
def test_cli_index_beside_a_writer_is_refused_before_any_embedding_and_changes_no_byte(
        world: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture,
        command: str) -> None:
    """Issue 28, case 6: ``--overwrite`` (and a rebuild, and ``--add``) beside a service taking writes takes the
    folder's write lock first: refused in one line, nothing embedded, the folder (``shards/`` too) byte-identical."""
    import vitrieval.embed
    from index_world import make_model
    from vitrieval.cli import main
    from vitrieval.index import build

    out = tmp_path / "busy.idx"
    shutil.copytree(world["index_dir"], out)
    more = tmp_path / "more"
    make_images(more, COLOURS[6:7], prefix="more")
    never = lambda *a, **kw: pytest.fail("embedded before taking the write lock")  # noqa: E731
    monkeypatch.setattr(build, "extract", never)
    monkeypatch.setattr(vitrieval.embed, "extract", never)
    argv = {"overwrite": ["--checkpoint", str(make_model(tmp_path / "other", seed=1)), "--images",
                          str(world["root"] / "images"), "--overwrite"],
            "rebuild": ["--checkpoint", str(world["model"]), "--images", str(world["root"] / "images")],
            "add": ["--images", str(more), "--add"]}[command]
    service = Index.load(out)
    service.hold_writer()  # what `vitrieval serve --write-token-file` holds
    before = _snapshot(out)
    try:
        code = main(["index", *argv, "-o", str(out), "--no-progress", "--num-workers", "0"])
    finally:
        service.release_writer()
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert f"vitrieval index: error: {out} is being written by another process" in err
    assert _snapshot(out) == before


def test_cli_index_add_on_a_full_disk_is_one_line_naming_the_folder_and_loses_nothing(world: dict,
                                                                                      tmp_path: Path) -> None:
    """Issue 28, case 1 (the CLI's side): not two tracebacks but one line, exit 2; the index loads as before."""
    from mounts import PYTHON, fill, in_mount_namespace, tmpfs_with

    mount, more = tmp_path / "full", tmp_path / "more"
    make_images(more, COLOURS[6:8], prefix="more")
    folder = mount / "flat.idx"
    done = in_mount_namespace(
        f"{tmpfs_with(mount, world['index_dir'])} && {fill(mount)} && {{ {PYTHON} -m vitrieval index --images "
        f"{more} -o {folder} --add --no-progress --num-workers 0; echo rc=$?; }} && {PYTHON} -c "
        f"'from vitrieval.index import Index; print(\"count\", len(Index.load(\"{folder}\")))'")
    assert "rc=2" in done.stdout and "count 30" in done.stdout, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert "Traceback" not in done.stderr and len(lines) == 1, done.stderr
    assert lines[0].startswith(f"vitrieval index: error: {folder}") and \
        "No space left on device (ENOSPC); free some space" in lines[0]


def test_cli_index_add_and_remove_on_a_read_only_folder_are_refused_in_one_line(world: dict, tmp_path: Path) -> None:
    from mounts import PYTHON, in_mount_namespace, read_only, tmpfs_with

    mount, more = tmp_path / "ro", tmp_path / "more"
    make_images(more, COLOURS[6:7], prefix="more")
    folder = mount / "flat.idx"
    done = in_mount_namespace(
        f"{tmpfs_with(mount, world['index_dir'])} && {read_only(mount)} && "
        f"{{ {PYTHON} -m vitrieval index --images {more} -o {folder} --add --no-progress --num-workers 0; "
        f"echo rc=$?; }} && {{ {PYTHON} -m vitrieval index -o {folder} --remove 3; echo rc=$?; }}")
    assert done.stdout.split() == ["rc=2", "rc=2"], done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    expected = f"vitrieval index: error: cannot write {folder}: Read-only file system (EROFS); the file system " \
               "is mounted read-only: use a folder on a writable one"
    assert done.stderr.strip().splitlines() == [expected, expected]
