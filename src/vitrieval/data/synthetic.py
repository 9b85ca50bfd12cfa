"""Synthetic "products": many object identities photographed from several viewpoints.

Used by the offline demo and the tests (nothing can be downloaded). Each identity is a procedurally generated
object (a packaging-like silhouette with a colour palette, bands, stripes, a logo glyph and "text" lines, all
drawn from a numpy ``Generator`` seeded by ``(seed, identity)``). Each *view* of it is a different photo: a
perspective warp (viewpoint + in-plane rotation), scale and position (object partly out of frame = crop), a
random cluttered background with distractor shapes, sometimes a small occluder in front, and a lighting change
(brightness, contrast, colour cast, a light gradient, gamma, sensor noise, slight blur). The view is drawn from
a generator seeded by ``(seed, identity, view)``, so identity ``k`` looks the same whatever the total number of
identities, and the dataset is reproducible byte for byte.

Raw pixels do not solve retrieval on it (see :func:`vitrieval.demo.baseline.raw_pixel_descriptors` and
``tests/test_synthetic.py``), but the identity information is all there: undoing the known warp brings a view back
onto its canonical render (the test oracles in ``tests/synthetic_oracles.py``).

Rendering is supersampled (drawn at 2x, box-downsampled) and the per-identity object is cached: one core renders
~600 64x64 images/s; writing them as PNG files (encode + file creation) roughly halves that on a typical disk.
"""

from __future__ import annotations

import io
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from vitrieval.progress import bars_on

GENERATOR_VERSION = 1
"""Bumped whenever the rendering changes, so stale generated folders are regenerated, not reused."""

_SUPERSAMPLE = 2
_ID_TAG = 0
_VIEW_TAG = 1

# --------------------------------------------------------------------------------------------------------------
# helpers


def _identity_rng(identity: int, seed: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, _ID_TAG, identity]))


def _view_rng(identity: int, view: int, seed: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, _VIEW_TAG, identity, view]))


def _hsv(h: float, s: float, v: float) -> tuple[int, int, int]:
    """HSV in [0, 1] to an RGB tuple of ints."""
    h = h % 1.0
    i = int(h * 6.0)
    f = h * 6.0 - i
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    r, g, b = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i % 6]
    return int(round(r * 255)), int(round(g * 255)), int(round(b * 255))


def _random_colour(rng: np.random.Generator, dark: bool = False) -> tuple[int, int, int]:
    if dark:
        return _hsv(rng.random(), rng.uniform(0.2, 0.9), rng.uniform(0.08, 0.35))
    return _hsv(rng.random(), rng.uniform(0.15, 1.0), rng.uniform(0.3, 1.0))


def _regular_polygon(cx: float, cy: float, r: float, n: int, rot: float, star: bool = False) -> list[tuple]:
    pts = []
    m = 2 * n if star else n
    for i in range(m):
        a = rot + 2 * math.pi * i / m
        rr = r * (0.45 if (star and i % 2) else 1.0)
        pts.append((cx + rr * math.cos(a), cy + rr * math.sin(a)))
    return pts


