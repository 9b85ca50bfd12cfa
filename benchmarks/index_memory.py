"""Client memory per image, load time and search latency of an index, before (rows as Python objects, read back
from Milvus at load) and after (rows in the store: SQLite beside faiss, fields of the Milvus collection).

    python benchmarks/index_memory.py --store faiss  --baseline-src ../main/src
    python benchmarks/index_memory.py --store milvus --baseline-src ../main/src --sizes 30000,300000

For each size an index of ``n`` random unit descriptors (192-d, the test model's dimension; paths
``/photos/NNNNNNN.jpg``, labels ``i % 1000``) is built once per code version that needs its own (faiss: each
version writes its own format; Milvus Lite: one collection and manifest, which both versions read). Then each code
version opens it in a fresh process (``PYTHONPATH`` = its ``src``; a Milvus collection served by Milvus Lite in
another process, so that only the client is measured): the growth of the resident set from before
``Index.load`` to after the load and one search (``VmRSS``, after ``gc.collect``), the load time, and the median of
200 one-query searches (k=10). "per image" is that growth divided by ``n``, and "per added image" the difference of
the growths of two sizes divided by the difference of the sizes (what a larger collection costs: constant parts,
such as Milvus Lite's engine started in the process, cancel out); both minus the vectors' own 4 x 192 bytes for
faiss (they are in memory by design). Goals (issue 27): faiss <= 64 B per
image beyond the vectors; the Milvus client <= 64 B per image in all; a Milvus load independent of ``n``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1] / "src"
DIM = 192

MODEL = """
import sys, torch
from vitrieval.config import ModelConfig
from vitrieval.model import Encoder
torch.manual_seed(0)
Encoder(ModelConfig(name="deit_tiny_patch16_224", pretrained=False, image_size=32, patch_size=8)).save(sys.argv[1])
print("{}")
"""

BUILD = """
import json, sys, time
import numpy as np
model, out, n, store, db = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
x = np.random.default_rng(0).standard_normal((n, DIM)).astype(np.float32)
paths = [f"/photos/{i:07d}.jpg" for i in range(n)]
labels = [i % 1000 for i in range(n)]
started = time.perf_counter()
if store == "milvus":
    from vitrieval.index import Index, MilvusOptions
    Index.from_descriptors(model, x, paths, labels, out, milvus=MilvusOptions(db, "bench", index_type="FLAT"))
else:
    from vitrieval.index import Index
    Index.from_descriptors(model, x, paths, labels, out, factory="Flat")
print(json.dumps({"build_s": time.perf_counter() - started}))
""".replace("DIM", str(DIM))

LOAD = """
import gc, json, sys, time
import numpy as np
import faiss, pymilvus
import vitrieval.index
from vitrieval.index import Index
def rss():
    gc.collect()
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmRSS"))
out = sys.argv[1]
q = np.random.default_rng(1).standard_normal((201, DIM)).astype(np.float32)
before = rss()
started = time.perf_counter()
index = Index.load(out)
index.search(q[:1], k=10)
load_s = time.perf_counter() - started
grown = rss() - before
times = []
for row in q[1:]:
    t = time.perf_counter()
    index.search(row[None], k=10)
    times.append(time.perf_counter() - t)
print(json.dumps({"n": len(index), "grown": grown, "load_s": load_s, "p50_ms": 1000 * float(np.median(times))}))
""".replace("DIM", str(DIM))


def _run(script: str, src: Path, *args: str, timeout: int = 3600) -> dict:
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, env=env,
                          timeout=timeout)
    if done.returncode != 0:
        raise SystemExit(f"child failed ({src}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _served(out: Path, db: Path, port: int) -> tuple[Path, subprocess.Popen]:
    """The Milvus index ``out`` as a client sees it: its collection served by Milvus Lite in a separate process
    (``python -m milvus_lite server``; in-process, the engine and its data would count as the client's), and a copy
    of the folder whose manifest names ``http://127.0.0.1:port``."""
    server = subprocess.Popen([sys.executable, "-m", "milvus_lite", "server", "--data-dir", str(db), "--port",
                               str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    served = out.with_name(out.name + ".served")
    served.mkdir(exist_ok=True)
    info = json.loads((out / "index.json").read_text())
    info["milvus"]["uri"] = f"http://127.0.0.1:{port}"
    (served / "index.json").write_text(json.dumps(info))
    for _ in range(600):  # until it answers
        try:
            import socket

            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.1)
    return served, server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", choices=("faiss", "milvus"), required=True)
    parser.add_argument("--sizes", default="30000,300000", help="collection sizes, comma-separated")
    parser.add_argument("--baseline-src", type=Path, required=True, help="the src/ folder of the code before")
    parser.add_argument("--work", type=Path, help="scratch folder (default: a temporary one)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="index-memory-"))
    model = work / "model"
    if not model.exists():
        _run(MODEL, HERE, str(model))
    versions = {"before": args.baseline_src.resolve(), "after": HERE}
    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        built = {}
        for name, src in versions.items():
            if args.store == "milvus" and name == "before":
                continue  # one collection, read by both versions
            out = work / f"{args.store}-{name}-{n}.idx"
            if not (out / "index.json").exists():
                built[name] = _run(BUILD, src, str(model), str(out), str(n), args.store, str(work / f"m{n}.db"))
        server = None
        if args.store == "milvus":
            served, server = _served(work / f"milvus-after-{n}.idx", work / f"m{n}.db", 19530 + n % 1000)
        try:
            loads = {}
            for name, src in versions.items():
                out = served if args.store == "milvus" else work / f"{args.store}-{name}-{n}.idx"
                loads[name] = _run(LOAD, src, str(out))
        finally:
            if server is not None:
                server.terminate()
                server.wait(timeout=60)
        for name, got in loads.items():
            vectors = n * DIM * 4 if args.store == "faiss" else 0
            per_image = (got["grown"] - vectors) / n
            rows.append((n, name, got["grown"] / 2 ** 20, per_image, got["load_s"], got["p50_ms"]))
            print(f"{args.store:6} {n:>9,} {name:6}  +{got['grown'] / 2 ** 20:8.1f} MB  {per_image:8.1f} B/image "
                  f"{'beyond the vectors' if vectors else 'in all':18}  load {got['load_s']:7.2f} s  "
                  f"search p50 {got['p50_ms']:7.2f} ms", flush=True)
    print()
    by = {(n, name): r for n, name, *r in rows}
    sizes = sorted({r[0] for r in rows})
    for small, large in zip(sizes, sizes[1:]):  # the growth per added image: what does not amortise
        for name in versions:
            slope = (by[(large, name)][0] - by[(small, name)][0]) * 2 ** 20 / (large - small)
            beyond = slope - (DIM * 4 if args.store == "faiss" else 0)
            print(f"{args.store} {name:6} {small:,} -> {large:,}: {beyond:7.1f} B per added image "
                  f"{'beyond the vectors' if args.store == 'faiss' else 'in all'}")
    for n in sizes:
        b, a = by[(n, "before")], by[(n, "after")]
        print(f"{args.store} {n:,}: memory x{a[0] / max(b[0], 1e-9):.3f}, load x{a[2] / b[2]:.3f}, "
              f"search p50 x{a[3] / b[3]:.3f} (after / before)")


if __name__ == "__main__":
    main()
