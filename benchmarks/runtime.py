"""Benchmark: the model's runtimes (torch eager, torch.compile, onnxruntime), serving latency, install sizes.

On the same decoded images and pre-processed pixels, for a DeiT-S 224 with random weights (what issue 16 measured;
``--model`` for another):

- **throughput**, img/s at batch 1 and batch 32 of ``Encoder.embed`` (torch eager), ``torch.compile(encoder)``
  and :class:`vitrieval.runtime.onnx_embedder.OnnxEmbedder` (the graph of ``vitrieval export``), each after a
  warm-up, with the ratio to torch eager and the max abs difference of the descriptors to eager's;
- **serving**: p50 / p99 of ``POST /search`` (FastAPI ``TestClient``, upload decode + embed + search) per runtime,
  over an index of ``--index-images`` generated products;
- **install size**: the installed files (``importlib.metadata`` file lists of this environment) of the serve
  requirements (``requirements-serve.txt`` and what they require) against every package of the full install.

    python benchmarks/runtime.py                      # DeiT-S 224, 32 images (a few minutes on 2 cores)
    python benchmarks/runtime.py --images 64 --threads 4

Threads: torch and onnxruntime both get ``--threads`` intra-op threads (default: all cores).
"""

from __future__ import annotations

import argparse
import io
import os
import re
import statistics
import tempfile
import time
from importlib import metadata
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _products(n: int, size: int) -> list:
    from PIL import Image

    from vitrieval.data.images import load_image
    from vitrieval.data.synthetic import render_product

    out = []
    for i in range(n):
        buf = io.BytesIO()
        render_product(i % 50, i // 50, size=size).resize((size + 40 * (i % 3), size), Image.Resampling.BICUBIC) \
            .save(buf, format="JPEG", quality=90)
        out.append(load_image(buf.getvalue()))
    return out


def _rate(fn, pixels: np.ndarray, batch: int, repeats: int = 1) -> tuple[float, np.ndarray]:
    fn(pixels[:batch])  # warm-up (and compilation)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        out = [fn(pixels[i:i + batch]) for i in range(0, len(pixels), batch)]
        best = min(best, time.perf_counter() - started)
    return len(pixels) / best, np.concatenate(out)


def throughput(encoder, onnx_path: Path, images: list, threads: int) -> list[tuple]:
    import torch

    from vitrieval.data.transforms import eval_transform
    from vitrieval.runtime.onnx_embedder import OnnxEmbedder

    tf = eval_transform(encoder.data_config)
    pixels = torch.stack([tf(im) for im in images])
    compiled = torch.compile(encoder)
    embedder = OnnxEmbedder(onnx_path, threads=threads)

    def eager(x: torch.Tensor) -> np.ndarray:
        return encoder.embed(x, batch_size=len(x), amp="off")

    def compiled_fn(x: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return encoder.reduce(compiled(x)).numpy()

    def onnx_fn(x: torch.Tensor) -> np.ndarray:
        return embedder.run(x.numpy())

    rows = []
    for batch in (1, 32):
        base, ref = _rate(eager, pixels, batch)
        rows.append(("torch eager", batch, base, 1.0, 0.0))
        for name, fn in (("torch.compile", compiled_fn), ("onnxruntime", onnx_fn)):
            rate, out = _rate(fn, pixels, batch)
            rows.append((name, batch, rate, rate / base, float(np.abs(out - ref).max())))
    return rows


def serving(index_dir: Path, images: list, queries: int) -> list[tuple]:
    from fastapi.testclient import TestClient

    from vitrieval.serve.app import create_app

    blobs = []
    for im in images[:queries]:
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=90)
        blobs.append(buf.getvalue())
    rows = []
    for runtime in ("torch", "onnx"):
        client = TestClient(create_app(index_dir, runtime=runtime))
        client.post("/search?k=10", files={"file": ("q.jpg", blobs[0], "image/jpeg")})  # warm-up
        times = []
        for blob in blobs:
            started = time.perf_counter()
            r = client.post("/search?k=10", files={"file": ("q.jpg", blob, "image/jpeg")})
            times.append((time.perf_counter() - started) * 1000)
            assert r.status_code == 200, r.text
        times.sort()
        p99 = times[min(len(times) - 1, int(round(0.99 * (len(times) - 1))))]
        rows.append((runtime, len(times), statistics.median(times), p99))
    return rows


def _name(requirement: str) -> str:
    return re.split(r"[\s<>=!~;\[(]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _size(dist: metadata.Distribution) -> int:
    total = 0
    for f in dist.files or ():
        path = Path(dist.locate_file(f))
        if path.is_file():
            total += path.stat().st_size
    return total


def install_sizes() -> tuple[int, int, list[str]]:
    """Bytes of the serve closure (requirements-serve.txt + what they require) and of every installed package."""
    dists = {_name(d.metadata["Name"]): d for d in metadata.distributions()}
    todo = [_name(line) for line in (ROOT / "requirements-serve.txt").read_text().splitlines()
            if line.strip() and not line.startswith("#")]
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen or name not in dists:
            continue
        seen.add(name)
        for req in dists[name].requires or ():
            if "extra ==" not in req:
                todo.append(_name(req))
    serve = sum(_size(dists[n]) for n in seen)
    full = sum(_size(d) for d in dists.values())
    return serve, full, sorted(seen)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="deit_small_patch16_224")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--images", type=int, default=32, help="images per throughput run (default 32)")
    parser.add_argument("--queries", type=int, default=20, help="search requests per runtime (default 20)")
    parser.add_argument("--index-images", type=int, default=32)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()

    import torch

    from vitrieval.config import ModelConfig
    from vitrieval.index import Index
    from vitrieval.model import Encoder
    from vitrieval.onnx_export import export_onnx

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"# {args.model} @ {args.image_size}, random weights, {args.threads} threads, {os.cpu_count()} cores; "
          f"{args.images} images per run")
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Encoder(ModelConfig(name=args.model, pretrained=False, image_size=args.image_size)).save(
            Path(tmp) / "model")
        from vitrieval.model import load

        encoder = load(model_dir)
        started = time.perf_counter()
        report = export_onnx(encoder, model_dir / "model.onnx")
        print(f"export: {time.perf_counter() - started:.1f} s, parity max abs diff {report.max_abs_diff:.2e}")
        images = _products(max(args.images, args.index_images, args.queries), args.image_size + 32)
        print("\n| runtime | batch | img/s | × torch eager | max abs diff |\n|---|---|---|---|---|")
        for name, batch, rate, ratio, diff in throughput(encoder, model_dir / "model.onnx", images[:args.images],
                                                         args.threads):
            print(f"| {name} | {batch} | {rate:.1f} | {ratio:.2f} | {diff:.1e} |")
        folder = Path(tmp) / "images"
        folder.mkdir()
        for i, im in enumerate(images[:args.index_images]):
            im.save(folder / f"{i:04d}.jpg", quality=90)
        Index.build(model_dir, folder, Path(tmp) / "idx", factory="Flat", num_workers=0, progress=False)
        print("\n| serving runtime | requests | p50 ms | p99 ms |\n|---|---|---|---|")
        for runtime, n, p50, p99 in serving(Path(tmp) / "idx", images[-args.queries:], args.queries):
            print(f"| {runtime} | {n} | {p50:.1f} | {p99:.1f} |")
    serve, full, names = install_sizes()
    print(f"\ninstall size (installed files): serve {serve / 2 ** 20:.0f} MiB ({len(names)} packages: "
          f"{', '.join(names)}) vs full environment {full / 2 ** 20:.0f} MiB ({serve / full:.1%})")


if __name__ == "__main__":
    main()
