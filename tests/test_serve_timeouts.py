"""vitrieval.serve.timeouts: a client that never sends its request head, or trickles its body, is answered 408 and
disconnected, on a real uvicorn server; searches are answered meanwhile; an answer that takes long is not cut.

No wall-clock asserts: each case asserts what the client gets (408, a closed socket, a 200), with socket timeouts
far above the deadline only so that a regression fails instead of hanging.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest

from index_world import build_world
from vitrieval.serve import create_app
from vitrieval.serve.timeouts import BodyDeadline, uvicorn_options

DEADLINE_S = 1.0
WAIT_S = 30.0  # far above the deadline: a socket still open then is a failure, not a slow machine


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return build_world(tmp_path_factory.mktemp("timeouts"))


@contextmanager
def running(app, timeout_s: float = DEADLINE_S) -> Iterator[tuple[int, object]]:
    """``app`` served by uvicorn on a free loopback port in a thread, with the head deadline; (port, server)."""
    import uvicorn

    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off",
                            **uvicorn_options(timeout_s))
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(2000):
        if server.started:
            break
        time.sleep(0.01)
    assert server.started, "uvicorn did not start"
    try:
        yield server.servers[0].sockets[0].getsockname()[1], server
    finally:
        server.should_exit = True
        thread.join(WAIT_S)


@pytest.fixture(scope="module")
def server(world: dict):
    app = create_app(world["index"], max_upload_bytes=64 * 1024, request_timeout_s=DEADLINE_S)
    with running(app) as (port, srv):
        yield {"port": port, "server": srv, "world": world}
    app.state.close()


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.settimeout(WAIT_S)
    return sock


def _read_to_eof(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (a timeout here fails the test)."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def _search(port: int, world: dict) -> httpx.Response:
    data = world["images"][0].read_bytes()
    return httpx.post(f"http://127.0.0.1:{port}/search?k=3", files={"file": ("q.png", data, "image/png")},
                      timeout=WAIT_S)


def test_a_connection_that_sends_nothing_is_closed(server):
    with _connect(server["port"]) as sock:
        assert _read_to_eof(sock) == b""  # closed by the server, without a word: no request was begun


def test_a_request_head_cut_short_is_answered_408_and_closed(server):
    with _connect(server["port"]) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\nX-Slow: ")  # the head never ends
        answer = _read_to_eof(sock)
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert b"connection: close" in answer.lower()
    assert "request head did not arrive within 1 s" in json.loads(answer.split(b"\r\n\r\n", 1)[1])["detail"]


def test_a_trickled_body_is_answered_408_and_closed(server):
    png = server["world"]["images"][0].read_bytes()
    body = (b'--b0undary\r\nContent-Disposition: form-data; name="file"; filename="q.png"\r\n'
            b"Content-Type: image/png\r\n\r\n" + png + b"\r\n--b0undary--\r\n")
    with _connect(server["port"]) as sock:
        sock.sendall(b"POST /search?k=3 HTTP/1.1\r\nHost: test\r\nContent-Type: multipart/form-data; "
                     b"boundary=b0undary\r\nContent-Length: %d\r\n\r\n" % len(body) + body[:40])
        answer = _read_to_eof(sock)  # the rest of the body never comes
    head, _, payload = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 ") and b"connection: close" in head.lower()
    assert "request body did not arrive within 1 s" in json.loads(payload)["detail"]


def test_searches_are_answered_while_slow_clients_hold_connections_and_those_are_released(server):
    port, state = server["port"], server["server"].server_state
    idle = [_connect(port) for _ in range(40)]
    slow = [_connect(port) for _ in range(10)]
    try:
        for sock in slow:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: te")
        r = _search(port, server["world"])
        assert r.status_code == 200 and len(r.json()["results"]) == 3
        assert all(_read_to_eof(sock) == b"" for sock in idle)
        assert all(_read_to_eof(sock).startswith(b"HTTP/1.1 408 ") for sock in slow)
    finally:
        for sock in idle + slow:
            sock.close()
    for _ in range(3000):  # the server side forgets them too (connection_lost ran)
        if not state.connections:
            break
        time.sleep(0.01)
    assert not state.connections


def test_a_keep_alive_connection_serves_several_requests_within_the_deadline(server):
    with httpx.Client(base_url=f"http://127.0.0.1:{server['port']}", timeout=WAIT_S) as client:
        for _ in range(3):
            assert client.get("/healthz").json()["request_timeout_s"] == DEADLINE_S


def test_a_slow_answer_after_a_complete_body_is_not_cut():
    """The body deadline bounds the client's sending only: an endpoint busy for longer still answers."""
    async def slow_app(scope, receive, send):
        while (await receive()).get("more_body"):
            pass
        await asyncio.sleep(0.3)  # longer than the deadline below, after the body arrived
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"done", "more_body": False})

    messages = iter([{"type": "http.request", "body": b"ab", "more_body": True},
                     {"type": "http.request", "body": b"cd", "more_body": False}])
    sent: list[dict] = []

    async def receive():
        return next(messages)

    async def send(message):
        sent.append(message)

    asyncio.run(BodyDeadline(slow_app, 0.05)({"type": "http", "method": "POST"}, receive, send))
    assert sent[0]["status"] == 200 and sent[1]["body"] == b"done"


def _post_half_a_body(app, timeout_s: float) -> list[dict]:
    """``app`` behind :class:`BodyDeadline` (``timeout_s``) for a POST whose client sends two bytes of its body with
    ``more_body`` and then nothing; returns the messages sent back to the client."""
    first = True

    async def receive():
        nonlocal first
        if first:
            first = False
            return {"type": "http.request", "body": b"ab", "more_body": True}
        await asyncio.Event().wait()  # the client never sends the rest

    sent: list[dict] = []

    async def send(message):
        sent.append(message)

    asyncio.run(BodyDeadline(app, timeout_s)({"type": "http", "method": "POST"}, receive, send))
    return sent


def test_a_body_that_stops_coming_is_408_at_the_asgi_level_and_the_endpoint_sees_a_disconnect():
    seen: list[dict] = []

    async def reading_app(scope, receive, send):
        while True:
            message = await receive()
            seen.append(message)
            if message["type"] == "http.disconnect" or not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 400, "headers": []})
        await send({"type": "http.response.body", "body": b"cut short", "more_body": False})

    sent = _post_half_a_body(reading_app, 0.05)
    assert [m["type"] for m in seen] == ["http.request", "http.disconnect"]
    assert sent[0]["status"] == 408 and (b"connection", b"close") in sent[0]["headers"]
    assert len(sent) == 2 and b"did not arrive within 0.05 s" in sent[1]["body"]


@pytest.mark.parametrize("timeout_s", [0, -1])
def test_a_deadline_must_be_positive(timeout_s):
    with pytest.raises(ValueError, match="must be > 0"):
        uvicorn_options(timeout_s)


def test_an_endpoint_that_gives_up_without_answering_still_gets_its_client_a_408():
    async def silent_app(scope, receive, send):
        while (await receive())["type"] == "http.request":
            pass

    sent = _post_half_a_body(silent_app, 0.05)
    assert [m.get("status") for m in sent] == [408, None] and sent[1]["more_body"] is False
