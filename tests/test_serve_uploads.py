"""Uploads cannot make the search service use unbounded memory (issue 14, case 1).

Small files that hold huge images (a 1.2 KB PNG of 2 x 400,000 pixels, 47 KB PNGs of 7000 x 7000) are refused or
decoded near the model's input size, by a bounded number of decodes at once. Memory is the peak resident set of
this process (the server runs in it through TestClient): ``/proc/self/clear_refs`` resets the high-water mark and
``VmHWM`` reads it, with a 2 ms ``/proc/self/statm`` sampler as a fallback where the reset is not allowed.
"""

from __future__ import annotations

import ctypes
import gc
import io
import re
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from index_world import COLOURS, make_images, make_model
from vitrieval.data.images import load_image
from vitrieval.index import Index
from vitrieval.serve import create_app, uploads

MB = 2 ** 20
PAGE = 4096


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The tiny test index of tests/test_serve.py (32 px model: the eval resize target is 35 px), built without
    fast decoding: its uploads follow the memory-bound rule these tests pin (a fast-decode index's JPEGs:
    ``test_a_fast_decode_index_decodes_a_jpeg_as_load_image`` and tests/test_index_fast_decode.py)."""
    root = tmp_path_factory.mktemp("uploads")
    model = make_model(root / "model")
    images = make_images(root / "images", COLOURS[:6])
    index = Index.build(model, root / "images", root / "cat.idx", factory="Flat", num_workers=0, progress=False,
                        fast_decode=False)
    return {"index": index, "images": images, "app": create_app(index)}


def encode(img: Image.Image, fmt: str = "PNG", **kwargs: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def upload(client: TestClient, data: bytes, name: str = "q.png", k: int = 3):
    return client.post(f"/search?k={k}", files={"file": (name, data, "application/octet-stream")})


# -- memory -----------------------------------------------------------------------------------------------------
def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def _hwm() -> int:
    with open("/proc/self/status") as f:
        return int(re.search(r"VmHWM:\s+(\d+)", f.read()).group(1)) * 1024


def _release_free_heap() -> None:
    """Collect earlier tests' garbage now and give the heap's free pages back to the OS (glibc ``malloc_trim``), so
    that an allocation inside the measured block needs new resident pages: otherwise a collection during the block
    can free memory that the measured decode then reuses without any growth, and the figure depends on which tests
    ran before (seen once in the full suite: 73 MB for a 137 MB decode)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass


@contextmanager
def peak_rss_growth() -> Iterator[dict]:
    """``out["growth"]``: the peak resident set inside the block minus the resident set at its start."""
    out: dict = {}
    _release_free_heap()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS
        exact = True
    except OSError:
        exact = False
    start = _rss()
    peak = [start]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.002):
            peak[0] = max(peak[0], _rss())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield out
    finally:
        done.set()
        sampler.join()
        top = max(peak[0], _rss(), _hwm() if exact else 0)
        out["growth"] = top - start


def test_peak_rss_growth_sees_a_decode() -> None:
    """The measurement itself: a 6000 x 6000 RGB decode (137 MB in Pillow) shows up."""
    data = encode(Image.new("RGB", (6000, 6000), (10, 200, 30)))
    with peak_rss_growth() as m:
        img = load_image(data)
        del img
    assert m["growth"] > 100 * MB, m


@pytest.mark.parametrize("size", [(2, 400_000), (2, 24_000_000)], ids=["2x400000", "2x24000000"])
def test_a_tiny_png_of_a_huge_thin_image_is_refused_without_the_memory(world: dict, size: tuple[int, int]) -> None:
    data = encode(Image.new("L", size, 128), optimize=True)
    assert len(data) < 100 * 1024  # 1.2 KB and 70 KB on the wire
    client = TestClient(world["app"])
    with peak_rss_growth() as m:
        r = upload(client, data)
    assert r.status_code == 422, r.text[:300]
    assert "aspect ratio" in r.json()["detail"] and "max_aspect_ratio" in r.json()["detail"]
    assert m["growth"] < 200 * MB, f"the server grew by {m['growth'] / MB:.0f} MB"


