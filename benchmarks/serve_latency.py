"""Latency of the search service for one query on a 10,000-image index: p50 / p99, client and server side.

    python benchmarks/serve_latency.py                       # DeiT-Small at 224 px (random weights), Flat
    python benchmarks/serve_latency.py --model tiny          # the 32 px test model
    python benchmarks/serve_latency.py --concurrency 8       # 8 clients at once

The index: ``--real`` generated images (coloured shapes drawn with Pillow, 160 px) embedded by the model, plus
random unit descriptors up to ``--size`` entries (they point at the generated files, so thumbnails work), built
with :meth:`vitrieval.index.Index.from_descriptors` and ``--factory`` (default ``auto`` = exact below 100k).
The service (``vitrieval.serve.create_app``) runs under uvicorn on a loopback port; each request uploads one of
the generated images (PNG) to ``POST /search?k=10``, so a request is: multipart upload, decode, preprocessing,
one forward pass, faiss search, JSON. Client latency is the round trip seen by httpx; server latency is the
``took_ms`` the service reports (its handler, without HTTP parsing). The model has random weights (nothing can
be downloaded): a trained model of the same architecture takes the same time.
"""

from __future__ import annotations

import argparse
import socket
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

MODELS = {
    "deit_small": {"name": "deit_small_patch16_224", "image_size": 224, "patch_size": None},
    "tiny": {"name": "deit_tiny_patch16_224", "image_size": 32, "patch_size": 8},
}
COLOURS = [(220, 30, 30), (30, 160, 40), (40, 60, 220), (240, 200, 20), (150, 40, 180), (20, 180, 190),
           (250, 120, 10), (90, 90, 90), (255, 105, 180), (120, 70, 20)]


def make_images(root: Path, count: int, size: int = 160) -> list[Path]:
    """``count`` PNGs of coloured shapes (ellipse / rectangle / triangle / bars) on varied backgrounds."""
    from PIL import Image, ImageDraw

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        img = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(0, 256, 3)))
        d = ImageDraw.Draw(img)
        colour = COLOURS[i % len(COLOURS)]
        x0, y0 = (int(v) for v in rng.integers(5, size // 3, 2))
        x1, y1 = (int(v) for v in rng.integers(size // 2, size - 5, 2))
        shape = (i // len(COLOURS)) % 4
        if shape == 0:
            d.ellipse((x0, y0, x1, y1), fill=colour)
        elif shape == 1:
            d.rectangle((x0, y0, x1, y1), fill=colour)
        elif shape == 2:
            d.polygon([((x0 + x1) // 2, y0), (x1, y1), (x0, y1)], fill=colour)
        else:
            for x in range(x0, x1, 12):
                d.rectangle((x, y0, x + 5, y1), fill=colour)
        p = root / f"shape{i:05d}.png"
        img.save(p)
        paths.append(p)
    return paths


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(MODELS), default="deit_small")
    parser.add_argument("--size", type=int, default=10_000, help="index entries (default 10,000)")
    parser.add_argument("--real", type=int, default=200, help="of which embedded generated images (default 200)")
    parser.add_argument("--factory", default="auto")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    args = parser.parse_args(argv)

    import httpx
    import torch
    import uvicorn

    from vitrieval.config import ModelConfig
    from vitrieval.data.table import ImageTable, Record
    from vitrieval.embed import extract
    from vitrieval.index import Index
    from vitrieval.model import Encoder
    from vitrieval.serve import create_app

    if args.threads:
        torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="vitrieval-serve-latency-"))
    torch.manual_seed(0)
    spec = MODELS[args.model]
    model_dir = Encoder(ModelConfig(name=spec["name"], pretrained=False, image_size=spec["image_size"],
                                    patch_size=spec["patch_size"])).save(work / "model")
    t = time.perf_counter()
    images = make_images(work / "images", args.real)
    from vitrieval.model import load

    encoder = load(model_dir)
    ex = extract(encoder, ImageTable([Record(str(p), -1) for p in images]), batch_size=32, num_workers=0,
                 amp="off", progress=False)
    rng = np.random.default_rng(1)
    filler = rng.standard_normal((args.size - args.real, encoder.descriptor_dim)).astype(np.float32)
    filler /= np.linalg.norm(filler, axis=1, keepdims=True)
    descriptors = np.concatenate([ex.descriptors, filler])
    paths = [str(p) for p in images] + [str(images[i % len(images)]) for i in range(args.size - args.real)]
    index = Index.from_descriptors(model_dir, descriptors, paths, factory=args.factory, amp="off")
    print(f"index: {len(index):,} entries ({args.real} embedded images + {args.size - args.real:,} random "
          f"descriptors), {index.factory}, {index.descriptor_dim}-d, model {spec['name']} at {spec['image_size']} px; "
          f"prepared in {time.perf_counter() - t:.1f} s; torch threads {torch.get_num_threads()}", flush=True)

    app = create_app(index)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    payloads = [(p.name, p.read_bytes()) for p in images]
    client_ms: list[float] = []
    server_ms: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()

    def one(i: int, client: httpx.Client, record: bool = True) -> None:
        name, data = payloads[i % len(payloads)]
        started = time.perf_counter()
        r = client.post("/search?k=10", files={"file": (name, data, "image/png")})
        elapsed = (time.perf_counter() - started) * 1000
        with lock:
            if r.status_code != 200 or r.json()["results"][0]["path"] != name:
                errors.append(f"{i}: {r.status_code} {r.text[:120]}")
            elif record:
                client_ms.append(elapsed)
                server_ms.append(r.json()["took_ms"])

    clients = [httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) for _ in range(args.concurrency)]
    try:
        for i in range(args.warmup):
            one(i, clients[0], record=False)
        started = time.perf_counter()
        with ThreadPoolExecutor(args.concurrency) as pool:
            list(pool.map(lambda i: one(i, clients[i % args.concurrency]), range(args.requests)))
        wall = time.perf_counter() - started
    finally:
        for c in clients:
            c.close()
        server.should_exit = True
        thread.join(timeout=10)
    c50, c99 = np.percentile(client_ms, [50, 99]) if client_ms else (float("nan"),) * 2
    s50, s99 = np.percentile(server_ms, [50, 99]) if server_ms else (float("nan"),) * 2
    print(f"{args.requests} requests, concurrency {args.concurrency}, {len(errors)} errors, "
          f"{args.requests / wall:.1f} req/s")
    print("| latency | p50 ms | p99 ms |\n|---|---:|---:|")
    print(f"| client round trip | {c50:.1f} | {c99:.1f} |\n| server (took_ms) | {s50:.1f} | {s99:.1f} |")
    for e in errors[:5]:
        print("error:", e)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
