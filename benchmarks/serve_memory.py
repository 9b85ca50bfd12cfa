"""Server memory from small uploads that hold huge images: the old decode path against the search service.

    python benchmarks/serve_memory.py                           # the cpu-tiny model (64 px), as in issue 14
    python benchmarks/serve_memory.py --model tiny              # the 32 px test model
    python benchmarks/serve_memory.py --baseline-budget-gb 8    # also run old-path rows estimated up to 8 GB

Rows (each file is generated, tiny on the wire):

- (a) a 2 x 400,000 grey PNG (1.2 KB), one upload;
- (b) ``--concurrency`` (8) 7000 x 7000 grey PNGs (47 KB each) uploaded at once;
- (c) ``--concurrency`` 7000 x 7000 colour JPEGs uploaded at once;
- (d) the same as progressive JPEGs (libjpeg keeps their DCT coefficients at full size even when scaling).

"before" is what the service did until issue 14: ``load_image(data, max_pixels=50 M)`` then ``Index.search``
(the eval transform and the model), one thread per upload (the web threadpool ran up to 40). It is run only when
its estimated memory fits ``--baseline-budget-gb`` (default 2), else printed as skipped with the estimate. "after"
is ``vitrieval.serve.create_app`` with its default limits, through FastAPI's TestClient, the uploads posted from
as many threads at once. Every measurement runs in a fresh process: the growth is its peak resident set
(``VmHWM``, reset through ``/proc/self/clear_refs`` after the index, the model and a warm-up query are loaded)
minus its resident set at that moment. Linux only.

Measured on 2 shared CPU cores (24 GB), ``--baseline-budget-gb 8``, cpu-tiny model (resize target 71 px)::

    upload                                        file  before (old path)           after (the app)
    (a) 2 x 400,000 PNG, 1 upload               1.2 KB  +4,729 MB  (200; 12.2 s)    +0 MB  (422; 0.0 s)
    (b) 7000 x 7000 PNG, 8 at once             61.0 KB  +3,012 MB  (200; 5.2 s)     +99 MB  (200; 0.9 s)
    (c) 7000 x 7000 JPEG, 8 at once           874.4 KB  +2,995 MB  (200; 4.8 s)     +36 MB  (200; 0.4 s)
    (d) 7000 x 7000 progr. JPEG, 8 at once    414.8 KB  +3,014 MB  (200; 5.2 s)     +203 MB  (200; 1.5 s)
    (b) 7000 x 7000 PNG, 16 at once            61.0 KB  +5,999 MB  (200; 27.8 s)    +100 MB  (200; 4.0 s)
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

MB = 2 ** 20
MODELS = {
    "cpu-tiny": {"name": "deit_tiny_patch16_224", "image_size": 64, "patch_size": 8},
    "tiny": {"name": "deit_tiny_patch16_224", "image_size": 32, "patch_size": 8},
    "deit_small": {"name": "deit_small_patch16_224", "image_size": 224, "patch_size": None},
}
ROWS = {
    "a": ("2 x 400,000 PNG, 1 upload", "L", (2, 400_000), "PNG", 1),
    "b": ("7000 x 7000 PNG, {n} at once", "L", (7000, 7000), "PNG", None),
    "c": ("7000 x 7000 JPEG, {n} at once", "RGB", (7000, 7000), "JPEG", None),
    "d": ("7000 x 7000 progr. JPEG, {n} at once", "RGB", (7000, 7000), "JPEG", None),
}


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def _hwm() -> int:
    with open("/proc/self/status") as f:
        return int(re.search(r"VmHWM:\s+(\d+)", f.read()).group(1)) * 1024


def make_file(row: str, out: Path) -> Path:
    from PIL import Image, ImageDraw

    _, mode, size, fmt, _ = ROWS[row]
    img = Image.new(mode, size, 200 if mode == "L" else (250, 250, 250))
    if fmt == "JPEG":
        d = ImageDraw.Draw(img)
        d.ellipse((1000, 1000, 6000, 6000), fill=(30, 160, 40))
        d.rectangle((2500, 2500, 4500, 4500), fill=(220, 30, 30))
    path = out / f"row_{row}.{fmt.lower()}"
    img.save(path, format=fmt, **({"optimize": True} if fmt == "PNG" else {"quality": 90, "progressive": row == "d"}))
    return path


def baseline_estimate(row: str, n: int, resize_short: int) -> int:
    """Bytes the old path holds at its peak: the decode, its EXIF-transpose copy, the RGB copy, the resize."""
    _, mode, (w, h), _, _ = ROWS[row]
    stored = 1 if mode == "L" else 4
    short, long = min(w, h), max(w, h)
    resized = resize_short * int(resize_short * long / short) * 4
    return n * (w * h * (2 * stored + 4) + resized)


def child(args: argparse.Namespace) -> None:
    """One measurement in this (fresh) process; prints a JSON line."""
    import torch

    from vitrieval.data.images import load_image
    from vitrieval.index import Index

    torch.set_num_threads(1)
    index = Index.load(args.index_dir)
    data = Path(args.file).read_bytes()
    n = args.n
    warm = Path(args.warm).read_bytes()
    statuses: list[int | str] = []
    if args.child == "before":
        index.search([load_image(warm)], 3)

        def one(_: int) -> int | str:
            try:
                index.search([load_image(data, max_pixels=50_000_000, name="q")], 10)
                return 200
            except MemoryError:
                return "MemoryError"
            except ValueError as exc:
                return f"refused ({exc})"

    else:
        from fastapi.testclient import TestClient

        from vitrieval.serve import create_app

        app = create_app(index)
        client = TestClient(app)
        client.__enter__()
        client.post("/search?k=3", files={"file": ("w.png", warm, "image/png")})

        def one(_: int) -> int:
            return client.post("/search?k=10", files={"file": ("q", data, "application/octet-stream")}).status_code

    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    start = _rss()
    started = time.perf_counter()
    with ThreadPoolExecutor(n) as pool:
        statuses.extend(pool.map(one, range(n)))
    wall = time.perf_counter() - started
    print(json.dumps({"growth": max(_hwm(), _rss()) - start, "statuses": statuses, "wall_s": wall}))


def measure(mode: str, row: str, n: int, files: dict, index_dir: Path, warm: Path) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, "--index-dir", str(index_dir), "--file", str(files[row]),
           "--n", str(n), "--warm", str(warm)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    if done.returncode != 0 or not lines:
        return {"error": f"exit {done.returncode}: {done.stderr.strip().splitlines()[-1:]}"}
    return json.loads(lines[-1])


def fmt_result(r: dict) -> str:
    if "skipped" in r:
        return r["skipped"]
    if "error" in r:
        return r["error"]
    statuses = sorted({str(s) for s in r["statuses"]})
    return f"+{r['growth'] / MB:,.0f} MB  ({', '.join(statuses)}; {r['wall_s']:.1f} s)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(MODELS), default="cpu-tiny")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--baseline-budget-gb", type=float, default=2.0,
                        help="run an old-path row only if its estimated memory is below this (default 2)")
    parser.add_argument("--rows", default="abcd", help="which rows (default abcd)")
    parser.add_argument("--child", choices=("before", "after"), help=argparse.SUPPRESS)
    parser.add_argument("--index-dir", help=argparse.SUPPRESS)
    parser.add_argument("--file", help=argparse.SUPPRESS)
    parser.add_argument("--warm", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    import os

    import torch
    from PIL import Image

    from vitrieval.config import ModelConfig
    from vitrieval.index import Index
    from vitrieval.model import Encoder
    from vitrieval.serve.uploads import UploadLimits

    tmp = Path(tempfile.mkdtemp(prefix="serve_memory_"))
    torch.manual_seed(0)
    spec = MODELS[args.model]
    model = Encoder(ModelConfig(name=spec["name"], pretrained=False, image_size=spec["image_size"],
                                patch_size=spec["patch_size"])).save(tmp / "model")
    (tmp / "images").mkdir()
    for i in range(8):
        Image.new("RGB", (96, 96), (30 * i, 200 - 20 * i, 90)).save(tmp / "images" / f"{i}.png")
    index = Index.build(model, tmp / "images", tmp / "index", factory="Flat", num_workers=0, progress=False)
    warm = tmp / "images" / "0.png"
    target = index.preprocessing
    files = {row: make_file(row, tmp) for row in args.rows}
    limits = UploadLimits()
    print(f"model {args.model} ({spec['image_size']} px: the eval resize target is a shorter side of "
          f"{target.short} px); {os.cpu_count()} CPUs; after = create_app() defaults: "
          f"max_concurrent_decodes {limits.max_concurrent_decodes}, decode_memory_budget "
          f"{limits.decode_memory_budget // MB} MB, max_aspect_ratio {limits.max_aspect_ratio:g}")
    header = f"{'upload':<40} {'file':>9}  {'before (old path)':<40} {'after (the app)':<36}"
    print(header)
    print("-" * len(header))
    for row in args.rows:
        label, _, _, _, n = ROWS[row]
        n = n or args.concurrency
        size = files[row].stat().st_size
        estimate = baseline_estimate(row, n, target.short)
        if estimate > args.baseline_budget_gb * 2 ** 30:
            before = {"skipped": f"skipped (estimated {estimate / 2 ** 30:.1f} GB > budget)"}
        else:
            before = measure("before", row, n, files, tmp / "index", warm)
        after = measure("after", row, n, files, tmp / "index", warm)
        size_text = f"{size / 1024:.1f} KB"
        print(f"({row}) {label.format(n=n):<36} {size_text:>9}  {fmt_result(before):<40} {fmt_result(after):<36}",
              flush=True)


if __name__ == "__main__":
    main()