def test_eight_concurrent_7000px_pngs_grow_the_server_by_under_1_gb(world: dict) -> None:
    data = encode(Image.new("L", (7000, 7000), 200), optimize=True)
    assert len(data) < 100 * 1024  # ~47 KB each
    with TestClient(world["app"]) as client:
        assert upload(client, encode(Image.new("RGB", (48, 48), (1, 2, 3)))).status_code == 200  # warm
        with peak_rss_growth() as m, ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(lambda _: upload(client, data).status_code, range(8)))
    assert statuses == [200] * 8
    assert m["growth"] < 1024 * MB, f"the server grew by {m['growth'] / MB:.0f} MB"
    # a decode of 7000 x 7000 gray holds ~49 MB; at most max_concurrent_decodes (<= 4) of them at once
    assert m["growth"] < (world["app"].state.decoder.limits.max_concurrent_decodes * 49 + 150) * MB, m


# -- the limits, each named -------------------------------------------------------------------------------------
def test_extreme_aspect_ratios_are_refused_naming_the_limit(world: dict) -> None:
    client = TestClient(world["app"])
    r = upload(client, encode(Image.new("RGB", (210, 10), (200, 30, 30))))
    assert r.status_code == 422
    detail = r.json()["detail"]
    assert "210x10" in detail and "21:1" in detail and "limit of 20:1 (max_aspect_ratio)" in detail, detail
    assert upload(client, encode(Image.new("RGB", (200, 10), (200, 30, 30)))).status_code == 200  # 20:1 is fine
    assert upload(client, encode(Image.new("RGB", (10, 200), (200, 30, 30)))).status_code == 200
    strict = TestClient(create_app(world["index"], max_aspect_ratio=5))
    r = upload(strict, encode(Image.new("RGB", (10, 60), (200, 30, 30))))
    assert r.status_code == 422 and "limit of 5:1" in r.json()["detail"]
    assert strict.get("/healthz").json()["max_aspect_ratio"] == 5


def test_the_resize_target_is_what_the_eval_transform_does(world: dict) -> None:
    from vitrieval.data.transforms import eval_transform

    info = world["index"].info
    target = uploads.ResizeTarget.from_index_info(info)
    assert target == uploads.ResizeTarget(35)  # the 32 px model: 32 / crop_pct 0.9
    resize = eval_transform(info["data_config"], "shorter").transforms[0]
    for size in ((100, 20), (20, 100), (48, 48), (7, 131), (1000, 999), (3, 2)):
        assert resize(Image.new("RGB", size)).size == target.resized(*size), size
    square = uploads.ResizeTarget.from_index_info({**info, "preprocessing": {"resize": "square"}})
    assert square.square and square.resized(100, 20) == (32, 32)


def test_the_size_after_resizing_is_bounded_from_the_header(world: dict) -> None:
    # the 32 px model resizes the shorter side to 35 px: 100 x 20 -> 175 x 35 = 6125 pixels
    client = TestClient(create_app(world["index"], max_resized_pixels=5000))
    r = upload(client, encode(Image.new("RGB", (100, 20), (30, 160, 40))))
    assert r.status_code == 413
    detail = r.json()["detail"]
    assert "175x35 = 6125 pixels" in detail and "limit of 5000 (max_resized_pixels)" in detail, detail
    assert "shorter side of 35 px" in detail
    assert upload(client, encode(Image.new("RGB", (40, 20), (30, 160, 40)))).status_code == 200  # 70 x 35


def test_the_pixel_limit_is_413_naming_it(world: dict) -> None:
    client = TestClient(create_app(world["index"], max_upload_pixels=10_000))
    r = upload(client, encode(Image.new("RGB", (200, 200), (30, 160, 40))))
    assert r.status_code == 413
    assert "200x200 = 40000 pixels" in r.json()["detail"] and "(max_upload_pixels)" in r.json()["detail"]


def test_healthz_reports_every_limit(world: dict) -> None:
    body = TestClient(world["app"]).get("/healthz").json()
    assert body["max_upload_pixels"] == uploads.DEFAULT_MAX_UPLOAD_PIXELS == 50_000_000
    assert body["max_aspect_ratio"] == uploads.DEFAULT_MAX_ASPECT_RATIO == 20
    assert body["max_resized_pixels"] == uploads.DEFAULT_MAX_RESIZED_PIXELS
    assert body["decode_memory_budget"] == uploads.DEFAULT_DECODE_MEMORY_BUDGET
    assert 1 <= body["max_concurrent_decodes"] <= 4
    custom = TestClient(create_app(world["index"], max_concurrent_decodes=3, decode_memory_budget=10 * MB))
    body = custom.get("/healthz").json()
    assert (body["max_concurrent_decodes"], body["decode_memory_budget"]) == (3, 10 * MB)