def _homography(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """3x3 ``H`` with ``dst ~ H @ src`` for four point pairs (``src``, ``dst``: 4x2)."""
    a = np.zeros((8, 8))
    b = np.zeros(8)
    for i, ((x, y), (u, v)) in enumerate(zip(src, dst)):
        a[2 * i] = [x, y, 1, 0, 0, 0, -u * x, -u * y]
        a[2 * i + 1] = [0, 0, 0, x, y, 1, -v * x, -v * y]
        b[2 * i], b[2 * i + 1] = u, v
    h = np.linalg.solve(a, b)
    return np.append(h, 1.0).reshape(3, 3)


def _pil_coeffs(h: np.ndarray) -> tuple[float, ...]:
    """PIL ``PERSPECTIVE`` data for a homography mapping *output* pixel coordinates to *input* ones."""
    h = h / h[2, 2]
    return tuple(float(x) for x in h.reshape(-1)[:8])


# --------------------------------------------------------------------------------------------------------------
# the object (one per identity)


@lru_cache(maxsize=256)
def _object_rgba(identity: int, seed: int, canvas: int) -> Image.Image:
    """The canonical object of ``identity`` as an RGBA image ``canvas`` pixels square (alpha = silhouette).

    Cached: a dataset renders all views of an identity in a row. Callers must not modify the returned image.
    """
    rng = _identity_rng(identity, seed)
    c = float(canvas)
    # palette: a body colour, two accents far from it in hue, a dark ink colour
    h0 = rng.random()
    body = _hsv(h0, rng.uniform(0.1, 0.95), rng.uniform(0.45, 1.0))
    accents = [
        _hsv(h0 + rng.uniform(0.2, 0.8), rng.uniform(0.5, 1.0), rng.uniform(0.4, 1.0)),
        _hsv(h0 + rng.uniform(0.2, 0.8), rng.uniform(0.3, 1.0), rng.uniform(0.3, 1.0)),
    ]
    ink = _random_colour(rng, dark=True) if rng.random() < 0.7 else (245, 245, 240)

    # silhouette: a packaging-like shape inside the canvas
    aspect = rng.uniform(0.55, 1.0)  # width / height (or height / width)
    if rng.random() < 0.3:
        w, h = 0.9 * c, 0.9 * c * aspect
    else:
        w, h = 0.9 * c * aspect, 0.9 * c
    x0, y0, x1, y1 = (c - w) / 2, (c - h) / 2, (c + w) / 2, (c + h) / 2
    mask = Image.new("L", (canvas, canvas), 0)
    md = ImageDraw.Draw(mask)
    kind = int(rng.integers(5))
    if kind == 0:
        md.rectangle((x0, y0, x1, y1), fill=255)
    elif kind == 1:
        md.rounded_rectangle((x0, y0, x1, y1), radius=rng.uniform(0.08, 0.3) * min(w, h), fill=255)
    elif kind == 2:
        md.ellipse((x0, y0, x1, y1), fill=255)
    elif kind == 3:  # can / jar: body plus elliptical lid
        lid = 0.12 * h
        md.rectangle((x0, y0 + lid / 2, x1, y1 - lid / 2), fill=255)
        md.ellipse((x0, y0, x1, y0 + lid), fill=255)
        md.ellipse((x0, y1 - lid, x1, y1), fill=255)
    else:  # bottle: narrow neck over a rounded body
        neck_w = w * rng.uniform(0.25, 0.45)
        shoulder = y0 + h * rng.uniform(0.22, 0.35)
        md.rounded_rectangle((x0, shoulder, x1, y1), radius=0.2 * w, fill=255)
        md.rectangle(((c - neck_w) / 2, y0, (c + neck_w) / 2, shoulder + 1), fill=255)
        md.polygon([(x0 + 0.1 * w, shoulder + 0.15 * h), ((c - neck_w) / 2, shoulder - 0.05 * h),
                    ((c + neck_w) / 2, shoulder - 0.05 * h), (x1 - 0.1 * w, shoulder + 0.15 * h)], fill=255)

    rgb = Image.new("RGB", (canvas, canvas), body)
    d = ImageDraw.Draw(rgb)
    # background pattern of the body: plain, stripes, checks or dots
    pattern = int(rng.integers(4))
    pcol = accents[1]
    if pattern == 1:
        n = int(rng.integers(3, 8))
        period = h / n
        vertical = rng.random() < 0.4
        for i in range(n):
            if vertical:
                d.rectangle((x0 + i * w / n, 0, x0 + (i + 0.5) * w / n, c), fill=pcol)
            else:
                d.rectangle((0, y0 + i * period, c, y0 + (i + 0.45) * period), fill=pcol)
    elif pattern == 2:
        n = int(rng.integers(3, 7))
        step = max(w, h) / n
        for i in range(n + 1):
            for j in range(n + 1):
                if (i + j) % 2 == 0:
                    d.rectangle((x0 + i * step, y0 + j * step, x0 + (i + 1) * step, y0 + (j + 1) * step), fill=pcol)
    elif pattern == 3:
        n = int(rng.integers(3, 6))
        step = max(w, h) / n
        r = step * rng.uniform(0.15, 0.3)
        for i in range(n + 1):
            for j in range(n + 1):
                cx, cy = x0 + (i + 0.5) * step, y0 + (j + 0.5) * step
                d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=pcol)

    # a label band in the first accent, at a random height
    band_y = y0 + h * rng.uniform(0.2, 0.65)
    band_h = h * rng.uniform(0.15, 0.35)
    if rng.random() < 0.8:
        d.rectangle((0, band_y, c, band_y + band_h), fill=accents[0])
    # the logo: a glyph (circle / polygon / star / ring / cross) at a random spot, in an accent colour
    n_logos = 1 + int(rng.random() < 0.5)
    for k in range(n_logos):
        lx = x0 + w * rng.uniform(0.3, 0.7)
        ly = y0 + h * rng.uniform(0.25, 0.75)
        lr = min(w, h) * rng.uniform(0.14, 0.28) * (0.7 if k else 1.0)
        lcol = accents[1] if k == 0 and pattern == 0 else _random_colour(rng)
        glyph = int(rng.integers(6))
        rot = rng.uniform(0, 2 * math.pi)
        if glyph == 0:
            d.ellipse((lx - lr, ly - lr, lx + lr, ly + lr), fill=lcol, outline=ink, width=max(1, canvas // 48))
        elif glyph == 1:
            d.polygon(_regular_polygon(lx, ly, lr, int(rng.integers(3, 7)), rot), fill=lcol)
        elif glyph == 2:
            d.polygon(_regular_polygon(lx, ly, lr, int(rng.integers(4, 7)), rot, star=True), fill=lcol)
        elif glyph == 3:
            d.ellipse((lx - lr, ly - lr, lx + lr, ly + lr), outline=lcol, width=max(2, int(lr * 0.35)))
        elif glyph == 4:
            t = lr * 0.35
            d.rectangle((lx - lr, ly - t, lx + lr, ly + t), fill=lcol)
            d.rectangle((lx - t, ly - lr, lx + t, ly + lr), fill=lcol)
        else:  # a letter-like mark: two bars and a bowl
            t = max(2.0, lr * 0.3)
            d.rectangle((lx - lr, ly - lr, lx - lr + t, ly + lr), fill=lcol)
            d.pieslice((lx - lr, ly - lr, lx + lr, ly + lr * 0.1), -90, 90, fill=lcol)
    # "text" lines in ink: a title bar and a few thin lines, left- or centre-aligned
    ty = y0 + h * rng.uniform(0.05, 0.15) if rng.random() < 0.5 else y0 + h * rng.uniform(0.75, 0.85)
    n_lines = int(rng.integers(1, 4))
    centred = rng.random() < 0.5
    for i in range(n_lines):
        lw = w * (rng.uniform(0.45, 0.8) if i == 0 else rng.uniform(0.2, 0.6))
        lh = h * (0.06 if i == 0 else 0.03)
        lx0 = (c - lw) / 2 if centred else x0 + 0.1 * w
        d.rectangle((lx0, ty, lx0 + lw, ty + lh), fill=ink)
        ty += lh + h * 0.03
    # an outline in ink on some objects
    if rng.random() < 0.4:
        inner = np.asarray(mask.filter(ImageFilter.MinFilter(5)), dtype=np.int16)
        edge = (np.asarray(mask, dtype=np.int16) - inner) > 0
        arr = np.asarray(rgb).copy()
        arr[edge] = ink
        rgb = Image.fromarray(arr)

    obj = rgb.convert("RGBA")
    obj.putalpha(mask)
    return obj


# --------------------------------------------------------------------------------------------------------------
# one view (one "photo") of an identity


@dataclass(frozen=True)
class _ViewParams:
    """Everything random about one photo. ``homography`` maps object canvas coords -> render canvas coords."""

    homography: np.ndarray
    object_canvas: int
    render_size: int


def _gradient(c0: np.ndarray, c1: np.ndarray, angle: float, r: int) -> Image.Image:
    """A linear two-colour gradient along direction ``angle``, ``r`` pixels square (upsampled from 2x2)."""
    d = np.array([math.cos(angle), math.sin(angle)])
    t = np.array([[-1, -1], [1, -1], [-1, 1], [1, 1]]) @ d * 0.5 + 0.5  # corners TL, TR, BL, BR
    corners = (c0 + (c1 - c0) * t[:, None]).reshape(2, 2, 3)
    small = Image.fromarray(np.clip(corners + 0.5, 0, 255).astype(np.uint8), "RGB")
    # a 2x2 image upsampled with a reducing box keeps the colours at the corners and interpolates between
    return small.resize((r, r), Image.Resampling.BILINEAR, box=(0.5, 0.5, 1.5, 1.5))


def _background(rng: np.random.Generator, r: int) -> Image.Image:
    """A cluttered background: a two-colour gradient plus distractor shapes and lines."""
    c0 = np.array(_random_colour(rng), dtype=np.float64)
    c1 = np.array(_random_colour(rng), dtype=np.float64)
    bg = _gradient(c0, c1, rng.uniform(0, 2 * math.pi), r)
    d = ImageDraw.Draw(bg)
    for _ in range(int(rng.integers(3, 9))):
        col = _random_colour(rng)
        x, y = rng.uniform(-0.2, 1.2, size=2) * r
        s = rng.uniform(0.1, 0.45) * r
        kind = int(rng.integers(4))
        if kind == 0:
            d.rectangle((x - s / 2, y - s / 3, x + s / 2, y + s / 3), fill=col)
        elif kind == 1:
            d.ellipse((x - s / 2, y - s / 2, x + s / 2, y + s / 2), fill=col)
        elif kind == 2:
            d.polygon(_regular_polygon(x, y, s / 2, int(rng.integers(3, 7)), rng.uniform(0, 6.3)), fill=col)
        else:
            x2, y2 = rng.uniform(0, 1, size=2) * r
            d.line((x, y, x2, y2), fill=col, width=max(1, int(rng.uniform(0.01, 0.05) * r)))
    return bg


def _sample_geometry(rng: np.random.Generator, canvas: int, r: int) -> np.ndarray:
    """Object canvas -> render canvas homography: scale, position, in-plane rotation and viewpoint tilt."""
    scale = rng.uniform(0.6, 1.15)  # object size relative to the frame (>1: zoomed-in crop)
    half = 0.5 * scale * r
    theta = float(np.clip(rng.normal(0.0, 0.35), -0.8, 0.8))
    centre = r / 2 + rng.uniform(-0.2, 0.2, size=2) * r
    corners = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=np.float64)
    # viewpoint: foreshorten one side (a tilt around a random axis) plus a little corner jitter
    tilt_axis = rng.uniform(0, 2 * math.pi)
    tilt = rng.uniform(0.0, 0.3)
    proj = corners @ np.array([math.cos(tilt_axis), math.sin(tilt_axis)])
    corners = corners * (1.0 - tilt * proj)[:, None]
    corners = corners + rng.normal(0.0, 0.05, size=(4, 2))
    rot = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    dst = centre + half * corners @ rot.T
    src = np.array([[0, 0], [canvas, 0], [canvas, canvas], [0, canvas]], dtype=np.float64)
    return _homography(src, dst)


_CHANNELS = np.arange(3)


@lru_cache(maxsize=8)
def _ramp(n: int) -> tuple[np.ndarray, np.ndarray]:
    ramp = np.linspace(-1.0, 1.0, n, dtype=np.float32)
    return ramp[None, :], ramp[:, None]


def _lighting(rng: np.random.Generator, img: Image.Image) -> Image.Image:
    """Brightness, contrast, colour cast and gamma (as per-channel lookup tables), then a linear light gradient
    across the scene and sensor noise."""
    n = img.width
    gain = rng.uniform(0.65, 1.3) * (1.0 + rng.normal(0.0, 0.1, size=3))  # brightness + colour cast
    contrast = rng.uniform(0.65, 1.25)
    gamma = rng.uniform(0.75, 1.35)
    mean = float(np.asarray(img).mean()) / 255.0 * float(gain.mean())
    levels = np.arange(256, dtype=np.float64) / 255.0
    lut = (levels[None, :] * gain[:, None] - mean) * contrast + mean  # (x * g - m) * c + m, per channel
    lut = (np.clip(lut, 0.0, 1.0) ** gamma * 255.0).astype(np.float32).T  # (256, 3)
    a = rng.uniform(0, 2 * math.pi)
    rx, ry = _ramp(n)
    strength = rng.uniform(0.0, 0.3)
    g = np.float32(1.0) + np.float32(strength * math.cos(a)) * rx + np.float32(strength * math.sin(a)) * ry
    x = lut[np.asarray(img), _CHANNELS]  # apply the per-channel tables: (n, n, 3) float32
    x *= g[..., None]  # light falls off across the scene
    sigma = rng.uniform(0.0, 0.04) * 255.0
    # sensor noise: uniform with standard deviation sigma (much cheaper to draw than Gaussian, looks the same)
    half_width = np.float32(sigma * math.sqrt(3.0))
    x += rng.random(size=x.shape, dtype=np.float32) * (2 * half_width) + (np.float32(0.5) - half_width)
    np.clip(x, 0, 255, out=x)
    return Image.fromarray(x.astype(np.uint8), "RGB")


def _compose_view(identity: int, view: int, size: int, seed: int) -> tuple[Image.Image, _ViewParams]:
    rng = _view_rng(identity, view, seed)
    r = size * _SUPERSAMPLE
    canvas = r
    obj = _object_rgba(identity, seed, canvas)
    bg = _background(rng, r)
    h = _sample_geometry(rng, canvas, r)
    # nearest-neighbour is enough: the 2x supersampling + box reduction anti-aliases (and it is 4x faster)
    warped = obj.transform((r, r), Image.Transform.PERSPECTIVE, _pil_coeffs(np.linalg.inv(h)),
                           resample=Image.Resampling.NEAREST)
    bg.paste(warped, (0, 0), warped)
    if rng.random() < 0.3:  # a small occluder in front of the object (a hand, a price tag, another item)
        d = ImageDraw.Draw(bg)
        x, y = rng.uniform(0.0, 1.0, size=2) * r
        s = rng.uniform(0.12, 0.25) * r
        col = _random_colour(rng)
        if rng.random() < 0.5:
            d.rectangle((x - s / 2, y - s / 2, x + s / 2, y + s / 2), fill=col)
        else:
            d.ellipse((x - s / 2, y - s / 2, x + s / 2, y + s / 2), fill=col)
    img = bg.reduce(_SUPERSAMPLE)
    blur = rng.uniform(0.0, 1.0)
    if blur > 0.6:
        img = img.filter(ImageFilter.GaussianBlur(radius=(blur - 0.6) * 1.5))
    out = _lighting(rng, img)
    return out, _ViewParams(homography=h, object_canvas=canvas, render_size=r)


def render_product(identity: int, view: int, size: int = 64, seed: int = 0) -> Image.Image:
    """Render photo number ``view`` of product ``identity`` as a ``size`` x ``size`` RGB image.

    Deterministic: the same ``(identity, view, size, seed)`` gives the same pixels, independently of any other
    identity or view. The product itself depends only on ``(identity, seed)`` (and ``size`` for rasterisation).
    """
    if identity < 0 or view < 0:
        raise ValueError(f"identity and view must be >= 0, got {identity}, {view}")
    if size < 8:
        raise ValueError(f"size must be >= 8, got {size}")
    return _compose_view(int(identity), int(view), int(size), int(seed))[0]


# --------------------------------------------------------------------------------------------------------------
# the folder dataset


def class_name(identity: int, num_classes: int) -> str:
    """Folder name of ``identity``: ``id`` + the id zero-padded to at least 5 digits (sortable = identity order)."""
    width = max(5, len(str(max(num_classes - 1, 0))))
    return f"id{identity:0{width}d}"


def _params(num_classes: int, images_per_class: int, size: int, seed: int) -> dict:
    return {"generator": "vitrieval.data.synthetic", "version": GENERATOR_VERSION, "num_classes": num_classes,
            "images_per_class": images_per_class, "size": size, "seed": seed}


def _write_class(job: tuple[str, int, int, int, int, bool]) -> int:
    """Render and write the missing views of one class folder; returns the number of images written."""
    cdir_s, identity, images_per_class, size, seed, reuse = job
    cdir = Path(cdir_s)
    cdir.mkdir(exist_ok=True)
    written = 0
    for v in range(images_per_class):
        target = cdir / f"{v:02d}.png"
        if reuse and target.is_file():
            continue
        buf = io.BytesIO()
        render_product(identity, v, size=size, seed=seed).save(buf, format="PNG", compress_level=1)
        tmp = cdir / f".{v:02d}.png.{os.getpid()}.tmp"
        with open(tmp, "wb") as fh:
            fh.write(buf.getbuffer())
        os.replace(tmp, target)  # never a truncated PNG under the final name
        written += 1
    return written


def generate_products(out_dir: str | Path, num_classes: int, images_per_class: int, size: int = 64,
                      seed: int = 0, progress: bool = True, workers: int = 1) -> Path:
    """Write a folder dataset of ``num_classes`` products x ``images_per_class`` photos and return ``out_dir``.

    Layout: ``out_dir/<class_name>/<view:02d>.png`` (identity ``k`` -> ``id{k:05d}``, so classes sorted by name
    are in identity order), plus ``out_dir/GENERATED.json`` with the parameters (``"complete": true`` once every
    class is written).

    Each PNG is written to a temporary name and ``os.replace``-d into place, so a crash never leaves a truncated
    image. A rerun skips class folders that already hold all their views, provided the folder was generated with
    the same ``size``, ``seed`` and generator version (otherwise everything is re-rendered). Class folders and
    views beyond the requested counts, left by an earlier larger run, are removed so readers see exactly the
    requested dataset. ``workers > 1`` renders classes in that many processes (the output is identical).
    """
    if num_classes < 1 or images_per_class < 1:
        raise ValueError("num_classes and images_per_class must be >= 1")
    if images_per_class > 100:
        raise ValueError("images_per_class must be <= 100 (views are named 00.png .. 99.png)")
    from vitrieval.io_utils import atomic_write_json

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta_path = out / "GENERATED.json"
    params = _params(num_classes, images_per_class, size, seed)
    ours = meta_path.exists()  # an earlier run of this generator wrote here: its leftovers may be pruned
    reuse = False
    if ours:
        try:
            old = json.loads(meta_path.read_text())
            reuse = all(old.get(k) == params[k] for k in ("generator", "version", "size", "seed"))
        except (OSError, ValueError):
            reuse = False
    atomic_write_json(meta_path, {**params, "complete": False})

    names = [class_name(k, num_classes) for k in range(num_classes)]
    view_names = [f"{v:02d}.png" for v in range(images_per_class)]
    jobs = []
    for k, name in enumerate(names):
        cdir = out / name
        if reuse and cdir.is_dir() and all((cdir / vn).is_file() for vn in view_names):
            continue
        jobs.append((str(cdir), k, images_per_class, size, seed, reuse))

    t0 = time.perf_counter()
    written = 0
    skipped = num_classes - len(jobs)

    def report(done: int) -> None:
        if progress and bars_on() and (done % 200 == 0 or done == len(jobs)):  # \r-lines on a terminal only
            dt = time.perf_counter() - t0
            rate = written / dt if dt > 0 else 0.0
            print(f"\rsynthetic products: {done}/{len(jobs)} classes rendered ({skipped} already present), "
                  f"{written} images, {rate:.0f} img/s", end="" if done < len(jobs) else "\n",
                  file=sys.stderr, flush=True)

    if workers > 1 and len(jobs) > 1:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(workers) as pool:
            for i, n in enumerate(pool.imap_unordered(_write_class, jobs, chunksize=8)):
                written += n
                report(i + 1)
    else:
        for i, job in enumerate(jobs):
            written += _write_class(job)
            report(i + 1)

    if ours:  # prune leftovers of an earlier, larger run (only this generator's naming patterns)
        keep = set(names)
        for p in out.iterdir():
            if p.is_dir() and p.name.startswith("id") and p.name[2:].isdigit() and p.name not in keep:
                for f in p.iterdir():
                    f.unlink()
                p.rmdir()
        for name in names:
            for f in (out / name).iterdir():
                stem = f.name[:-4] if f.name.endswith(".png") else ""
                if (stem.isdigit() and int(stem) >= images_per_class) or f.name.endswith(".tmp"):
                    f.unlink()

    atomic_write_json(meta_path, {**params, "complete": True})
    return out
