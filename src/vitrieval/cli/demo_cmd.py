"""``vitrieval demo``: generate data, pretrain a small encoder by classification on separate identities, fine-tune
IRT_L and IRT_R from it, evaluate them against IRT_O (the pretrained encoder as is) and raw pixels, write an HTML
report and a searchable index, all offline on a CPU (under 10 minutes on 2 cores; ``--quick``: under 2).

    vitrieval demo                               # built-in synthetic products -> runs/demo
    vitrieval demo --quick -o /tmp/demo          # tiny version (what the tests run)
    vitrieval demo --data ~/faces -o runs/faces  # any ROOT/<class>/<image> folder (classes in natural order)
"""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``demo``."""
    parser = subparsers.add_parser("demo", help="train, evaluate, report and index on built-in data, offline",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", "-o", default="runs/demo", help="output folder (default runs/demo)")
    parser.add_argument("--data", metavar="DIR",
                        help="a class-per-folder dataset instead of the generated products: ROOT/<class>/<image> "
                             "(first half of the classes in natural order s1, s2, ..., s10 train, the rest test) "
                             "or ROOT/train + ROOT/test")
    parser.add_argument("--quick", action="store_true", help="tiny data and model (under 2 minutes; for tests)")
    parser.add_argument("--seed", type=int, default=0, help="training seed: initial weights, batches (default 0)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads for the model (default 1: the small demo model gains little from more, "
                             "and the data-loading worker uses the second core; 0 = torch's default)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def run(args: argparse.Namespace) -> int:
    """Run the demo, then print the Recall@K table, the report path and how to search / serve the index."""
    from vitrieval.cli import CLIError
    from vitrieval.demo import format_table, run_demo
    from vitrieval.demo.report import koleo_verdict

    if args.threads < 0:
        raise CLIError(f"--threads must be >= 0, got {args.threads}")
    results = run_demo(args.output, data=args.data, quick=args.quick, seed=args.seed,
                       progress=not args.no_progress, threads=args.threads or None)
    data = results["data"]
    print()
    print(f"Recall@K (%) on {data['test_images']} test images of {data['test_classes']} classes unseen in "
          f"training (leave-one-out):")
    print(format_table(results))
    print(f"IRT_O: pretrained by {results['pretrained']['objective'].split(' (')[0]} classification of "
          f"{results['pretrained']['data']}.")
    print(koleo_verdict(results))
    print()
    print(f"report:  {results['report']}")
    print(f"results: {results['results']}")
    print(f"done in {results['seconds']:.0f} s ({results['cpu_seconds']:.0f} s of CPU time). Search the test images "
          "with the fine-tuned model (IRT_R):")
    print(f"  vitrieval search --index {results['index']} {results['example_query']}")
    print(f"  vitrieval serve --index {results['index']}")
    return 0
