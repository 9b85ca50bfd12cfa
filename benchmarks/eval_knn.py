"""Benchmark: leave-one-out Recall@K at the size of Stanford Online Products (60,502 x 384).

Compares, on the same synthetic descriptors (random, clustered by label so that R@1 is about 0.8):

- ``vitrieval``: :func:`vitrieval.metrics.recall_at_k` (chunked torch matmul + topk, bounded memory);
- ``pml``: pytorch-metric-learning's ``AccuracyCalculator`` with ``k = max(K)`` and its default faiss k-NN
  (``IndexFlatL2``), Recall@K added as custom ``calculate_recall_at_K`` metrics;
- ``full``: the whole ``n x n`` float32 similarity matrix at once, then ``torch.topk`` (about 14.6 GB at full
  size; skipped when the machine has less memory available than it needs).

Each method runs in a fresh subprocess that loads the descriptors from a temporary ``.npy`` file, so peak
memories do not mix: the reported peak is the increase of ``VmHWM`` (peak resident set, from
``/proc/self/status``) over the resident set just before the call, after resetting the high-water mark through
``/proc/self/clear_refs``. Wall time and CPU time (user + system, all threads; steadier than wall time on a
shared machine) cover the call only (not the imports or loading). The recalls of all methods must agree
(asserted) and the script prints a markdown table.

    python benchmarks/eval_knn.py               # full SOP size (a few minutes on 2 cores)
    python benchmarks/eval_knn.py --n 10000     # smaller
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SOP_N, SOP_CLASSES, DIM = 60_502, 11_316, 384
METHODS = ("vitrieval", "pml", "full")


# ---------------------------------------------------------------------------------------------- data


def make_descriptors(n: int, dim: int, n_classes: int, noise: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """L2-normalised ``n x dim`` float32 descriptors: a random unit centre per class plus Gaussian noise of
    norm about ``noise``; every class has at least 2 items (no query without a positive)."""
    rng = np.random.default_rng(seed)
    sizes = 2 + rng.multinomial(n - 2 * n_classes, np.full(n_classes, 1.0 / n_classes))
    labels = rng.permutation(np.repeat(np.arange(n_classes, dtype=np.int64), sizes))
    centres = rng.standard_normal((n_classes, dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x = centres[labels]
    x += np.float32(noise / np.sqrt(dim)) * rng.standard_normal((n, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x, labels


# ---------------------------------------------------------------------------------------------- memory


def status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)  # all threads of the process
    return usage.ru_utime + usage.ru_stime


def mem_available_bytes() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


# ---------------------------------------------------------------------------------------------- methods (worker side)


def run_vitrieval(x: np.ndarray, labels: np.ndarray, ks: list[int], args: argparse.Namespace) -> dict[int, float]:
    from vitrieval.metrics import recall_at_k

    return recall_at_k(x, labels, ks, chunk_size=args.chunk_size, memory_budget=args.memory_budget)


def run_pml(x: np.ndarray, labels: np.ndarray, ks: list[int], args: argparse.Namespace) -> dict[int, float]:
    import torch
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

    def recall_metric(k: int):
        def calculate(self, knn_labels, query_labels, **kwargs):
            return (knn_labels[:, :k] == query_labels[:, None]).any(dim=1).double().mean().item()

        return calculate

    names = [f"recall_at_{k}" for k in ks]
    methods = {f"calculate_{name}": recall_metric(k) for name, k in zip(names, ks)}
    methods["requires_knn"] = lambda self: AccuracyCalculator.requires_knn(self) + names
    calc_cls = type("RecallAccuracyCalculator", (AccuracyCalculator,), methods)
    calc = calc_cls(include=tuple(names), k=max(ks), device=torch.device("cpu"))
    out = calc.get_accuracy(x, labels)  # no reference set: leave-one-out, ref_includes_query=True
    return {k: out[name] for name, k in zip(names, ks)}


def run_full(x: np.ndarray, labels: np.ndarray, ks: list[int], args: argparse.Namespace) -> dict[int, float]:
    import torch

    t = torch.from_numpy(x)
    sims = t @ t.T  # n x n float32
    sims.fill_diagonal_(-torch.inf)
    _, idx = torch.topk(sims, max(ks), dim=1)
    del sims
    lab = torch.from_numpy(labels)
    match = lab[idx] == lab[:, None]
    return {k: match[:, :k].any(dim=1).double().mean().item() for k in ks}


def worker(args: argparse.Namespace) -> None:
    import torch  # noqa: F401  (imports before the baseline: they are not the method's memory)

    if args.worker == "pml":
        import pytorch_metric_learning.utils.accuracy_calculator  # noqa: F401
    else:
        import vitrieval.metrics  # noqa: F401
    data = Path(args.data)
    x = np.load(data / "x.npy")
    labels = np.load(data / "labels.npy")
    ks = [int(k) for k in args.ks.split(",")]
    fn = {"vitrieval": run_vitrieval, "pml": run_pml, "full": run_full}[args.worker]
    reset = reset_peak()
    rss0, hwm0 = status_kib("VmRSS"), status_kib("VmHWM")
    base = rss0 if reset else hwm0
    cpu0 = cpu_seconds()
    t0 = time.perf_counter()
    recalls = fn(x, labels, ks, args)
    wall = time.perf_counter() - t0
    cpu = cpu_seconds() - cpu0
    hwm = status_kib("VmHWM")
    result = {
        "method": args.worker,
        "wall_s": wall,
        "cpu_s": cpu,
        "peak_increase_bytes": (hwm - base) * 1024,
        "peak_rss_bytes": hwm * 1024,
        "peak_reset": reset,
        "recall": {str(k): float(v) for k, v in recalls.items()},
    }
    print("RESULT " + json.dumps(result), flush=True)


# ---------------------------------------------------------------------------------------------- driver


def run_method(method: str, data_dir: Path, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--worker", method, "--data", str(data_dir), "--ks", args.ks]
    if args.chunk_size:
        cmd += ["--chunk-size", str(args.chunk_size)]
    cmd += ["--memory-budget", str(args.memory_budget)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{method} failed (exit {proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def gib(n_bytes: float) -> str:
    return f"{n_bytes / 2**30:.2f}"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=SOP_N, help="number of descriptors (default: SOP test set, 60502)")
    p.add_argument("--dim", type=int, default=DIM)
    p.add_argument("--classes", type=int, default=None, help="default: n * 11316 / 60502 (SOP's ~5.3 per class)")
    p.add_argument("--noise", type=float, default=2.0, help="noise norm around the class centre (2.0: R@1 ~ 0.8)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ks", default="1,10,100,1000")
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {METHODS}")
    p.add_argument("--chunk-size", type=int, default=None, help="vitrieval chunk size (default: from the budget)")
    p.add_argument("--memory-budget", type=int, default=256 * 2**20, help="vitrieval per-chunk budget in bytes")
    p.add_argument("--worker", choices=METHODS, help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(args)
        return

    n_classes = args.classes or max(1, round(args.n * SOP_CLASSES / SOP_N))
    methods = [m for m in args.methods.split(",") if m]
    unknown = set(methods) - set(METHODS)
    if unknown:
        p.error(f"unknown methods {sorted(unknown)}")
    x, labels = make_descriptors(args.n, args.dim, n_classes, args.noise, args.seed)
    full_need = args.n * args.n * 4 + 2 * 2**30
    print(
        f"# Leave-one-out Recall@{{{args.ks}}}: n={args.n}, d={args.dim}, {n_classes} classes, noise={args.noise}; "
        f"{os.cpu_count()} CPUs, torch threads default"
    )
    results = []
    with tempfile.TemporaryDirectory(prefix="eval_knn_") as tmp:
        np.save(Path(tmp) / "x.npy", x)
        np.save(Path(tmp) / "labels.npy", labels)
        del x
        for method in methods:
            if method == "full" and mem_available_bytes() < full_need:
                print(f"# skipping 'full': needs ~{gib(full_need)} GiB, {gib(mem_available_bytes())} GiB available")
                continue
            print(f"# running {method} ...", flush=True)
            res = run_method(method, Path(tmp), args)
            print(
                f"#   {res['wall_s']:.1f} s wall, {res['cpu_s']:.1f} s CPU, "
                f"peak +{gib(res['peak_increase_bytes'])} GiB, "
                f"load average {os.getloadavg()[0]:.1f}",
                flush=True,
            )
            results.append(res)

    ks = args.ks.split(",")
    ref = next((r for r in results if r["method"] == "vitrieval"), results[0])
    header = "| method | wall time (s) | CPU time (s) | peak RSS increase (GiB) | "
    header += " | ".join(f"R@{k}" for k in ks)
    header += " | wall / vitrieval | CPU / vitrieval | peak mem / vitrieval |"
    print()
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for r in results:
        recalls = " | ".join(f"{r['recall'][k]:.4f}" for k in ks)
        print(
            f"| {r['method']} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} | {gib(r['peak_increase_bytes'])} | {recalls} | "
            f"{r['wall_s'] / ref['wall_s']:.2f}x | {r['cpu_s'] / ref['cpu_s']:.2f}x | "
            f"{r['peak_increase_bytes'] / ref['peak_increase_bytes']:.2f}x |"
        )
    # Same numbers: vitrieval and the full matrix use the same float32 scores; faiss ranks by float32 L2
    # distance, whose rounding can swap near-equal neighbours, so allow at most 2 queries of difference there.
    print()
    for r in results:
        for k in ks:
            diff_queries = abs(r["recall"][k] - ref["recall"][k]) * args.n
            tolerance = 2.5 if "pml" in (r["method"], ref["method"]) else 0.5
            assert diff_queries < tolerance, (r["method"], k, r["recall"][k], ref["recall"][k])
    print(f"recalls agree across {', '.join(r['method'] for r in results)}")
    for r in results:
        if not r["peak_reset"]:
            print(f"note: {r['method']}: could not reset VmHWM; peak increase measured from the pre-call peak")


if __name__ == "__main__":
    main()
