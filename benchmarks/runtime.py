"""Benchmark: the model's runtimes (torch eager, torch.compile, onnxruntime), serving latency, install sizes.

On the same decoded images and pre-processed pixels, for a DeiT-S 224 with random weights (what issue 16 measured;
``--model`` for another):

- **throughput** at batch 1 and batch 32 of ``Encoder.embed`` (torch eager), ``torch.compile(encoder)`` and
  :class:`vitrieval.runtime.onnx_embedder.OnnxEmbedder` (the graph of ``vitrieval export``): img/s of wall
  clock and images per CPU-second of this process (steadier on a shared machine), each after a warm-up, best of
  ``--rounds`` rounds in which the runtimes take turns, with the ratio to torch eager and the max abs difference
  of the descriptors to eager's;
- **serving**: p50 / p99 (and median CPU time) of ``POST /search`` (FastAPI ``TestClient``: upload decode, embed,
  search) per runtime, the runtimes taking turns query by query, over an index of ``--index-images`` products;
- **install size**: the installed files (``importlib.metadata`` file lists of this environment) of the serve
  requirements (``requirements-serve.txt`` and what they require) against every package of the full install.

    python benchmarks/runtime.py                      # DeiT-S 224, 32 images, 1 thread
    python benchmarks/runtime.py --threads 2 --no-compile

Threads: torch and onnxruntime both get ``--threads`` intra-op threads (default 1).
"""

from __future__ import annotations

import argparse
import io
import os
import re
import statistics
import tempfile
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
Timing = tuple[float, float, np.ndarray]
"""Wall seconds, CPU seconds, descriptors."""


def _products(n: int, size: int) -> list:
    """``n`` generated products of a few aspect ratios, JPEG-encoded and decoded again."""
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


def _timed(fn: Callable, pixels, batch: int) -> Timing:
    wall, cpu = time.perf_counter(), time.process_time()
    out = np.concatenate([fn(pixels[i:i + batch]) for i in range(0, len(pixels), batch)])
    return time.perf_counter() - wall, time.process_time() - cpu, out


def _best_of(fns: dict[str, Callable], pixels, batch: int, rounds: int) -> dict[str, Timing]:
    """Each runtime's best wall and CPU time over ``rounds`` rounds, the runtimes interleaved in every round (the
    load of a shared machine falls on all of them alike), after one warm-up batch each."""
    for fn in fns.values():
        fn(pixels[:batch])  # warm-up (torch.compile compiles here)
    best: dict[str, Timing] = {}
    for _ in range(rounds):
        for name, fn in fns.items():
            wall, cpu, out = _timed(fn, pixels, batch)
            if name in best:
                wall, cpu = min(wall, best[name][0]), min(cpu, best[name][1])
            best[name] = (wall, cpu, out)
    return best


def throughput(encoder, onnx_path: Path, images: list, threads: int, rounds: int, compile_: bool) -> list[tuple]:
    import torch

    from vitrieval.data.transforms import eval_transform
    from vitrieval.runtime.onnx_embedder import OnnxEmbedder

    pixels = torch.stack([eval_transform(encoder.data_config)(im) for im in images])
    embedder = OnnxEmbedder(onnx_path, threads=threads)
    fns: dict[str, Callable] = {"torch eager": lambda x: encoder.embed(x, batch_size=len(x), amp="off"),
                                "onnxruntime": lambda x: embedder.run(x.numpy())}
    if compile_:
        compiled = torch.compile(encoder)

        def compiled_fn(x: torch.Tensor) -> np.ndarray:
            with torch.no_grad():
                return encoder.reduce(compiled(x)).numpy()

        fns["torch.compile"] = compiled_fn
    rows = []
    for batch in (1, 32):
        best = _best_of(fns, pixels, batch, rounds)
        base_wall, base_cpu, ref = best["torch eager"]
        for name, (wall, cpu, out) in best.items():
            rows.append((name, batch, len(pixels) / wall, base_wall / wall, len(pixels) / cpu, base_cpu / cpu,
                         float(np.abs(out - ref).max())))
    return rows


