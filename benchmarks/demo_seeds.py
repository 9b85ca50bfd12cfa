"""Benchmark: the spread of ``vitrieval demo`` over training seeds (the ± of the README's demo table).

Runs the demo (``--quick`` with ``--quick``) once per seed through the command line, each into its own folder
(the generated data does not depend on the seed; the pretraining, the initial weights, the batches and the
augmentation do), and prints a markdown table: Recall@K of every variant per seed, then mean ± sample standard
deviation, the two comparisons the demo makes (IRT_O - raw pixels, IRT_L - IRT_O, IRT_R - IRT_L) and each run's
wall and CPU seconds (on a shared machine the CPU seconds are the steadier figure).

    python benchmarks/demo_seeds.py                       # seeds 0 1 2, the full demo (about 3 x 8 minutes)
    python benchmarks/demo_seeds.py --quick --seeds 0 1   # the quick demo
    python benchmarks/demo_seeds.py --output runs/seeds   # keep the runs (default: a temporary folder)
    python benchmarks/demo_seeds.py --jobs 3              # the seeds at once (recalls unchanged, times not)
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

VARIANTS = ("raw_pixels", "IRT_O", "IRT_L", "IRT_R")
KS = ("1", "2", "4", "8")


def start_seed(out: Path, seed: int, quick: bool) -> subprocess.Popen:
    """One demo run in a fresh process (its output to ``out.log``)."""
    argv = [sys.executable, "-m", "vitrieval", "demo", "--output", str(out), "--seed", str(seed)]
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{out}.log", "w") as log:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(argv + (["--quick"] if quick else []), stdout=log, stderr=subprocess.STDOUT)


def finish_seed(process: subprocess.Popen, out: Path, seed: int) -> dict:
    """Wait for :func:`start_seed`'s run and read its ``results.json``."""
    code = process.wait()
    if code != 0:
        raise SystemExit(f"seed {seed} failed (exit {code}): see {out}.log")
    return json.loads((out / "results.json").read_text())


def spread(values: list[float]) -> str:
    """``mean ± sd`` in percent points (sd of the sample; 0 for one value)."""
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.fmean(values):.1f} ± {100 * sd:.1f}"


def table(results: dict[int, dict]) -> str:
    lines = ["| seed | variant | " + " | ".join(f"R@{k}" for k in KS) + " |", "|---|---|" + "---:|" * len(KS)]
    for seed, res in results.items():
        for v in VARIANTS:
            lines.append(f"| {seed} | {v} | " + " | ".join(f"{100 * res[v]['recall_at_k'][k]:.1f}" for k in KS)
                         + " |")
    for v in VARIANTS:
        lines.append(f"| mean ± sd | {v} | " + " | ".join(
            spread([res[v]["recall_at_k"][k] for res in results.values()]) for k in KS) + " |")
    lines += ["", "| comparison (R@1, points) | per seed | mean ± sd |", "|---|---|---:|"]
    for a, b in (("IRT_O", "raw_pixels"), ("IRT_L", "IRT_O"), ("IRT_R", "IRT_L")):
        diffs = [res[a]["recall_at_k"]["1"] - res[b]["recall_at_k"]["1"] for res in results.values()]
        lines.append(f"| {a} - {b} | " + ", ".join(f"{100 * d:+.1f}" for d in diffs) + f" | {spread(diffs)} |")
    lines += ["", "| seed | wall s | CPU s |", "|---|---:|---:|"]
    lines += [f"| {seed} | {res['seconds']:.0f} | {res.get('cpu_seconds', float('nan')):.0f} |"
              for seed, res in results.items()]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--quick", action="store_true", help="the quick demo")
    parser.add_argument("--output", help="keep the runs here (OUTPUT/seed-N, its log OUTPUT/seed-N.log)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="demos at once (default 1: on a 2-core machine each demo uses both cores; more only "
                             "changes the wall and CPU seconds, not the recalls)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.output) if args.output else Path(tmp)
        results: dict[int, dict] = {}
        seeds = list(args.seeds)
        while seeds:
            batch, seeds = seeds[:args.jobs], seeds[args.jobs:]
            running = {seed: start_seed(root / f"seed-{seed}", seed, args.quick) for seed in batch}
            for seed, process in running.items():
                results[seed] = finish_seed(process, root / f"seed-{seed}", seed)
                print(f"seed {seed}: R@1 " + ", ".join(
                    f"{v} {100 * results[seed][v]['recall_at_k']['1']:.1f}" for v in VARIANTS), flush=True)
        print(f"\nvitrieval demo{' --quick' if args.quick else ''}, seeds {args.seeds} (Recall@K in %):\n")
        print(table(results))


if __name__ == "__main__":
    main()