@pytest.mark.parametrize("kwargs", [{"max_aspect_ratio": 0.5}, {"max_concurrent_decodes": 0},
                                    {"max_resized_pixels": 0}, {"decode_memory_budget": -1},
                                    {"max_upload_pixels": 0}])
def test_limits_that_cannot_work_are_refused(world: dict, kwargs: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs)).replace("max_upload_pixels", "max_pixels")):
        create_app(world["index"], **kwargs)


# -- reduced decodes ----------------------------------------------------------------------------------------------
def _instrument(monkeypatch: pytest.MonkeyPatch, index: Index) -> dict:
    """Record what the decoder produced and what the index was handed."""
    seen: dict = {"decoded": [], "handed": []}
    decode = uploads.decode_planned

    def recording_decode(img: Image.Image, plan: uploads.DecodePlan) -> Image.Image:
        out = decode(img, plan)
        seen["decoded"].append(img.size)  # after load(): the size the decoder really produced
        return out

    prepare = index.prepare  # the service hands each decoded image to Index.prepare (then batches the tensors)

    def recording_prepare(image: Image.Image) -> object:
        seen["handed"].append(image.size)
        return prepare(image)

    monkeypatch.setattr(uploads, "decode_planned", recording_decode)
    monkeypatch.setattr(index, "prepare", recording_prepare)
    return seen


def _cosine(index: Index, a: Image.Image, b: Image.Image) -> float:
    x = index.embed([a, b])
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    return float(x[0] @ x[1])


@pytest.mark.parametrize("fmt", ["JPEG", "MPO"])
def test_a_large_jpeg_is_decoded_with_draft(world: dict, monkeypatch: pytest.MonkeyPatch, fmt: str) -> None:
    query = world["images"][7]
    big = Image.open(query).convert("RGB").resize((4000, 3000), Image.Resampling.BICUBIC)
    big.paste(Image.open(query).convert("RGB").resize((3000, 3000), Image.Resampling.BICUBIC), (500, 0))
    extra = {"save_all": True, "append_images": [big.resize((400, 300))]} if fmt == "MPO" else {}
    data = encode(big, fmt, quality=90, **extra)  # MPO: a phone's photo with a second (preview) frame
    assert Image.open(io.BytesIO(data)).format == fmt
    index = world["index"]
    seen = _instrument(monkeypatch, index)
    r = upload(TestClient(create_app(index)), data, name="big.jpg")
    assert r.status_code == 200, r.text
    assert seen["decoded"] == [(500, 375)]  # libjpeg decoded at 1/8 scale: the 12 M pixel image never existed
    (handed,) = seen["handed"]
    assert handed == (100, 75)  # then reduced, keeping >= 2 x the 35 px resize target
    assert min(handed) >= uploads.REDUCING_GAP * 35
    assert r.json()["results"][0]["path"] == query.name
    monkeypatch.undo()
    reduced = uploads.DecodePool(uploads.UploadLimits(), uploads.ResizeTarget(35)).decode_now(data, "big.jpg")
    assert _cosine(index, reduced, load_image(data)) > 0.999  # same descriptor as a full decode