def serving(index_dir: Path, images: list, threads: int) -> list[tuple]:
    from fastapi.testclient import TestClient

    from vitrieval.index import Index
    from vitrieval.serve.app import create_app

    blobs = []
    for im in images:
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=90)
        blobs.append(buf.getvalue())
    clients = {runtime: TestClient(create_app(Index.load(index_dir, runtime=runtime, threads=threads)))
               for runtime in ("torch", "onnx")}
    wall_ms: dict[str, list[float]] = {runtime: [] for runtime in clients}
    cpu_ms: dict[str, list[float]] = {runtime: [] for runtime in clients}
    for client in clients.values():
        client.post("/search?k=10", files={"file": ("q.jpg", blobs[0], "image/jpeg")})  # warm-up
    for blob in blobs:  # the runtimes take turns, query by query
        for runtime, client in clients.items():
            wall, cpu = time.perf_counter(), time.process_time()
            r = client.post("/search?k=10", files={"file": ("q.jpg", blob, "image/jpeg")})
            wall_ms[runtime].append((time.perf_counter() - wall) * 1000)
            cpu_ms[runtime].append((time.process_time() - cpu) * 1000)
            assert r.status_code == 200, r.text
    rows = []
    for runtime, ms in wall_ms.items():
        ms.sort()
        p99 = ms[min(len(ms) - 1, int(round(0.99 * (len(ms) - 1))))]
        rows.append((runtime, len(ms), statistics.median(ms), p99, statistics.median(cpu_ms[runtime])))
    return rows


def _name(requirement: str) -> str:
    return re.split(r"[\s<>=!~;\[(]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _size(dist: metadata.Distribution) -> int:
    return sum(path.stat().st_size for f in dist.files or () if (path := Path(dist.locate_file(f))).is_file())


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
        todo.extend(_name(req) for req in dists[name].requires or () if "extra ==" not in req)
    return sum(_size(dists[n]) for n in seen), sum(_size(d) for d in dists.values()), sorted(seen)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="deit_small_patch16_224")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--images", type=int, default=32, help="images per throughput pass (default 32)")
    parser.add_argument("--queries", type=int, default=20, help="search requests per runtime (default 20)")
    parser.add_argument("--index-images", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1,
                        help="intra-op threads of torch and onnxruntime (default 1: steadiest on a shared machine)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds, best kept (default 3)")
    parser.add_argument("--no-compile", dest="compile", action="store_false",
                        help="skip torch.compile (its compilation takes minutes on a small CPU)")
    args = parser.parse_args()

    import torch

    from vitrieval.config import ModelConfig
    from vitrieval.index import Index
    from vitrieval.model import Encoder, load
    from vitrieval.onnx_export import export_onnx

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"# {args.model} @ {args.image_size}, random weights, {args.threads} thread(s), {os.cpu_count()} cores "
          f"(load average {os.getloadavg()[0]:.1f}); {args.images} images per pass, best of {args.rounds}")
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Encoder(ModelConfig(name=args.model, pretrained=False, image_size=args.image_size)).save(
            Path(tmp) / "model")
        encoder = load(model_dir)
        started = time.perf_counter()
        report = export_onnx(encoder, model_dir / "model.onnx")
        print(f"export: {time.perf_counter() - started:.1f} s, parity max abs diff {report.max_abs_diff:.2e}")
        images = _products(max(args.images, args.index_images + args.queries), args.image_size + 32)
        print("\n| runtime | batch | img/s (wall) | × torch eager | img per CPU-s | × torch eager | max abs diff |"
              "\n|---|---|---|---|---|---|---|")
        for name, batch, rate, ratio, cpu_rate, cpu_ratio, diff in throughput(
                encoder, model_dir / "model.onnx", images[:args.images], args.threads, args.rounds, args.compile):
            print(f"| {name} | {batch} | {rate:.1f} | {ratio:.2f} | {cpu_rate:.1f} | {cpu_ratio:.2f} | {diff:.1e} |")
        folder = Path(tmp) / "images"
        folder.mkdir()
        for i, im in enumerate(images[:args.index_images]):
            im.save(folder / f"{i:04d}.jpg", quality=90)
        Index.build(model_dir, folder, Path(tmp) / "idx", factory="Flat", num_workers=0, progress=False)
        print("\n| serving runtime | requests | p50 ms | p99 ms | CPU ms per request (median) |\n|---|---|---|---|---|")
        queries = images[args.index_images:args.index_images + args.queries]
        for runtime, n, p50, p99, cpu_ms in serving(Path(tmp) / "idx", queries, args.threads):
            print(f"| {runtime} | {n} | {p50:.1f} | {p99:.1f} | {cpu_ms:.1f} |")
    serve, full, names = install_sizes()
    print(f"\ninstall size (installed files): serve {serve / 2 ** 20:.0f} MiB ({len(names)} packages: "
          f"{', '.join(names)}) vs full environment {full / 2 ** 20:.0f} MiB ({serve / full:.1%})")


if __name__ == "__main__":
    main()
