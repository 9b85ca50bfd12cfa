"""``vitrieval evaluate``: the paper's benchmarks (Recall@K / MAP@R, revisited Oxford / Paris mAP) for a model.

    vitrieval evaluate --checkpoint runs/sop --dataset sop --data-root /data/Stanford_Online_Products
    vitrieval evaluate --checkpoint runs/sop --dataset sop --data-root /data/SOP --pca 128 -o sop128.json
    vitrieval evaluate --model deit_small_patch16_224 --pretrained-file deit_s.pth --dataset cub --data-root /data/CUB
    vitrieval evaluate --checkpoint runs/sop --dataset sop --data-root /data/SOP --report sop.html
    vitrieval evaluate --checkpoint runs/gl --dataset roxford5k --data-root /data/roxford5k --image-size 384
    vitrieval evaluate --checkpoint runs/gl --dataset roxford5k --data-root /data/roxford5k \\
        --scales 1,0.707,0.5 --rerank aqe,dba
    vitrieval evaluate --checkpoint runs/gl --dataset rparis6k --data-root /data/rparis6k \\
        --whiten learned --pca-fit-dataset sfm120k --pca-fit-root /data/sfm120k

Category-level sets (sop, cub, inshop, folder, csv): the test split, leave-one-out (SOP, CUB) or queries vs gallery
(In-Shop); Recall@K at the paper's K and MAP@R. Landmarks (roxford5k, rparis6k): whole images resized to
SIZE x SIZE, queries cropped to their box; mAP Easy / Medium / Hard and mP@1/5/10.

``--model`` without ``--checkpoint`` evaluates off-the-shelf ImageNet features (IRT_O). ``--pca D`` fits a PCA on
the training split (landmarks: on ``--pca-fit-dataset/--pca-fit-root``, else on the database, as the JSON says)
for this evaluation only: evaluate never changes a model folder. ``--save-pca DIR`` also writes a new model folder
(the model plus that PCA, its own fingerprint) that index and serve take like any model.

``--whiten learned`` fits Radenovic et al.'s learned whitening on the SfM-120k query-positive pairs (saved with
``--save-pca`` like a PCA). ``--rerank aqe`` adds alpha-weighted query expansion, ``--rerank aqe,dba`` also
database-side augmentation (the table then shows plain / +aQE / +aQE+DBA); ``--scales`` averages the descriptors of
several input scales. Large JPEGs are decoded at a reduced DCT scale that still covers the model's first resize
(``data.fast_decode``, as in training); ``--full-decode`` decodes every image at full resolution.

``--report FILE.html`` writes one self-contained page (images embedded, nothing fetched): the metric table, the
worst queries (latest first correct neighbour; landmarks: lowest Medium AP) with their top neighbours framed green
(correct) or red (wrong), Recall@K per class worst first, and the positive / negative similarity histograms.

``--distractors DIR`` (roxford5k / rparis6k) embeds a folder of distractor images (e.g. revisitop's R1M) with the
evaluated model, shard by shard like ``vitrieval index`` (an interrupted run resumes; under torchrun the ranks
share it), into ``--distractor-cache`` under a folder named by the model's fingerprint and preprocessing (image
size, resize, scales, autocast, fast decoding): a later evaluation of the same model reuses them, another model
never does.
``--distractors FILE.npy`` takes descriptors already computed (the final ones, after any PCA).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vitrieval.cli import CLIError, check_output_file, num_workers_arg
from vitrieval.cli.retrieval_options import (
    add_device_argument,
    add_full_decode_argument,
    add_model_arguments,
    add_rerank_arguments,
    add_scales_argument,
    encoder_from_args,
    rerank_from_args,
)

if TYPE_CHECKING:
    from vitrieval.distributed import DistContext
    from vitrieval.model import Encoder
    from vitrieval.rerank import RerankOptions


def _ks(text: str) -> list[int]:
    try:
        ks = sorted({int(v) for v in text.split(",") if v.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not ks or ks[0] < 1:
        raise argparse.ArgumentTypeError(f"K values must be positive integers, got {text!r}")
    return ks


def _distractor_file(path: str):  # noqa: ANN202 - a memory-mapped numpy array
    import numpy as np

    try:
        return np.load(str(path), mmap_mode="r")
    except (OSError, ValueError) as exc:
        raise CLIError(f"--distractors {path}: not a readable .npy array ({exc})") from None


def default_cache_root() -> str:
    """``$XDG_CACHE_HOME/vitrieval/distractors`` (``~/.cache/vitrieval/distractors``)."""
    import os

    return str(Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vitrieval" / "distractors")


def features_fingerprint(encoder: Encoder) -> str:
    """The fingerprint of ``encoder`` without its PCA: what the cached pre-PCA distractor descriptors depend on (a
    PCA fitted and stored later does not make them stale)."""
    pca, info = encoder.pca, encoder.pca_info
    if pca is None:
        return encoder.fingerprint()
    encoder.set_pca(None)
    try:
        return encoder.fingerprint()
    finally:
        encoder.set_pca(pca, info)


def distractor_folder_features(args: argparse.Namespace, encoder: Encoder, dist):  # noqa: ANN001, ANN201
    """The ``distractor_features(model, options)`` of :func:`~vitrieval.evaluation.protocol.evaluate_model` for
    ``--distractors DIR``: the folder's pre-PCA descriptors from the cache (:mod:`vitrieval.index.descriptor_cache`),
    embedded with the evaluation's extraction options (the cache keys on them)."""
    import logging

    from vitrieval.index.descriptor_cache import cached_descriptors

    def features(model, options):  # noqa: ANN001, ANN202 - an encoder (wrapper), ExtractionOptions; float32 array
        found = cached_descriptors(model, features_fingerprint(encoder), args.distractors, args.distractor_cache,
                                   options, shard_size=args.distractor_shard_size, distributed=dist)
        logging.getLogger(__name__).info(
            "distractors: %d descriptors %s %s (%d unreadable skipped)", len(found.descriptors),
            "embedded into" if found.embedded else "reused from", found.directory, len(found.skipped))
        return found.descriptors

    return features


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``evaluate``."""
    parser = subparsers.add_parser("evaluate", help="Recall@K / revisited mAP of a model on a benchmark",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser, required=True)
    parser.add_argument("--dataset", required=True,
                        help="sop | cub | inshop | roxford5k | rparis6k | folder | csv")
    parser.add_argument("--data-root", required=True, help="the dataset folder")
    parser.add_argument("--pca", type=int, metavar="DIM", help="reduce descriptors with a PCA to DIM dimensions")
    parser.add_argument("--whiten", nargs="?", const="pca", choices=("pca", "learned"),
                        help="--whiten (= pca): whiten the PCA (needs --pca); --whiten learned: Radenovic et al.'s "
                             "learned whitening (Lw) from the query-positive pairs of --pca-fit-dataset sfm120k "
                             "(--pca DIM optional: keep DIM components)")
    parser.add_argument("--pca-fit-dataset", help="fit the PCA on this dataset (its train split if it has one)")
    parser.add_argument("--pca-fit-root", help="data root of --pca-fit-dataset")
    parser.add_argument("--pca-fit-max-images", type=int, default=0, metavar="N",
                        help="fit the PCA on at most N images (an even subsample; default 0 = all)")
    parser.add_argument("--save-pca", metavar="DIR",
                        help="also write a new model folder DIR: the model plus the fitted PCA (its own "
                             "fingerprint), to index or serve; the evaluated model is never changed")
    parser.add_argument("--no-save-pca", action="store_true", help=argparse.SUPPRESS)  # old scripts: a no-op now
    add_scales_argument(parser)
    add_full_decode_argument(parser)
    add_rerank_arguments(parser, what="also report re-ranked metrics: aqe = alpha-weighted query expansion, dba = "
                                      "database-side augmentation (aqe,dba: both rows, DBA then aQE)")
    parser.add_argument("--distractors", metavar="DIR|DESCRIPTORS.npy",
                        help="roxford5k / rparis6k: also report mAP with a distractor set (e.g. R1M) added to the "
                             "database: a folder of images (embedded by this model, resumable, cached) or an "
                             ".npy of M x D final descriptors of the same model")
    parser.add_argument("--distractor-cache", default=default_cache_root(), metavar="DIR",
                        help="where --distractors DIR's descriptors are cached, one folder per model fingerprint "
                             "and preprocessing (default $XDG_CACHE_HOME/vitrieval/distractors)")
    parser.add_argument("--distractor-shard-size", type=int, default=10_000, metavar="N",
                        help="distractor images per resumable shard (default 10000)")
    parser.add_argument("--ks", type=_ks, help="Recall@K values, e.g. 1,10,100 (default: the paper's for the dataset)")
    parser.add_argument("-o", "--output", metavar="FILE", help="also write the results as JSON to FILE")
    parser.add_argument("--json", action="store_true",
                        help="print the results as JSON instead of a table (as search and reproduce --list do)")
    parser.add_argument("--report", metavar="FILE.html",
                        help="also write a self-contained page: the metrics, the worst queries with their top "
                             "neighbours marked right / wrong, Recall@K per class, similarity histograms")
    parser.add_argument("--report-queries", type=int, default=8, metavar="N",
                        help="with --report: how many of the worst queries to show (default 8)")
    parser.add_argument("--report-k", type=int, default=6, metavar="K",
                        help="with --report: neighbours shown per query (default 6)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default 64)")
    parser.add_argument("--workers", type=num_workers_arg, default="auto",
                        help="image-decoding workers: auto (cores beside the model's threads) or a number")
    add_device_argument(parser)
    parser.add_argument("--amp", default="auto", choices=("auto", "bf16", "fp16", "off"),
                        help="autocast: auto (bf16 where native), bf16, fp16 (CUDA), off")
    parser.add_argument("--use-bbox", action="store_true",
                        help="cub: crop images to their bounding boxes (landmark queries are always cropped)")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    return parser


def run(args: argparse.Namespace) -> int:
    """Evaluate, print the paper-style line, optionally write the JSON; returns the exit code."""

    from vitrieval.data.readers import READERS

    if args.dataset not in READERS:
        raise CLIError(f"unknown dataset {args.dataset!r}; known: {', '.join(READERS)}")
    if not Path(args.data_root).expanduser().exists():
        raise CLIError(f"--data-root {args.data_root} does not exist")
    if args.save_pca is not None:
        if args.pca is None and args.whiten != "learned":
            raise CLIError("--save-pca DIR goes with --pca DIM (or --whiten learned): it writes the model plus the "
                           "fitted PCA")
        if any((Path(args.save_pca).expanduser() / sub / "config.json").exists() for sub in (".", "model")):
            raise CLIError(f"--save-pca {args.save_pca}: a model folder is already there; give a new folder")
    if args.pca is not None and args.pca < 1:
        raise CLIError(f"--pca must be a positive dimension, got {args.pca}")
    if args.pca_fit_max_images < 0:
        raise CLIError(f"--pca-fit-max-images must be >= 0, got {args.pca_fit_max_images}")
    learned = args.whiten == "learned"
    if args.whiten == "pca" and not args.pca:
        raise CLIError("--whiten needs --pca DIM (whitening is part of the PCA)")
    if learned and args.pca_fit_dataset is None:
        raise CLIError("--whiten learned is fitted on matching pairs: give --pca-fit-dataset sfm120k and "
                       "--pca-fit-root")
    if (args.pca_fit_dataset is None) != (args.pca_fit_root is None):
        raise CLIError("--pca-fit-dataset and --pca-fit-root go together")
    if args.pca_fit_dataset is not None:
        if not args.pca and not learned:
            raise CLIError("--pca-fit-dataset needs --pca DIM (or --whiten learned)")
        if args.pca_fit_dataset not in READERS:
            raise CLIError(f"unknown --pca-fit-dataset {args.pca_fit_dataset!r}; known: {', '.join(READERS)}")
        if not Path(args.pca_fit_root).expanduser().exists():
            raise CLIError(f"--pca-fit-root {args.pca_fit_root} does not exist")
    if args.image_size is not None and args.image_size < 1:
        raise CLIError(f"--image-size must be positive, got {args.image_size}")
    rerank = rerank_from_args(args)
    if args.distractors is not None:
        if args.dataset not in ("roxford5k", "rparis6k"):
            raise CLIError(f"--distractors applies to roxford5k / rparis6k, not to {args.dataset}")
        if not Path(args.distractors).expanduser().exists():
            raise CLIError(f"--distractors {args.distractors}: no such .npy file or folder of images")
        if args.distractor_shard_size < 1:
            raise CLIError(f"--distractor-shard-size must be >= 1, got {args.distractor_shard_size}")
    if args.batch_size < 1:
        raise CLIError("--batch-size must be >= 1")
    if args.output:
        check_output_file(args.output, "-o", "results.json")
    if args.report:
        check_output_file(args.report, "--report", "report.html")
    if args.report_queries < 1 or args.report_k < 1:
        raise CLIError(f"--report-queries and --report-k must be >= 1, got {args.report_queries} and "
                       f"{args.report_k}")
    reader_options = {}
    if args.use_bbox:
        if args.dataset == "cub":
            reader_options["use_bbox"] = True
        elif args.dataset not in ("roxford5k", "rparis6k"):
            raise CLIError(f"--use-bbox applies to cub (landmark queries are always cropped; csv tables crop to "
                           f"their x1,y1,x2,y2 columns); not to {args.dataset}")

    from vitrieval.distributed import process_group

    with process_group() as dist:  # under torchrun: each rank embeds its shard, every rank gets all descriptors
        return _evaluate(args, dist, learned, rerank, reader_options)


def _evaluate(args: argparse.Namespace, dist: DistContext, learned: bool, rerank: RerankOptions,
              reader_options: dict[str, Any]) -> int:
    from vitrieval.amp import resolve_device
    from vitrieval.evaluation.format import format_results
    from vitrieval.evaluation.pca_fit import PCAOptions
    from vitrieval.evaluation.protocol import ExtractionOptions, evaluate_model
    from vitrieval.io_utils import atomic_write_json

    device = resolve_device(args.device)
    encoder = encoder_from_args(args).to(device).eval()
    pca = PCAOptions(dim=args.pca, whiten=args.whiten is not None, method="learned" if learned else "pca",
                     fit_dataset=args.pca_fit_dataset,
                     fit_root=args.pca_fit_root, fit_max_images=args.pca_fit_max_images,
                     fit_options={"use_bbox": True} if args.use_bbox and args.pca_fit_dataset == "cub" else None,
                     save_to=args.save_pca if dist.is_main else None)
    extraction = ExtractionOptions(batch_size=args.batch_size, num_workers=args.workers, amp=args.amp,
                                   progress=args.progress, fast_decode=not args.full_decode)
    distractors, distractor_features = None, None
    evaluated: list = []  # the EvaluatedSet, for --report
    if args.distractors is not None and Path(args.distractors).expanduser().is_dir():
        distractor_features = distractor_folder_features(args, encoder, dist)
    elif args.distractors is not None:
        distractors = _distractor_file(args.distractors)
    result = evaluate_model(
        encoder, args.dataset, args.data_root, ks=args.ks, pca=pca, extraction=extraction,
        image_size=args.image_size if args.checkpoint else None, reader_options=reader_options,
        model_name=str(args.checkpoint) if args.checkpoint else args.model,
        rerank=rerank, scales=args.scales,
        distractors=distractors, distractor_features=distractor_features,
        inspect=evaluated.append if args.report and dist.is_main else None)
    if not dist.is_main:  # rank 0 reports and writes; the others only contributed their shard
        return 0
    notes = sys.stderr if args.json else sys.stdout  # --json: stdout holds the JSON alone
    print(json.dumps(result, indent=2) if args.json else format_results(result))
    if "saved_model" in result:
        print(f"the model with its {result['descriptor_dim']}-d PCA written to {result['saved_model']}", file=notes)
    if args.output:
        atomic_write_json(args.output, result)
        print(f"results written to {args.output}", file=notes)
    if args.report:
        from vitrieval.report.evaluation_page import evaluation_report

        evaluation_report(args.report, result, evaluated[0], worst=args.report_queries, k=args.report_k)
        print(f"report written to {args.report}", file=notes)
    return 0
