"""Throughput and latency of the search service under concurrent clients, batching on and off; add rate and time
to a durable acknowledgement of ``POST /images``.

    python benchmarks/serve_latency.py                                 # DeiT-Small at 224 px, 10k index, 1,8,32
    python benchmarks/serve_latency.py --model deit_tiny --concurrency 1,8 --requests 120
    python benchmarks/serve_latency.py --max-batch 1,8,16 --max-wait-ms 0,2,5   # to choose the defaults
    python benchmarks/serve_latency.py --model deit_tiny --runtime torch,onnx  # onnxruntime too (exported here)
    python benchmarks/serve_latency.py --runtime torch,torch+bf16         # + queries under bf16 autocast

The index: ``--real`` generated images (coloured shapes drawn with Pillow, 160 px) embedded by the model, plus
random unit descriptors up to ``--size`` entries (they point at the generated files, so thumbnails work), built
with :meth:`vitrieval.index.Index.from_descriptors` and ``--factory`` (default ``auto`` = exact below 100k).
For each ``--max-batch`` x ``--max-wait-ms`` setting (``max_batch=1`` is the unbatched service: each request its
own forward pass) and each ``--concurrency``, the service (``vitrieval.serve.create_app``) runs under uvicorn on a
loopback port and ``--requests`` uploads of the generated images (PNG) go to ``POST /search?k=10`` from that many
client threads: multipart upload, bounded decode, preprocessing, a (batched) forward pass, faiss search, JSON.
Throughput is requests / wall time; p50 / p99 are client round trips (one keep-alive ``http.client`` connection
per client thread, request bodies encoded beforehand, so the load generator takes little of the CPU). The clients
run in a process of their own (as remote clients would: they share the cores but not the server's interpreter lock;
``--client-threads`` puts them in the server's process). The table gives each setting's throughput as a ratio to
the unbatched service at the same concurrency (measured in the same run), the issue's no-starvation bound
p99 <= 1.3 x concurrency / throughput, and the ceiling: the runtime's own forward pass on prepared inputs, alone
(``Index.embed_prepared``, img/s at batch 1 and at ``--ceiling-batch``), measured in the same run, so a row's
"x model" says how much of the model's speed the service delivers. Then ``--adds`` images are added through
``POST /images`` (write token on): images per second and the time to the durable 201 (upload, decode, embed,
fsync of the stored file and of the journal record). The model has random weights (nothing can be downloaded):
a trained model of the same architecture takes the same time.
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
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from fastapi import FastAPI

MODELS = {
    "deit_small": {"name": "deit_small_patch16_224", "image_size": 224, "patch_size": None},
    "deit_tiny": {"name": "deit_tiny_patch16_224", "image_size": 224, "patch_size": None},
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


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


class Served:
    """An app under uvicorn on a free loopback port, in a daemon thread (context manager)."""

    def __init__(self, app: FastAPI) -> None:
        import uvicorn

        self.app = app
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Served:
        self.thread.start()
        while not self.server.started:
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.app.state.close()


def multipart_body(name: str, data: bytes, boundary: str = "vitrieval-bench-boundary") -> tuple[bytes, str]:
    """The ``multipart/form-data`` body of one upload in the field ``file`` and its Content-Type."""
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n"
            "Content-Type: image/png\r\n\r\n").encode()
    return head + data + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def _load(port: int, payloads: list[tuple[str, bytes]], requests: int, concurrency: int,
          warmup: int) -> tuple[float, list[float], list[str]]:
    """``requests`` searches from ``concurrency`` client threads: (wall s, client ms, errors).

    Each thread keeps one keep-alive connection (``http.client``) and sends request bodies encoded beforehand, so
    the load generator takes as little of the machine's CPU as it can (the server is what is measured)."""
    import http.client
    import json

    bodies = [multipart_body(name, data) for name, data in payloads]
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    local = threading.local()
    connections: list[http.client.HTTPConnection] = []

    def one(i: int, record: bool = True) -> None:
        if not hasattr(local, "conn"):
            local.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
            local.conn.connect()
            local.conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with lock:
                connections.append(local.conn)
        name = payloads[i % len(payloads)][0]
        body, content_type = bodies[i % len(bodies)]
        started = time.perf_counter()
        local.conn.request("POST", "/search?k=10", body, {"Content-Type": content_type})
        response = local.conn.getresponse()
        text = response.read()
        elapsed = (time.perf_counter() - started) * 1000
        with lock:
            if response.status != 200 or json.loads(text)["results"][0]["path"] != name:
                errors.append(f"{i}: {response.status} {text[:120]!r}")
            elif record:
                latencies.append(elapsed)

    try:
        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(lambda i: one(i, record=False), range(max(warmup, concurrency))))
            started = time.perf_counter()
            list(pool.map(one, range(requests)))
            wall = time.perf_counter() - started
    finally:
        for c in connections:
            c.close()
    return wall, latencies, errors


