"""Issue 14, case 11 (serve): an over-long id is a 404, a client that disconnects mid-upload leaves no ERROR
traceback in the log, a port in use is refused before anything is printed or loaded. Issue 28 (serve): a service
asked to write a folder it cannot write refuses to start in one line; a write on a full disk is a 507 in one line,
and /healthz tells whether writes can reach the folder (on a real tmpfs: tests/mounts.py)."""

from __future__ import annotations

import asyncio
import json
import logging
import socket

import pytest
from fastapi.testclient import TestClient

from index_world import build_world
from mounts import PYTHON, fill, in_mount_namespace, read_only, tmpfs_with
from vitrieval.cli import main
from vitrieval.serve import create_app


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict:
    world = build_world(tmp_path_factory.mktemp("serve_faults"))
    world["app"] = create_app(world["index"], max_upload_bytes=64 * 1024)
    return world


@pytest.mark.parametrize("digits", [21, 4301, 10_000])
def test_an_over_long_image_id_is_not_found(world, digits):
    client = TestClient(world["app"], raise_server_exceptions=False)
    r = client.get("/images/" + "7" * digits)
    assert r.status_code == 404 and r.json() == {"detail": "no such image"}
    assert client.get("/images/" + "0" * 19 + "1").status_code == 200  # leading zeros, 20 digits: still an id


def _post_then_disconnect(app, body_part: bytes) -> list[dict]:
    """Send a multipart POST /search whose body stops after ``body_part`` (the client went away)."""
    boundary = "b0undary"
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
             "scheme": "http", "path": "/search", "raw_path": b"/search", "query_string": b"k=3", "root_path": "",
             "headers": [(b"content-type", f"multipart/form-data; boundary={boundary}".encode()),
                         (b"content-length", b"50000"), (b"host", b"test")],
             "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 8000)}
    messages = iter([{"type": "http.request", "body": body_part, "more_body": True}])
    sent: list[dict] = []

    async def receive() -> dict:
        try:
            return next(messages)
        except StopIteration:
            return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    return sent


def test_a_client_that_disconnects_mid_upload_is_no_error(world, caplog):
    head = (b'--b0undary\r\nContent-Disposition: form-data; name="file"; filename="q.png"\r\n'
            b"Content-Type: image/png\r\n\r\n" + world["images"][0].read_bytes()[:100])
    with caplog.at_level(logging.INFO):
        sent = _post_then_disconnect(world["app"], head)  # before: ClientDisconnect raised out of the app
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("disconnected during its upload" in r.getMessage() for r in caplog.records)
    assert sent and sent[0]["type"] == "http.response.start" and sent[0]["status"] == 400


def test_a_port_in_use_is_refused_before_serving(world, monkeypatch, capsys):
    import uvicorn

    from vitrieval.index import Index

    monkeypatch.setattr(uvicorn, "run", lambda *a, **kw: pytest.fail("uvicorn started"))
    monkeypatch.setattr(Index, "load", classmethod(lambda *a, **kw: pytest.fail("loaded the index first")))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["serve", "--index", str(world["index_dir"]), "--port", str(port)]) == 2
    captured = capsys.readouterr()
    assert "serving" not in captured.out
    assert f"vitrieval serve: error: cannot listen on 127.0.0.1:{port}" in captured.err
    assert "another server is on that port" in captured.err and "Traceback" not in captured.err


def test_a_free_port_still_serves(world, monkeypatch, capsys):
    import uvicorn

    seen: dict = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.update(kw))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    assert main(["serve", "--index", str(world["index_dir"]), "--port", str(port)]) == 0
    assert seen["port"] == port and "serving 30 images" in capsys.readouterr().out


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_serve_with_writes_on_a_read_only_folder_refuses_to_start_in_one_line(world, tmp_path):
    """Issue 28, case 4: not "writes on" and a 500 with a traceback at every write, but exit 2 before serving."""
    mount, token = tmp_path / "ro", tmp_path / "token"
    token.write_text("a-token-of-the-read-only-test\n")
    done = in_mount_namespace(  # a model that is gone would be refused too, later: the folder is checked first
        f"{tmpfs_with(mount, world['index_dir'])} && {read_only(mount)} && {PYTHON} -m vitrieval serve --index "
        f"{mount / 'flat.idx'} --write-token-file {token} --port {_free_port()} --checkpoint {tmp_path / 'gone'}")
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr and "serving" not in done.stdout
    assert done.stderr.startswith(f"vitrieval serve: error: writes are on but cannot write {mount / 'flat.idx'}: "
                                  "Read-only file system (EROFS)")
    assert "serve it read-only (no write token)" in done.stderr


