"""The search service (vitrieval.serve) through FastAPI's TestClient, and once in headless Chromium."""

from __future__ import annotations

import io
import re
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from index_world import COLOURS, make_images, make_model
from vitrieval.index import Index
from vitrieval.serve import create_app

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("serve")
    model = make_model(root / "model")
    images = make_images(root / "images", COLOURS[:6])
    index = Index.build(model, root / "images", root / "cat.idx", factory="Flat", num_workers=0, progress=False)
    app = create_app(index, max_upload_bytes=64 * 1024, max_k=50)
    return {"root": root, "images": images, "index": index, "client": TestClient(app), "app": app}


def png_bytes(path: Path) -> bytes:
    return path.read_bytes()


def upload(client: TestClient, data: bytes, k: int | str = 10, name: str = "q.png",
           content_type: str = "image/png"):
    return client.post(f"/search?k={k}", files={"file": (name, data, content_type)})


def test_healthz(served: dict) -> None:
    r = served["client"].get("/healthz")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok" and body["count"] == 30 and body["descriptor_dim"] == 192
    assert body["fingerprint"] == served["index"].fingerprint and body["max_k"] == 50
    assert body["max_upload_bytes"] == 64 * 1024 and body["factory"] == "Flat"


def test_search_returns_the_uploaded_image_first(served: dict) -> None:
    query = served["images"][7]
    r = upload(served["client"], png_bytes(query), k=5)
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"results", "took_ms"} and body["took_ms"] > 0
    assert len(body["results"]) == 5
    for hit in body["results"]:
        assert set(hit) == {"id", "score", "label", "class_name", "path", "thumbnail_url"}
        assert hit["thumbnail_url"] == f"/images/{hit['id']}" and "/" not in hit["path"]
    top = body["results"][0]
    assert top["path"] == query.name and top["score"] == pytest.approx(1.0, abs=1e-4) and top["label"] is None
    assert top["id"] == served["index"].search([query], k=1)[0][0].id
    scores = [h["score"] for h in body["results"]]
    assert scores == sorted(scores, reverse=True) and scores[1] < scores[0]
    jpeg = io.BytesIO()
    Image.open(query).save(jpeg, format="JPEG", quality=95)
    r = upload(served["client"], jpeg.getvalue(), k=1, name="q.jpg", content_type="image/jpeg")
    assert r.status_code == 200 and r.json()["results"][0]["path"] == query.name


def test_thumbnails_are_jpegs_of_the_right_size_and_cached(served: dict) -> None:
    client, cache = served["client"], served["app"].state.thumbnails
    r = client.get("/images/3?size=32")
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    img = Image.open(io.BytesIO(r.content))
    assert img.format == "JPEG" and max(img.size) == 32
    hits = cache.hits
    assert client.get("/images/3?size=32").content == r.content and cache.hits == hits + 1
    big = Image.open(io.BytesIO(client.get("/images/3").content))
    assert big.size == (48, 48)  # never enlarged beyond the original
    assert client.get("/images/3?size=8").status_code == 422
    assert client.get("/images/3?size=5000").status_code == 422


@pytest.mark.parametrize("url", ["/images/30", "/images/999999", "/images/-1", "/images/abc", "/images/1.5",
                                 "/images/../../etc/passwd", "/images/..%2F..%2Fetc%2Fpasswd",
                                 "/images/%2e%2e/%2e%2e/etc/passwd", "/images/%2Fetc%2Fpasswd", "/images/"])
def test_unknown_ids_and_traversal_are_404(served: dict, url: str) -> None:
    r = served["client"].get(url)
    assert r.status_code == 404, (url, r.status_code, r.text[:200])
    assert b"root:" not in r.content