def _load_elsewhere(pool: Any, port: int, payloads: list[tuple[str, bytes]], requests: int, concurrency: int,
                    warmup: int) -> tuple[float, list[float], list[str]]:
    """:func:`_load` in the client process ``pool`` (a one-worker ``ProcessPoolExecutor``), or here without one."""
    if pool is None:
        return _load(port, payloads, requests, concurrency, warmup)
    return pool.submit(_load, port, payloads, requests, concurrency, warmup).result()


def split_runtime(spec: str) -> tuple[str, str | None]:
    """``torch`` / ``onnx`` / ``torch+bf16`` (queries under that autocast: ``serve --query-amp``) -> (runtime,
    query amp or None)."""
    runtime, _, amp = spec.partition("+")
    return runtime, amp or None


def model_ceiling(index: Any, spec: str, payloads: list[tuple[str, bytes]], batch: int,
                  seconds: float = 3.0) -> dict[int, float]:
    """img/s of the runtime's forward pass alone (``Index.embed_prepared`` on inputs prepared beforehand) at batch
    1 and ``batch``, each timed for about ``seconds`` after one warm-up pass."""
    runtime, query_amp = split_runtime(spec)
    index.use_query_amp(None)
    index.use_runtime(runtime)
    index.use_query_amp(query_amp)
    prepared = [index.prepare(data) for _, data in payloads[:batch]]
    while len(prepared) < batch:
        prepared += prepared[:batch - len(prepared)]
    rates = {}
    for b in sorted({1, batch}):
        index.embed_prepared(prepared[:b])
        done, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            index.embed_prepared(prepared[:b])
            done += b
        rates[b] = done / (time.perf_counter() - started)
    return rates


