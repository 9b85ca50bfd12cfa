"""``vitrieval datasets``: list the known dataset formats, or check a dataset on disk.

    vitrieval datasets list
    vitrieval datasets check --dataset sop --data-root /data/Stanford_Online_Products [--no-verify-images]
    vitrieval datasets to-sfm120k ~/data/coil20 runs/coil-sfm [--val-fraction 0.25] [--pairs-per-cluster 20]

``check`` prints a report (counts vs the official splits, missing and unreadable files) and exits 0 when the
dataset is complete, 1 otherwise (including when the split files cannot be read). ``to-sfm120k`` turns a
class-per-folder set (one folder per landmark / object) into cirtorch's SfM-120k layout, for tuple training
(``train.sampler=tuples``): classes are clusters, query-positive pairs join images of one class (consecutive
images by default), the last ``--val-fraction`` of the classes (natural name order) is the validation split.
"""

from __future__ import annotations

import argparse
import sys


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``datasets`` and its ``list`` / ``check`` actions."""
    parser = subparsers.add_parser("datasets", help="list dataset formats or check a dataset on disk",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = parser.add_subparsers(dest="datasets_action", metavar="ACTION")
    actions.required = True
    actions.add_parser("list", help="known dataset names and their official counts")
    check = actions.add_parser("check", help="compare a dataset with its official counts and decode every image")
    check.add_argument("--dataset", required=True, help="dataset name (see `vitrieval datasets list`)")
    check.add_argument("--data-root", required=True, help="the dataset folder")
    check.add_argument("--no-verify-images", dest="verify_images", action="store_false",
                       help="only check that the files exist (and are not empty); do not decode them")
    check.add_argument("--use-bbox", action="store_true", help="cub: read the bounding boxes too")
    check.add_argument("--workers", type=int, default=None, help="threads decoding images (default: min(8, CPUs))")
    check.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    convert = actions.add_parser("to-sfm120k", help="write a class-per-folder set in the SfM-120k layout")
    convert.add_argument("source", help="ROOT/<class>/<image>")
    convert.add_argument("output", help="folder to write (it gets retrieval-SfM-120k/; use it as --data-root)")
    convert.add_argument("--val-fraction", type=float, default=0.25, help="share of the classes for val (0.25)")
    convert.add_argument("--pairs-per-cluster", type=int, default=None,
                         help="random ordered pairs per class (default: consecutive images, n - 1 per class)")
    convert.add_argument("--seed", type=int, default=0)
    return parser


def _list() -> int:
    from vitrieval.data.check import COUNT_KEYS, EXTRA_COUNT_KEYS, OFFICIAL_COUNTS
    from vitrieval.data.readers import READERS

    for name in READERS:
        official = OFFICIAL_COUNTS.get(name)
        if official is None:
            print(f"{name:<10} (no official counts)")
        else:
            counts = ", ".join(f"{k} {official[k]:,}" for k in COUNT_KEYS + EXTRA_COUNT_KEYS if k in official)
            print(f"{name:<10} {counts}")
    return 0


def run(args: argparse.Namespace) -> int:
    """Run ``datasets list`` or ``datasets check``; returns the exit code."""
    if args.datasets_action == "list":
        return _list()
    if args.datasets_action == "to-sfm120k":
        from vitrieval.data.readers import read_dataset
        from vitrieval.data.sfm120k_layout import sfm120k_from_folder

        pkl = sfm120k_from_folder(args.source, args.output, args.val_fraction, args.pairs_per_cluster,
                                  seed=args.seed)
        table = read_dataset("sfm120k", pkl)
        summary, pairs = table.summary(), table.extras["pairs"]
        print(f"wrote {pkl}: train {summary['train_images']} images / {summary['train_classes']} clusters / "
              f"{len(pairs['train'])} pairs, val {summary['test_images']} images / {summary['test_classes']} "
              f"clusters / {len(pairs['test'])} pairs")
        print(f"train with: vitrieval train --preset sfm120k-cpu-tiny --data-root {args.output} --output RUN")
        return 0
    from vitrieval.data.check import check_dataset
    from vitrieval.data.readers import READERS

    if args.dataset not in READERS:
        print(f"unknown dataset {args.dataset!r}; known: {', '.join(READERS)}", file=sys.stderr)
        return 1
    options = {"use_bbox": True} if args.use_bbox and args.dataset == "cub" else {}
    try:
        result = check_dataset(args.dataset, args.data_root, verify_images=args.verify_images,
                               progress=args.progress, workers=args.workers, **options)
    except (FileNotFoundError, ValueError) as exc:
        print(f"dataset {args.dataset} at {args.data_root}: cannot read it:\n{exc}\nFAILED", file=sys.stderr)
        return 1
    print(result.format())
    return 0 if result.ok else 1