@pytest.mark.parametrize("progressive", [False, True])
def test_a_fast_decode_index_decodes_a_jpeg_as_load_image(progressive: bool) -> None:
    """``fast_decode`` target: the draft scale of ``dct_reduction`` and no reduce(), the pixels of
    ``load_image(min_side=35)``; other formats keep the memory-bound rule."""
    from vitrieval.data.images import dct_reduction

    rng = np.random.default_rng(0)
    big = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((1024, 768), Image.Resampling.BICUBIC)
    data = encode(big, "JPEG", quality=90, progressive=progressive)
    target = uploads.ResizeTarget(35, fast_decode=True)
    a = dct_reduction(768, 35)
    assert a == 8
    plan = uploads.plan_decode(uploads.open_upload(data, "q.jpg"), "q.jpg", uploads.UploadLimits(), target)
    assert plan.decode_size == (1024 // a, 768 // a) == (128, 96) and plan.reduce_factor == 1
    assert plan.cost == (1024 * 768 * 6 if progressive else 0) + 128 * 96 * 4 + 3 * 128 * 96 * 4
    old = uploads.plan_decode(uploads.open_upload(data, "q.jpg"), "q.jpg", uploads.UploadLimits(),
                              uploads.ResizeTarget(35))
    assert old.decode_size == (128, 96) and old.reduce_factor == 1  # 1/8 here too: 96 < 4 x 35
    smaller = encode(big.resize((512, 384)), "JPEG", quality=90, progressive=progressive)
    old = uploads.plan_decode(uploads.open_upload(smaller, "q.jpg"), "q.jpg", uploads.UploadLimits(),
                              uploads.ResizeTarget(35))
    new = uploads.plan_decode(uploads.open_upload(smaller, "q.jpg"), "q.jpg", uploads.UploadLimits(), target)
    assert (old.decode_size, old.reduce_factor) == ((128, 96), 1)  # the 2 x 35 rule: 1/4
    assert (new.decode_size, new.reduce_factor) == ((64, 48), 1)  # dct_reduction(384, 35) = 8
    pool = uploads.DecodePool(uploads.UploadLimits(), target)
    for blob in (data, smaller):
        decoded = pool.decode_now(blob, "q.jpg")
        assert np.array_equal(np.asarray(decoded), np.asarray(load_image(blob, min_side=35)))
    png = encode(big)
    plan = uploads.plan_decode(uploads.open_upload(png, "q.png"), "q.png", uploads.UploadLimits(), target)
    assert plan.decode_size == (1024, 768) and plan.reduce_factor == 10  # 768 // 70: the memory-bound rule


def test_other_formats_are_reduced_before_the_transform(world: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    query = world["images"][12]
    big = Image.open(query).convert("RGB").resize((1500, 1500), Image.Resampling.BICUBIC)
    data = encode(big)
    index = world["index"]
    seen = _instrument(monkeypatch, index)
    r = upload(TestClient(create_app(index)), data)
    assert r.status_code == 200 and r.json()["results"][0]["path"] == query.name
    assert seen["decoded"] == [(1500, 1500)] and seen["handed"] == [(72, 72)]  # reduce(21): 2 x 35 px kept
    monkeypatch.undo()
    reduced = uploads.DecodePool(uploads.UploadLimits(), uploads.ResizeTarget(35)).decode_now(data, "q.png")
    assert _cosine(index, reduced, load_image(data)) > 0.999


@pytest.mark.parametrize("mode", ["L", "P", "PA", "RGBA", "1", "I;16", "CMYK"])
def test_reduced_decodes_match_a_full_decode(mode: str) -> None:
    """Every mode a reduce needs to handle: the same colours (RGB, alpha on white, 16-bit scaled) as load_image."""
    base = Image.new("RGB", (400, 300), (30, 160, 40))
    base.paste((220, 30, 30), (100, 50, 300, 250))
    if mode == "I;16":
        img = Image.fromarray((np.asarray(base.convert("L"), dtype=np.uint16) * 200).astype(np.uint16))
        assert img.mode == "I;16"
    elif mode == "PA":
        img = base.convert("P").convert("PA")
    else:
        img = base.convert(mode)
    fmt = "TIFF" if mode in ("CMYK", "PA") else "PNG"
    data = encode(img, fmt)
    assert Image.open(io.BytesIO(data)).mode == mode
    pool = uploads.DecodePool(uploads.UploadLimits(), uploads.ResizeTarget(36))
    small = pool.decode_now(data, "q")
    full = load_image(data)
    assert small.mode == "RGB" and small.size == (100, 75)  # reduce(4)
    expected = np.asarray(full.reduce(4), dtype=np.int16)
    assert np.abs(np.asarray(small, dtype=np.int16) - expected).max() <= 2


def test_exif_orientation_survives_a_reduced_decode() -> None:
    img = Image.new("RGB", (800, 400), (250, 250, 250))
    img.paste((220, 30, 30), (0, 0, 100, 100))  # a red corner, top left in the file
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise for display
    data = encode(img, "JPEG", quality=95, exif=exif.tobytes())
    pool = uploads.DecodePool(uploads.UploadLimits(), uploads.ResizeTarget(36))
    small = pool.decode_now(data, "q.jpg")
    full = load_image(data)
    assert full.size == (400, 800) and small.size[0] < small.size[1]
    assert small.size[1] == 2 * small.size[0]
    w, _ = small.size
    r, g, b = small.getpixel((w - 2, 2))  # displayed: the red corner is now top right
    assert r > 180 and g < 80 and b < 80, (r, g, b)


def test_bad_uploads_still_say_what_is_wrong(world: dict) -> None:
    client = TestClient(world["app"])
    for data in (b"\x89PNG\r\n\x1a\n" + b"\x00" * 200, encode(Image.new("RGB", (300, 300)))[:300]):
        r = upload(client, data)
        assert r.status_code == 400 and "cannot read the uploaded image 'q.png'" in r.json()["detail"]


# -- concurrency ------------------------------------------------------------------------------------------------
def _count_in_flight(monkeypatch: pytest.MonkeyPatch, hold_s: float) -> dict:
    state = {"now": 0, "max": 0, "calls": 0}
    lock = threading.Lock()
    decode: Callable = uploads.decode_planned

    def counting_decode(img: Image.Image, plan: uploads.DecodePlan) -> Image.Image:
        with lock:
            state["now"] += 1
            state["calls"] += 1
            state["max"] = max(state["max"], state["now"])
        try:
            time.sleep(hold_s)
            return decode(img, plan)
        finally:
            with lock:
                state["now"] -= 1

    monkeypatch.setattr(uploads, "decode_planned", counting_decode)
    return state


def _concurrent_uploads(app: object, data: bytes, n: int) -> list[int]:
    with TestClient(app) as client:
        barrier = threading.Barrier(n)

        def one(_: int) -> int:
            barrier.wait()
            return upload(client, data).status_code

        with ThreadPoolExecutor(n) as pool:
            return list(pool.map(one, range(n)))


@pytest.mark.parametrize("workers", [1, 2])
def test_at_most_max_concurrent_decodes_run_at_once(world: dict, monkeypatch: pytest.MonkeyPatch,
                                                    workers: int) -> None:
    state = _count_in_flight(monkeypatch, hold_s=0.5)
    app = create_app(world["index"], max_concurrent_decodes=workers)
    data = world["images"][3].read_bytes()
    assert _concurrent_uploads(app, data, workers + 3) == [200] * (workers + 3)
    assert state["calls"] == workers + 3
    assert state["max"] == workers  # reached (the requests did overlap), never exceeded


def test_the_memory_budget_serialises_big_decodes(world: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    state = _count_in_flight(monkeypatch, hold_s=0.2)
    app = create_app(world["index"], max_concurrent_decodes=3, decode_memory_budget=1)  # each decode exceeds it
    assert _concurrent_uploads(app, world["images"][3].read_bytes(), 4) == [200] * 4
    assert state["max"] == 1


def test_waiting_uploads_do_not_hold_the_web_threads(world: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """While every decode slot is busy, thumbnails and /healthz still answer at once."""
    release = threading.Event()
    decode = uploads.decode_planned

    def slow_decode(img: Image.Image, plan: uploads.DecodePlan) -> Image.Image:
        entered.set()
        release.wait(120)
        return decode(img, plan)

    entered = threading.Event()
    monkeypatch.setattr(uploads, "decode_planned", slow_decode)
    app = create_app(world["index"], max_concurrent_decodes=1)
    data = world["images"][3].read_bytes()
    with TestClient(app) as client, ThreadPoolExecutor(3) as pool:
        pending = [pool.submit(upload, client, data) for _ in range(3)]
        assert entered.wait(60)  # the one decode slot is taken, the other uploads wait for it
        assert client.get("/healthz").status_code == 200
        assert client.get("/images/3?size=32").status_code == 200
        # both answered while every upload was still held in (or waiting for) the decode slot
        assert not any(f.done() for f in pending) and not release.is_set()
        release.set()
        assert [f.result().status_code for f in pending] == [200] * 3


def test_the_budget_grants_in_arrival_order() -> None:
    budget = uploads._Budget(10)
    order: list[int] = []
    with budget.reserve(10):  # all of it: the next ones queue
        threads = []
        for i, amount in enumerate((8, 1, 1)):
            def take(i: int = i, amount: int = amount) -> None:
                with budget.reserve(amount):
                    order.append(i)
                    time.sleep(0.05)
            t = threading.Thread(target=take)
            t.start()
            threads.append(t)
            time.sleep(0.05)  # arrive in this order
    for t in threads:
        t.join(5)
    assert order == [0, 1, 2] and budget.used == 0