def _adds(app: FastAPI, payloads: list[tuple[str, bytes]], count: int, concurrency: int,
          token: str) -> tuple[float, list[float]]:
    """``count`` POST /images from ``concurrency`` threads: (images/s, ms to each durable 201)."""
    import httpx

    latencies: list[float] = []
    with Served(app) as served:
        clients = [httpx.Client(base_url=f"http://127.0.0.1:{served.port}", timeout=300,
                                headers={"Authorization": f"Bearer {token}"}) for _ in range(concurrency)]

        def one(i: int) -> None:
            name, data = payloads[i % len(payloads)]
            started = time.perf_counter()
            r = clients[i % concurrency].post("/images", files={"file": (name, data, "image/png")})
            if r.status_code != 201:
                raise RuntimeError(f"POST /images: {r.status_code} {r.text[:200]}")
            latencies.append((time.perf_counter() - started) * 1000)

        started = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(one, range(count)))
        wall = time.perf_counter() - started
        for c in clients:
            c.close()
    return count / wall, latencies


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(MODELS), default="deit_small")
    parser.add_argument("--size", type=int, default=10_000, help="index entries (default 10,000)")
    parser.add_argument("--real", type=int, default=200, help="of which embedded generated images (default 200)")
    parser.add_argument("--factory", default="auto")
    parser.add_argument("--requests", type=int, default=200, help="searches per setting and concurrency")
    parser.add_argument("--concurrency", type=_ints, default=[1, 8, 32], help="client counts (default 1,8,32)")
    parser.add_argument("--max-batch", type=_ints, default=None,
                        help="max_batch settings; 1 = unbatched (default: 1 and the service's default)")
    parser.add_argument("--max-wait-ms", type=_floats, default=None,
                        help="max_wait_ms settings for the batched ones (default: the service's default)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="repeat every measurement this many times, interleaved, and keep each one's fastest "
                             "round (a shared machine's load comes and goes)")
    parser.add_argument("--adds", type=int, default=50, help="POST /images to time (0: none)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--client-threads", action="store_true",
                        help="run the clients as threads of the server's process (default: a process of their own)")
    parser.add_argument("--ceiling-batch", type=int, default=8,
                        help="batch size of the model-alone ceiling beside batch 1 (default 8)")
    parser.add_argument("--runtime", type=lambda t: [r.strip() for r in t.split(",") if r.strip()],
                        default=["torch"], help="runtimes to serve with, e.g. torch,onnx,torch+bf16 (onnx: the model "
                                                "is exported first; +bf16: queries under bf16 autocast, serve "
                                                "--query-amp; every ratio is to the unbatched torch service)")
    args = parser.parse_args(argv)

    import torch

    from vitrieval.config import ModelConfig
    from vitrieval.data.table import ImageTable, Record
    from vitrieval.embed import ExtractionOptions, extract
    from vitrieval.index import Index
    from vitrieval.model import Encoder, load
    from vitrieval.serve import create_app
    from vitrieval.serve.batching import DEFAULT_MAX_BATCH, DEFAULT_MAX_WAIT_MS

    if args.threads:
        torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="vitrieval-serve-latency-"))
    torch.manual_seed(0)
    spec = MODELS[args.model]
    model_dir = Encoder(ModelConfig(name=spec["name"], pretrained=False, image_size=spec["image_size"],
                                    patch_size=spec["patch_size"])).save(work / "model")
    t = time.perf_counter()
    images = make_images(work / "images", args.real)
    encoder = load(model_dir)
    ex = extract(encoder, ImageTable([Record(str(p), -1) for p in images]),
                 ExtractionOptions(batch_size=32, num_workers=0, amp="off", progress=False))
    rng = np.random.default_rng(1)
    filler = rng.standard_normal((args.size - args.real, encoder.descriptor_dim)).astype(np.float32)
    filler /= np.linalg.norm(filler, axis=1, keepdims=True)
    descriptors = np.concatenate([ex.descriptors, filler])
    paths = [str(p) for p in images] + [str(images[i % len(images)]) for i in range(args.size - args.real)]
    index = Index.from_descriptors(model_dir, descriptors, paths, out_dir=work / "bench.idx", factory=args.factory,
                                   amp="off", device=args.device)
    device = next(index.encoder.parameters()).device
    print(f"index: {len(index):,} entries ({args.real} embedded images + {args.size - args.real:,} random "
          f"descriptors), {index.factory}, {index.descriptor_dim}-d, model {spec['name']} at {spec['image_size']} px "
          f"on {device}; prepared in {time.perf_counter() - t:.1f} s; torch threads {torch.get_num_threads()}",
          flush=True)
    if "onnx" in [split_runtime(r)[0] for r in args.runtime]:
        from vitrieval.onnx_export import export_onnx
        from vitrieval.runtime.onnx_file import default_onnx_path

        report = export_onnx(load(model_dir), default_onnx_path(model_dir))
        print(f"exported {default_onnx_path(model_dir)} (max abs difference {report.max_abs_diff:.1e})", flush=True)
    payloads = [(p.name, p.read_bytes()) for p in images]
    batch_sizes = args.max_batch or [1, DEFAULT_MAX_BATCH]
    waits = args.max_wait_ms or [DEFAULT_MAX_WAIT_MS]
    settings = [(r, b, w) for r in args.runtime for b in batch_sizes for w in (waits if b > 1 else [0.0])]
    best: dict[tuple[int, str, int, float], tuple] = {}
    ceilings: dict[str, dict[int, float]] = {}
    failed = 0
    clients = None
    if not args.client_threads:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        clients = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
    for round_ in range(args.rounds):
        for runtime in args.runtime:  # the model alone, interleaved with the service like every other figure
            for b, rate in model_ceiling(index, runtime, payloads, args.ceiling_batch).items():
                ceilings.setdefault(runtime, {})[b] = max(ceilings.get(runtime, {}).get(b, 0.0), rate)
        for concurrency in args.concurrency:
            for runtime, max_batch, max_wait in settings:
                name, query_amp = split_runtime(runtime)
                app = create_app(index, max_batch=max_batch, max_wait_ms=max_wait, runtime=name, query_amp=query_amp)
                with Served(app) as served:
                    wall, latencies, errors = _load_elsewhere(clients, served.port, payloads, args.requests,
                                                              concurrency, args.warmup)
                failed += len(errors)
                batcher = app.state.batcher
                mean_batch = batcher.images / max(batcher.batches, 1)
                p50, p99 = np.percentile(latencies, [50, 99]) if latencies else (float("nan"),) * 2
                row = (concurrency, runtime, max_batch, max_wait, args.requests / wall, p50, p99, mean_batch,
                       len(errors))
                key = (concurrency, runtime, max_batch, max_wait)
                if key not in best or row[4] > best[key][4]:
                    best[key] = row
                print(f"  round {round_ + 1}: concurrency {concurrency}, {runtime}, max_batch {max_batch}, max_wait "
                      f"{max_wait:g} ms: {args.requests / wall:.1f} req/s", flush=True)
    if clients is not None:
        clients.shutdown()
    rows = [best[(c, r, b, w)] for c in args.concurrency for r, b, w in settings]
    print(f"\nclients in {'the server process' if args.client_threads else 'a process of their own'}; the model "
          "alone (img/s): " + "; ".join(f"{r} " + ", ".join(f"batch {b} {v:.1f}" for b, v in c.items())
                                        for r, c in ceilings.items()))
    print("\n| clients | runtime | max_batch | max_wait ms | req/s | x unbatched torch | x model | p50 ms | p99 ms "
          "| p99 bound 1.3c/tput ms | mean batch | errors |\n"
          "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for concurrency, runtime, max_batch, max_wait, tput, p50, p99, mean_batch, errors in rows:
        base = next((r[4] for r in rows if r[0] == concurrency and r[1] == "torch" and r[2] == 1), float("nan"))
        bound = 1.3 * concurrency / tput * 1000
        ceiling = ceilings[runtime][1 if max_batch == 1 or concurrency == 1 else args.ceiling_batch]
        print(f"| {concurrency} | {runtime} | {max_batch} | {max_wait:g} | {tput:.1f} | {tput / base:.2f} "
              f"| {tput / ceiling:.2f} | {p50:.0f} | {p99:.0f} | {bound:.0f}{'' if p99 <= bound else ' (over)'} "
              f"| {mean_batch:.1f} | {errors} |")
    if args.adds:
        token = "benchmark-write-token-0123456789"
        print("\n| POST /images clients | images/s | ack p50 ms | ack p99 ms |\n|---:|---:|---:|---:|")
        for concurrency in sorted({1, max(args.concurrency)}):
            live = Index.load(work / "bench.idx", device=args.device, runtime=split_runtime(args.runtime[0])[0])
            rate, acks = _adds(create_app(live, write_token=token), payloads, args.adds, concurrency, token)
            a50, a99 = np.percentile(acks, [50, 99])
            print(f"| {concurrency} | {rate:.1f} | {a50:.1f} | {a99:.1f} |")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
