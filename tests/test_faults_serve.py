"""Issue 14, case 11 (serve): an over-long id is a 404, a client that disconnects mid-upload leaves no ERROR
traceback in the log, a port in use is refused before anything is printed or loaded."""

from __future__ import annotations

import asyncio
import logging
import socket

import pytest
from fastapi.testclient import TestClient

from index_world import build_world
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
