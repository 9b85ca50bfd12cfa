"""Writes over HTTP (vitrieval.serve.writes, .auth): POST /images and DELETE /images/{id} with a bearer token,
durable before they are answered, and refused (401 / 403 / 4xx) for every bad request without changing a thing."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from index_world import COLOURS, build_world, draw, good_images
from vitrieval.index import Index
from vitrieval.serve import create_app
from vitrieval.serve.auth import TOKEN_ENV, read_write_token

TOKEN = "s3cret-token-of-the-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return build_world(tmp_path_factory.mktemp("writes"))


@pytest.fixture()
def served(world: dict, tmp_path: Path):
    directory = tmp_path / "cat.idx"
    shutil.copytree(world["index_dir"], directory)
    app = create_app(Index.load(directory), write_token=TOKEN, max_upload_bytes=64 * 1024, compact_every=1000,
                     compact_interval_s=600)
    yield {"dir": directory, "app": app, "client": TestClient(app), "index": app.state.index}
    app.state.close()


def _png(colour=COLOURS[9], shape="cross", size=48) -> bytes:
    buf = io.BytesIO()
    draw(colour, shape, dark=True, size=size).save(buf, format="PNG")
    return buf.getvalue()


def _add(client, data: bytes, headers=AUTH, **fields):
    return client.post("/images", files={"file": ("new.png", data, "image/png")}, data=fields, headers=headers)


def _search(client, data: bytes, k: int = 5) -> list[dict]:
    r = client.post(f"/search?k={k}", files={"file": ("q.png", data, "image/png")})
    assert r.status_code == 200, r.text
    return r.json()["results"]


def test_an_added_image_is_found_by_the_next_search_and_survives_a_restart(served):
    client, data = served["client"], _png()
    r = _add(client, data, label="7")
    assert r.status_code == 201, r.text
    new_id = r.json()["id"]
    assert new_id == 30 and set(r.json()) == {"id"}
    top = _search(client, data)[0]
    assert top["id"] == new_id and top["score"] == pytest.approx(1.0, abs=1e-4) and top["label"] == 7
    stored = Path(served["index"].entry(new_id).path)
    assert stored.parent == served["dir"] / "uploads" and stored.read_bytes() == data
    thumb = client.get(f"/images/{new_id}?size=32")
    assert thumb.status_code == 200 and Image.open(io.BytesIO(thumb.content)).size == (32, 32)
    health = client.get("/healthz").json()
    assert (health["count"], health["pending_writes"], health["writable"]) == (31, 1, True)
    again = Index.load(served["dir"])  # a restart without compaction: replayed from the journal
    assert len(again) == 31 and again.entry(new_id).path == str(stored) and again.entry(new_id).label == 7


def test_a_deleted_image_is_gone_from_search_images_and_the_thumbnail_cache(served):
    client, index = served["client"], served["index"]
    query = good_images({"images": [Path(e.path) for e in index.entries()]})[3]
    victim = _search(client, query.read_bytes())[0]["id"]
    assert client.get(f"/images/{victim}").status_code == 200
    assert any(key[0] == victim for key in served["app"].state.thumbnails._items)
    added = _add(client, _png()).json()["id"]
    uploaded = Path(index.entry(added).path)
    assert client.delete(f"/images/{victim}", headers=AUTH).status_code == 204
    assert client.delete(f"/images/{added}", headers=AUTH).status_code == 204
    assert all(h["id"] != victim for h in _search(client, query.read_bytes(), k=30))
    assert client.get(f"/images/{victim}").status_code == 404
    assert not any(key[0] == victim for key in served["app"].state.thumbnails._items)
    assert Path(query).exists() and not uploaded.exists()  # the collection's file stays, the upload goes
    assert client.delete(f"/images/{victim}", headers=AUTH).status_code == 404
    assert client.get("/healthz").json()["count"] == 29
    served["app"].state.compactor.compact()
    health = client.get("/healthz").json()
    assert health["pending_writes"] == 0 and health["generation"] == 2
    assert len(Index.load(served["dir"])) == 29


@pytest.mark.parametrize("headers, status", [({}, 401), ({"Authorization": "Basic abc"}, 401),
                                             ({"Authorization": "Bearer "}, 401),
                                             ({"Authorization": "Bearer wrong-token-but-long-enough"}, 403),
                                             ({"Authorization": f"Bearer {TOKEN}x"}, 403)])
def test_writes_without_the_right_token_are_refused_and_change_nothing(served, headers, status):
    client = served["client"]
    r = _add(client, _png(), headers=headers)
    assert r.status_code == status, r.text
    if status == 401:
        assert r.headers["www-authenticate"] == "Bearer"
    assert client.delete("/images/3", headers=headers).status_code == status
    assert len(served["index"]) == 30 and served["index"].pending_writes == 0


def test_bad_uploads_are_refused_and_change_nothing(served):
    client = served["client"]
    assert _add(client, b"").status_code == 400  # empty
    assert _add(client, b"not an image at all").status_code == 400
    assert _add(client, b"\0" * (64 * 1024 + 1)).status_code == 413  # over max_upload_bytes
    assert _add(client, _png()[:60]).status_code == 400  # truncated
    for label in ("seven", "-1", "1000000000", "99999999999999999999"):
        r = _add(client, _png(), label=label)
        assert r.status_code == 422 and r.json()["detail"] == (f"label must be an integer from 0 to 999999999, "
                                                               f"got {label!r}"), label
    r = client.post("/images", files=[("file", ("new.png", _png(), "image/png")), ("label", (None, "1")),
                                      ("label", (None, "2"))], headers=AUTH)
    assert r.status_code == 422 and r.json()["detail"] == "send one label field, got 2"  # never a silent winner
    r = client.post("/images", files=[("file", ("new.png", _png(), "image/png")),
                                      ("file", ("two.png", _png(), "image/png"))], headers=AUTH)
    assert r.status_code == 400 and r.json()["detail"] == "Too many files. Maximum number of files is 1."
    tall = io.BytesIO()
    Image.new("RGB", (2, 400)).save(tall, format="PNG")
    assert _add(client, tall.getvalue()).status_code == 422  # aspect ratio over the limit of /search
    r = client.post("/images", content=b"raw", headers={**AUTH, "Content-Type": "image/png"})
    assert r.status_code == 415
    assert client.delete("/images/abc", headers=AUTH).status_code == 404
    assert client.delete("/images/" + "9" * 30, headers=AUTH).status_code == 404
    assert len(served["index"]) == 30 and served["index"].pending_writes == 0
    assert not (served["dir"] / "uploads").exists() or not any((served["dir"] / "uploads").iterdir())


def test_the_largest_label_is_taken(served):
    r = _add(served["client"], _png(), label="999999999")
    assert r.status_code == 201 and served["index"].entry(r.json()["id"]).label == 999_999_999


def test_without_a_token_the_service_is_read_only(world):
    client = TestClient(create_app(world["index"]))
    r = _add(client, _png())
    assert r.status_code == 403 and "read-only" in r.json()["detail"]
    assert client.delete("/images/1", headers=AUTH).status_code == 403
    health = client.get("/healthz").json()
    assert health["writable"] is False and health["count"] == 30


def test_the_write_token_comes_from_a_file_or_the_environment(tmp_path):
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    assert read_write_token(path, {}) == TOKEN
    assert read_write_token(None, {TOKEN_ENV: TOKEN}) == TOKEN
    assert read_write_token(None, {}) is None
    path.write_text("short\n")
    with pytest.raises(ValueError, match="at least 16 characters"):
        read_write_token(path, {})
    with pytest.raises(ValueError, match="cannot read it"):
        read_write_token(tmp_path / "missing", {})