@pytest.fixture
def model_loads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The folders whose model a service loaded (Index's one loader of the query model, recorded, then run)."""
    from vitrieval.index import Index

    loads: list[str] = []
    load = Index._load_embedder

    def recorded(self, *args, **kwargs):
        loads.append(str(self.directory))
        return load(self, *args, **kwargs)

    monkeypatch.setattr(Index, "_load_embedder", recorded)
    return loads


def test_serve_with_writes_beside_another_writer_is_refused_before_the_model_loads(world, model_loads):
    """Issue 28, case 4: the folder's lock and write probe come first, so a refusal does not wait for the model."""
    from vitrieval.index import Index
    from vitrieval.index.journal import JournalLocked, JournalWriter

    other = JournalWriter(world["index_dir"])  # another process's `vitrieval index --add`, say
    try:
        with pytest.raises(JournalLocked, match="being written by another process"):
            create_app(Index.load(world["index_dir"]), write_token="a-token")
    finally:
        other.close()
    assert model_loads == []
    app = create_app(Index.load(world["index_dir"]), write_token="a-token")  # the same start, the lock free
    assert model_loads == [str(world["index_dir"])]
    app.state.close()


@pytest.mark.parametrize("failure", ["model gone", "max_batch", "compact_every"])
def test_a_writing_service_whose_start_fails_after_the_lock_releases_it(world, tmp_path, model_loads, failure):
    from vitrieval.index import Index
    from vitrieval.index.journal import JournalWriter

    checkpoint = tmp_path / "gone" if failure == "model gone" else None
    settings = {"max_batch": 0} if failure == "max_batch" else {"compact_every": 0} if failure == "compact_every" \
        else {}
    with pytest.raises((FileNotFoundError, ValueError), match="is gone|max_batch|max_pending"):
        create_app(Index.load(world["index_dir"], checkpoint=checkpoint), write_token="a-token", **settings)
    assert model_loads == [str(world["index_dir"])]  # the lock was taken: the start went on to the model
    JournalWriter(world["index_dir"]).close()  # before: JournalLocked, the folder locked until the process exits


def _serve_with_model(world: dict, tmp_path, weights: str) -> int:
    """``vitrieval serve`` of the world's index with writes on and ``--model`` made again from ``weights``."""
    token = tmp_path / "token"
    token.write_text("a-token-of-the-model-test\n")
    return main(["serve", "--index", str(world["index_dir"]), "--write-token-file", str(token), "--port",
                 str(_free_port()), "--model", "deit_tiny_patch16_224", "--pretrained-file", weights,
                 "--image-size", "32"])


def test_serve_with_writes_and_model_beside_another_writer_is_refused_before_the_model_is_made(
        world, tmp_path, monkeypatch, capsys, model_loads):
    import uvicorn

    from vitrieval.cli import retrieval_options
    from vitrieval.index.journal import JournalWriter

    made: list[str] = []
    monkeypatch.setattr(retrieval_options, "encoder_from_args", lambda args: made.append(args.model))
    monkeypatch.setattr(uvicorn, "run", lambda *a, **kw: pytest.fail("uvicorn started"))
    other = JournalWriter(world["index_dir"])
    try:
        assert _serve_with_model(world, tmp_path, str(tmp_path / "weights-never-read.pth")) == 2
    finally:
        other.close()
    err = capsys.readouterr().err
    assert err.startswith("vitrieval serve: error: ") and "being written by another process" in err
    assert err.count("\n") == 1 and made == [] and model_loads == []


def test_serve_with_writes_and_another_model_is_refused_naming_it_and_leaves_the_folder_unlocked(
        world, tmp_path, monkeypatch, capsys):
    import timm
    import torch
    import uvicorn

    from vitrieval.index.journal import JournalWriter

    monkeypatch.setattr(uvicorn, "run", lambda *a, **kw: pytest.fail("uvicorn started"))
    weights = tmp_path / "other.pth"  # timm's DeiT-Tiny at 32 px, patch 16: not the index's model
    torch.save(timm.create_model("deit_tiny_patch16_224", pretrained=False).state_dict(), weights)
    assert _serve_with_model(world, tmp_path, str(weights)) == 2
    err = capsys.readouterr().err
    assert err.startswith("vitrieval serve: error: --model deit_tiny_patch16_224: this model (fingerprint ")
    assert "is not the one the index was built with" in err and err.count("\n") == 1
    JournalWriter(world["index_dir"]).close()


_FULL_DISK_SERVICE = """
import json, sys
from fastapi.testclient import TestClient
from vitrieval.index import Index
from vitrieval.serve import create_app

folder, image, fill = sys.argv[1:4]
auth = {"Authorization": "Bearer a-token-of-the-full-disk-test"}
app = create_app(Index.load(folder), write_token=auth["Authorization"][7:], compact_every=1000,
                 compact_interval_s=600)
client = TestClient(app)
data = open(image, "rb").read()
def add():
    r = client.post("/images", files={"file": ("new.png", data, "image/png")}, headers=auth)
    return {"status": r.status_code, "body": r.json(), "health": client.get("/healthz").json()}
out = {"full": add()}
import os; os.unlink(fill)
out["freed"] = add()
app.state.close()
out["count"] = len(Index.load(folder))
print(json.dumps(out))
"""


def test_a_write_on_a_full_disk_is_a_507_in_one_line_and_healthz_says_so_until_a_write_succeeds(world, tmp_path):
    mount = tmp_path / "full"
    script = tmp_path / "service.py"
    script.write_text(_FULL_DISK_SERVICE)
    folder = mount / "flat.idx"
    done = in_mount_namespace(f"{tmpfs_with(mount, world['index_dir'])} && {fill(mount)} && {PYTHON} {script} "
                              f"{folder} {world['images'][0]} {mount / 'fill'}")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    full, freed = out["full"], out["freed"]
    assert full["status"] == 507
    assert full["body"]["detail"].startswith("cannot write the index folder's uploads/") and \
        "No space left on device (ENOSPC); free some space" in full["body"]["detail"]
    assert str(folder) not in full["body"]["detail"]  # no server path to clients (the log has it)
    assert full["health"]["writable"] is False and full["health"]["write_error"] == full["body"]["detail"]
    assert full["health"]["count"] == 30  # the refused write had no effect
    assert freed["status"] == 201 and freed["body"]["id"] == 30
    assert freed["health"]["writable"] is True and freed["health"]["write_error"] is None
    assert out["count"] == 31
    assert "Traceback" not in done.stderr and \
        f"a write was refused by the disk: cannot write {folder}/uploads/" in done.stderr


def test_healthz_of_a_writing_service_says_writable_and_a_read_only_one_does_not(world, tmp_path):
    import shutil

    from fastapi.testclient import TestClient

    from vitrieval.index import Index

    folder = tmp_path / "w.idx"
    shutil.copytree(world["index_dir"], folder)
    app = create_app(Index.load(folder), write_token="a-token-of-the-healthz-test")
    try:
        health = TestClient(app).get("/healthz").json()
        assert health["writable"] is True and health["write_error"] is None
    finally:
        app.state.close()
    health = TestClient(create_app(Index.load(folder))).get("/healthz").json()
    assert health["writable"] is False and health["write_error"] is None


def test_the_request_timeout_flag_reaches_uvicorn_and_healthz(world, monkeypatch, capsys):
    import uvicorn
    from fastapi.testclient import TestClient
    from uvicorn.protocols.http.h11_impl import H11Protocol

    seen: dict = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.update(kw, app=app))
    assert main(["serve", "--index", str(world["index_dir"]), "--port", str(_free_port()),
                 "--request-timeout-s", "5"]) == 0
    assert issubclass(seen["http"], H11Protocol) and seen["http"].__name__.endswith("_5s")
    assert TestClient(seen["app"]).get("/healthz").json()["request_timeout_s"] == 5.0
    assert main(["serve", "--index", str(world["index_dir"]), "--port", str(_free_port()),
                 "--request-timeout-s", "0"]) == 2
    assert capsys.readouterr().err == "vitrieval serve: error: --request-timeout-s must be > 0, got 0.0\n"