def test_bad_uploads_are_refused_and_the_service_keeps_serving(served: dict) -> None:
    client = served["client"]
    good = png_bytes(served["images"][0])
    r = upload(client, b"\x89PNG\r\n\x1a\n" + b"\x00" * 200)
    assert r.status_code == 400 and "cannot read the uploaded image" in r.json()["detail"]
    r = upload(client, good[: len(good) // 2])  # truncated
    assert r.status_code == 400
    r = upload(client, b"")
    assert r.status_code == 400 and "empty" in r.json()["detail"]
    r = upload(client, b"hello", name="notes.txt", content_type="text/plain")
    assert r.status_code == 415 and "must be an image" in r.json()["detail"]
    r = client.post("/search", content=good, headers={"content-type": "image/png"})
    assert r.status_code == 415 and "multipart/form-data" in r.json()["detail"]
    r = client.post("/search", files={"other": ("q.png", good, "image/png")})
    assert r.status_code == 400 and "'file'" in r.json()["detail"]
    for k in (0, -3, 51, 10000, "abc"):
        assert upload(client, good, k=k).status_code == 422, k
    r = upload(client, good, k=50)
    assert r.status_code == 200 and len(r.json()["results"]) == 30  # k above the count: every image once
    assert client.get("/healthz").json()["count"] == 30


def test_uploads_over_the_limit_are_413(served: dict) -> None:
    client = served["client"]
    noise = Image.effect_noise((200, 200), 64).convert("RGB")
    buf = io.BytesIO()
    noise.save(buf, format="PNG")
    big = buf.getvalue()
    assert len(big) > 64 * 1024
    r = upload(client, big)
    assert r.status_code == 413 and "limit" in r.json()["detail"]
    # a declared Content-Length over the limit is refused before the body is read
    r = client.post("/search", content=b"x" * 10, headers={"content-type": "multipart/form-data; boundary=b",
                                                            "content-length": str(10 * 2 ** 20)})
    assert r.status_code == 413
    # no Content-Length (chunked): the bytes are counted while they stream in

    def chunks():
        for _ in range(100):
            yield b"y" * 4096

    r = client.post("/search", content=chunks(), headers={"content-type": "multipart/form-data; boundary=b"})
    assert r.status_code == 413
    assert upload(client, png_bytes(served["images"][1]), k=1).json()["results"][0]["path"] == served["images"][1].name


def test_page_is_self_contained(served: dict) -> None:
    r = served["client"].get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    page = r.text
    assert "<input id=\"file\" type=\"file\"" in page and "/search?k=" in page
    assert not re.search(r"<(script|link|img|iframe)[^>]+(src|href)\s*=\s*[\"']?(https?:)?//", page, re.I)
    assert "http://" not in page and "https://" not in page
    assert "default-src 'none'" in r.headers["content-security-policy"]
    assert served["client"].get("/docs").status_code == 200
    spec = served["client"].get("/openapi.json").json()
    assert "multipart/form-data" in spec["paths"]["/search"]["post"]["requestBody"]["content"]
    assert {"/search", "/images/{image_id}", "/healthz"} <= set(spec["paths"])


def test_create_app_from_a_folder_refuses_a_changed_model(served: dict, tmp_path: Path) -> None:
    from vitrieval.index import ModelMismatchError

    d = tmp_path / "copy.idx"
    shutil.copytree(served["root"] / "cat.idx", d)
    app = create_app(d)
    assert TestClient(app).get("/healthz").json()["count"] == 30
    other = make_model(tmp_path / "other", seed=3)
    with pytest.raises(ModelMismatchError):
        create_app(Index.load(d, checkpoint=other))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerThread:
    """uvicorn serving ``app`` on a free loopback port in a daemon thread (context manager)."""

    def __init__(self, app) -> None:
        import uvicorn

        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.mark.browser
@pytest.mark.skipif(not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
                    reason=f"needs {CHROMIUM} and {CHROMEDRIVER} (apt-get install chromium chromium-driver)")
def test_browser_upload_shows_result_thumbnails(served: dict) -> None:
    import os

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1200,900"):
        options.add_argument(arg)
    options.binary_location = str(CHROMIUM)
    query = served["images"][12]
    with ServerThread(served["app"]) as server:
        driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
        try:
            driver.get(server.url + "/")
            WebDriverWait(driver, 30).until(lambda d: "images indexed" in d.find_element(By.ID, "status").text)
            driver.find_element(By.CSS_SELECTOR, "input[type=file]").send_keys(str(query))
            WebDriverWait(driver, 60).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#results img.thumb")) > 0)
            loaded = WebDriverWait(driver, 30).until(lambda d: d.execute_script(
                "return [...document.querySelectorAll('#results img.thumb')]"
                ".filter(i => i.complete && i.naturalWidth > 0).length;"))
            assert loaded >= 1
            assert len(driver.find_elements(By.CSS_SELECTOR, "#results .hit")) == 12
            first = driver.find_element(By.CSS_SELECTOR, "#results .hit .name").text
            assert first == query.name
            assert "results in" in driver.find_element(By.ID, "message").text
            shot = os.environ.get("VITRIEVAL_SCREENSHOT")
            if shot:
                driver.save_screenshot(shot)
        finally:
            driver.quit()


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_the_api_pages_load_nothing_from_elsewhere(served: dict, page: str) -> None:
    """/docs (Swagger UI) and /redoc work offline: no remote URL in the page, and every script, style and icon it
    names is served by the app itself (fastapi-offline's copy), as is the OpenAPI document they render."""
    client = served["client"]
    r = client.get(page)
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]
    assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", r.text, re.I), re.findall(r"\S*//\S+", r.text)
    # every URL the page names: src / href attributes, ReDoc's spec-url, Swagger's `url: '...'`
    assets = re.findall(r"""(?:src|href|spec-url)=["']([^"']+)["']|\burl:\s*["']([^"']+)["']""", r.text)
    assets = [a or b for a, b in assets]
    assert "/openapi.json" in assets and any(a.endswith(".js") for a in assets), assets
    for asset in assets:
        assert asset.startswith("/"), asset
        got = client.get(asset)
        assert got.status_code == 200 and len(got.content) > 0, asset
    assert "/search" in client.get("/openapi.json").json()["paths"]


@pytest.mark.parametrize("url", ["/", "/healthz", "/images/1", "/images/1?size=64", "/docs", "/openapi.json"])
def test_head_is_answered_wherever_get_is_with_get_s_headers_and_no_body(served: dict, url: str) -> None:
    client = served["client"]
    get, head = client.get(url), client.head(url)
    assert get.status_code == head.status_code == 200
    assert head.content == b"" and head.headers["content-type"] == get.headers["content-type"]
    assert head.headers["content-length"] == str(len(get.content))


@pytest.mark.parametrize("url, status", [("/images/99999", 404), ("/nowhere", 404), ("/search", 405)])
def test_head_where_get_is_refused_gets_get_s_refusal(served: dict, url: str, status: int) -> None:
    head = served["client"].head(url)
    assert head.status_code == status == served["client"].get(url).status_code and head.content == b""
