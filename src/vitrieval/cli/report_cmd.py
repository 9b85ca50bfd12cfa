"""``vitrieval report``: one HTML page comparing training runs (final Recall@K, curves, mined-negative distances,
the gradient noise γ of runs trained with ``train.log_gradient_noise=true``: per step, and against the margin β as
Fig 4 for a sweep).

    vitrieval report runs/sop-irt-l runs/sop-irt-r -o runs/compare.html
    vitrieval report runs/sfm --names IRT_R -o sfm.html
"""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("report", help="an HTML report comparing training runs",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="training output folders (metrics.jsonl, eval.json, config.yaml)")
    p.add_argument("--output", "-o", required=True, help="the HTML file to write")
    p.add_argument("--names", help="comma-separated labels, one per run (default: the folder names)")
    p.add_argument("--title", default="vitrieval training runs")
    return p


def run(args: argparse.Namespace) -> int:
    from vitrieval.cli import check_output_file
    from vitrieval.report.runs import write_runs_report

    check_output_file(args.output, "-o", "report.html")

    names = [n.strip() for n in args.names.split(",")] if args.names else None
    path = write_runs_report(args.runs, args.output, names, args.title)
    print(f"report written to {path}")
    return 0
