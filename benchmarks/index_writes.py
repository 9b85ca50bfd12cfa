"""The cost of a durable write to an index folder, before and after a change of the journal (issue 28: the
hand-written ``journal.log`` replaced by ``journal.sqlite``, one SQLite transaction per write with its high-water
mark).

    python benchmarks/index_writes.py --baseline-src ../main/src [--dir /some/disk] [--writes 200]

For each code version (``PYTHONPATH`` = its ``src``), in a fresh process: a Flat index of 2,000 random 192-d unit
descriptors is written into a new folder under ``--dir`` (default: a temporary folder; choose one on the disk you
care about: a tmpfs makes every fsync free), then ``--writes`` single-image adds and as many single-id removals are
made one by one, each durable before it returns (``Index.add_descriptors`` / ``Index.remove(save=False)``), then the
folder is loaded again (the pending writes replayed) and compacted. Printed: the median and 90th percentile of the
add and removal latencies, the load time with the writes pending, the compaction time, and each as the ratio
after / before. Timings vary with the disk and the load of the machine; compare ratios from one run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parents[1] / "src"

RUN = """
import json, sys, time
import numpy as np
from vitrieval.index import Index
model, out, writes = sys.argv[1], sys.argv[2], int(sys.argv[3])
rng = np.random.default_rng(0)
x = rng.standard_normal((2000, 192)).astype(np.float32)
Index.from_descriptors(model, x, [f"/photos/{i:07d}.jpg" for i in range(2000)], [i % 100 for i in range(2000)], out,
                       factory="Flat")
index = Index.load(out)
index.hold_writer()
adds, removals = [], []
for i in range(writes):
    v = rng.standard_normal((1, 192)).astype(np.float32)
    t = time.perf_counter()
    index.add_descriptors(v, [(f"/new/{i}.jpg", 1)])
    adds.append(time.perf_counter() - t)
for i in range(writes):
    t = time.perf_counter()
    index.remove([i], save=False)
    removals.append(time.perf_counter() - t)
index.release_writer()
t = time.perf_counter()
again = Index.load(out)
load_s = time.perf_counter() - t
assert again.pending_writes == 2 * writes and len(again) == 2000
t = time.perf_counter()
again.save()
compact_s = time.perf_counter() - t
print(json.dumps({"add_ms": [a * 1e3 for a in adds], "remove_ms": [r * 1e3 for r in removals],
                  "load_s": load_s, "compact_s": compact_s}))
"""

MODEL = """
import sys, torch
from vitrieval.config import ModelConfig
from vitrieval.model import Encoder
torch.manual_seed(0)
Encoder(ModelConfig(name="deit_tiny_patch16_224", pretrained=False, image_size=32, patch_size=8)).save(sys.argv[1])
"""


def _python(src: Path, code: str, *args: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(src)}
    done = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"{src}: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode}")
    return done.stdout


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline-src", type=Path, required=True, help="the src/ folder of the code before")
    parser.add_argument("--dir", type=Path, default=None, help="where the index folders are written")
    parser.add_argument("--writes", type=int, default=200)
    args = parser.parse_args()
    versions = {"before": args.baseline_src.resolve(), "after": HERE}
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        model = Path(tmp) / "model"
        _python(HERE, MODEL, str(model))
        results = {name: json.loads(_python(src, RUN, str(model), str(Path(tmp) / f"{name}.idx"), str(args.writes)))
                   for name, src in versions.items()}
    rows = [("add, median (ms)", lambda r: _quantile(r["add_ms"], 0.5)),
            ("add, p90 (ms)", lambda r: _quantile(r["add_ms"], 0.9)),
            ("removal, median (ms)", lambda r: _quantile(r["remove_ms"], 0.5)),
            ("removal, p90 (ms)", lambda r: _quantile(r["remove_ms"], 0.9)),
            (f"load with {2 * args.writes} writes pending (s)", lambda r: r["load_s"]),
            ("compaction (s)", lambda r: r["compact_s"])]
    print(f"{'':38} {'before':>10} {'after':>10} {'after/before':>13}")
    for label, get in rows:
        before, after = get(results["before"]), get(results["after"])
        print(f"{label:38} {before:10.3f} {after:10.3f} {after / before:13.2f}")


if __name__ == "__main__":
    main()
