"""``vitrieval index``: embed a collection with a trained model and write a searchable index folder.

    vitrieval index --checkpoint runs/sop --images ./catalog -o catalog.idx
    vitrieval index --checkpoint runs/sop --table catalog.csv -o catalog.idx --factory HNSW32
    vitrieval index --images ./new_photos -o catalog.idx --add        # append (same model)
    vitrieval index --checkpoint runs/sop --images ./catalog -o catalog.idx \\
        --backend milvus --milvus-uri catalog.db --milvus-index HNSW      # vectors in Milvus (docs/SCALING.md)
    vitrieval index -o catalog.idx --remove 17 42                      # remove images by id
    vitrieval index --model deit_small_patch16_224 --pretrained-file deit_s.pth --images ./catalog -o catalog.idx
    vitrieval index --descriptors D.npy --table T.csv --checkpoint runs/sop -o catalog.idx   # computed elsewhere

``--model NAME`` indexes with any timm backbone's pretrained features as they are (IRT_O; ``--pretrained-file``
offline, ``--pooling``, ``--image-size`` as for ``vitrieval evaluate``): its model folder is written inside the
index (``OUT/model``), so ``search``, ``serve`` and ``--add`` work from the index folder alone.

``--factory`` is a faiss factory string (exact ``Flat``, ``IVF4096,PQ32x4fs,RFlat``, ``HNSW32``...) or ``auto``
(exact below 100k images, the benchmarked approximate index above). An interrupted build resumes: rerun the same
command and the descriptor shards already written are reused. Unreadable images are listed and skipped.

Under torchrun (``torchrun --nproc_per_node N -m vitrieval index ...``) the ranks share the embedding (the result
is that of one process) and rank 0 alone writes the index folder, prints and logs.

``--add`` and ``--remove`` are journalled writes, compacted into a new generation before the command returns
(:mod:`vitrieval.index.live`, the mechanism ``vitrieval serve --write-token-file`` uses too): killed at any moment,
the index loads as before or as after, and a write that was journalled is replayed at the next load.

A folder that another process writes (a ``vitrieval serve --write-token-file``, another ``index``) is refused before
anything is embedded or written: a build (``--overwrite`` too) and ``--add`` take its write lock first. A write the
machine refuses (a full disk, a read-only or foreign folder) is one line naming the path, exit 2.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from vitrieval.cli import CLIError, is_user_error, num_workers_arg, report_error
from vitrieval.cli.retrieval_options import (
    add_device_argument,
    add_full_decode_argument,
    add_model_arguments,
    add_scales_argument,
    dba_arg,
)

if TYPE_CHECKING:
    from vitrieval.distributed import DistContext
    from vitrieval.index import BuildOptions, Index


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``index``."""
    parser = subparsers.add_parser("index", help="embed a collection of images into a faiss index",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser, checkpoint_help="trained model folder (a run folder or its model/); with --add "
                                                "the index's own model is used when left out")
    source = parser.add_mutually_exclusive_group()  # or --descriptors DIR alone (run() checks)
    source.add_argument("--images", help="folder of images (searched recursively)")
    source.add_argument("--table", help="CSV table with a 'path' column (and optionally 'label'); with "
                                        "--descriptors D.npy: the rows of D, one for one")
    source.add_argument("--remove", type=int, nargs="+", metavar="ID",
                        help="remove the images with these ids (see `vitrieval search`) from the index at -o")
    parser.add_argument("--descriptors", metavar="D.npy|DIR",
                        help="index descriptors computed elsewhere by the --checkpoint model: a float32 .npy array "
                             "with --table naming its rows, or a folder of descriptor shards (as `vitrieval index` "
                             "or `vitrieval embed` write them); nothing is embedded")
    parser.add_argument("-o", "--output", required=True, help="index folder to write (or to extend with --add)")
    parser.add_argument("--factory", default="auto",
                        help='faiss index: "Flat" (exact), "IVF4096,PQ32x4fs,RFlat", "HNSW32", ... or "auto" '
                             "(default: exact below 100k images, approximate above)")
    parser.add_argument("--add", action="store_true", help="append the images to an existing index")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an index already at -o that another model built (refused without it)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default 64)")
    parser.add_argument("--workers", type=num_workers_arg, default="auto",
                        help="image-decoding workers: auto (cores beside the model's threads) or a number")
    parser.add_argument("--num-workers", dest="workers", type=num_workers_arg, default=argparse.SUPPRESS,
                        help=argparse.SUPPRESS)  # the old spelling, kept working
    parser.add_argument("--shard-size", type=int, default=10_000,
                        help="images per resumable descriptor shard (default 10000)")
    add_device_argument(parser)
    parser.add_argument("--nprobe", type=int, help="IVF: lists visited per query")
    parser.add_argument("--ef-search", type=int, help="HNSW: candidate list size per query")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    add_scales_argument(parser, "; recorded in the index, queries and --add follow it")
    add_full_decode_argument(parser, "; recorded in the index, queries, --add and serve follow it")
    parser.add_argument("--dba", type=dba_arg, metavar="N[,ALPHA]",
                        help="database-side augmentation of the indexed vectors over their N nearest others, weight "
                             "similarity^ALPHA (default ALPHA 3); recorded in the index, which then refuses --add")
    milvus = parser.add_argument_group("Milvus backend (docs/SCALING.md)")
    milvus.add_argument("--backend", choices=("faiss", "milvus"), default="faiss",
                        help="where the vectors live: a faiss file in -o (default) or a Milvus collection")
    milvus.add_argument("--milvus-uri", help="a local .db file (Milvus Lite) or http(s)://host:port of a Milvus "
                                             "server or cluster (token from $MILVUS_TOKEN, never stored)")
    milvus.add_argument("--collection", default="vitrieval", help="Milvus collection name (default vitrieval)")
    milvus.add_argument("--milvus-index", default="auto",
                        help="Milvus vector index: FLAT (exact), IVF_FLAT, IVF_SQ8, IVF_PQ, HNSW, HNSW_SQ, AUTOINDEX "
                             "or auto (default: FLAT below 100k images, HNSW above)")
    parser.add_argument("--runtime", default="torch", choices=["torch", "onnx"],
                        help="what embeds the images of a new index: torch (default) or onnx (the model's "
                             "model.onnx from `vitrieval export`, one process)")
    return parser


def run(args: argparse.Namespace) -> int:
    """Build (or extend) the index; prints a one-line summary and the skipped files."""
    from vitrieval.disk_errors import naming
    from vitrieval.distributed import process_group

    if args.remove is not None:
        if args.descriptors:
            raise CLIError("--remove and --descriptors are separate commands")
        with naming(args.output):  # a full disk, a read-only folder: one line naming it (cli.report_error)
            return _remove(args)
    if args.descriptors:
        with naming(args.output):
            return _from_descriptors(args)
    if args.images is None and args.table is None:
        raise CLIError("give the collection: --images DIR, --table T.csv, --descriptors D.npy|DIR, or --remove ID")
    images = args.images if args.images is not None else args.table
    if not Path(images).exists():
        raise CLIError(f"{'--images' if args.images is not None else '--table'} {images} does not exist")
    if args.batch_size < 1 or args.shard_size < 1:
        raise CLIError("--batch-size and --shard-size must be >= 1")
    if args.add and (args.scales is not None or args.dba is not None or args.full_decode):
        raise CLIError("--scales / --dba / --full-decode are set when an index is built; --add follows the "
                       "index's own")
    if args.add and args.model:
        raise CLIError("--add embeds with the index's own model (its model folder); --model builds a new index")
    if not args.add and not args.checkpoint and not args.model:
        raise CLIError("--checkpoint or --model is required to build an index (only --add can reuse the index's "
                       "model)")
    if not args.add:
        _model_for_new_index(args)

    with process_group() as ctx:  # under torchrun: the ranks share the embedding, rank 0 writes, prints and logs
        quiet = _quiet_logging() if not ctx.is_main else None
        try:
            with naming(args.output):
                return _run(args, images, ctx)
        except Exception as exc:
            if (not is_user_error(exc) or getattr(exc, "raised_on_rank", None) != 0
                    or getattr(args, "verbose", False)):
                raise
            # rank 0's error, raised on every rank: rank 0 reports it (as ``vitrieval`` does), before anyone exits
            code = report_error(args.command, exc) if ctx.is_main else 2
            ctx.barrier()
            return code
        finally:
            if quiet is not None:
                quiet()


def refuse_other_models_index(output: Path, checkpoint: Path | None, wanted: str | None = None,
                              named: str | None = None) -> None:
    """Refuse to rebuild ``output`` when it holds a complete index another model built (``--overwrite`` replaces
    it; a rebuild with the same model, or of an interrupted build, goes ahead). The model: the folder
    ``checkpoint``, or its fingerprint ``wanted`` (``named`` as the user gave it)."""
    import json

    from vitrieval.index import INFO_FILE
    from vitrieval.index.manifest import read_manifest
    from vitrieval.model import CONFIG_FILE, resolve_model_dir

    if not (output / INFO_FILE).is_file():
        return
    try:
        held = read_manifest(output)[0]
        if wanted is None and checkpoint is not None:
            wanted = json.loads((resolve_model_dir(checkpoint) / CONFIG_FILE).read_text()).get("fingerprint")
    except (OSError, ValueError):
        return  # a damaged index.json or model folder: the build names it
    if wanted and held.fingerprint != wanted:
        raise CLIError(f"{output} already holds an index of another model ({held.checkpoint}, fingerprint "
                       f"{held.fingerprint}; {named or f'--checkpoint {checkpoint}'} is {wanted}): pass "
                       "--overwrite to replace it, use --add to extend it, or choose another -o")


def load_index_for_queries(args: argparse.Namespace, **options: object) -> Index:
    """The index at ``--index`` for ``search`` / ``serve``: its own model folder, the one ``--checkpoint`` names (it
    moved), or ``--model NAME [--pretrained-file F] ...`` made again (refused unless it is the index's model). The
    model is loaded on first use (``serve`` takes a writing service's folder lock before)."""
    from vitrieval.cli.retrieval_options import encoder_from_args
    from vitrieval.index import Index

    index = Index.load(args.index, checkpoint=args.checkpoint, device=args.device, **options)
    if args.model:
        from vitrieval.amp import resolve_device

        index.use_encoder_from(lambda: encoder_from_args(args).to(resolve_device(args.device)).eval(),
                               f"--model {args.model}")
    return index


def model_into_index(args: argparse.Namespace) -> Path:
    """``index --model NAME [--pretrained-file F] [--pooling P] [--image-size S]``: the timm model as a model folder
    ``OUT/model`` (written unless the same model is already there; every torchrun rank writes the same bytes
    atomically), after the check that ``OUT`` holds no other model's index."""
    import json

    from vitrieval.cli.retrieval_options import encoder_from_args
    from vitrieval.model import CONFIG_FILE

    output = Path(args.output)
    encoder = encoder_from_args(args)
    fingerprint = encoder.fingerprint()
    if not args.overwrite:
        refuse_other_models_index(output, None, fingerprint, f"--model {args.model}")
    folder = output / "model"
    try:
        same = json.loads((folder / CONFIG_FILE).read_text()).get("fingerprint") == fingerprint
    except (OSError, ValueError):
        same = False
    if not same:
        encoder.save(folder, extra={"source": {"model": args.model, "pretrained_file": args.pretrained_file}})
    return folder


def _quiet_logging() -> Callable[[], None]:
    """Errors only from this rank's loggers (rank 0 logs for everyone); returns what undoes it."""
    import logging

    loggers = [logging.getLogger(), logging.getLogger("vitrieval")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)

    def undo() -> None:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
    return undo


def _run(args: argparse.Namespace, images: str, ctx: DistContext) -> int:
    from vitrieval.index import INFO_FILE, Index

    started = time.time()
    if args.add:
        if args.runtime != "torch":
            raise CLIError("--runtime onnx builds a new index; --add embeds with the torch model")
        if not (Path(args.output) / INFO_FILE).is_file():
            raise CLIError(f"--add: {args.output} is not an index folder (no {INFO_FILE}); build it first")
        index = Index.load(args.output, checkpoint=args.checkpoint, device=args.device)
        before = len(index)
        report = index.add(images, batch_size=args.batch_size, num_workers=args.workers, progress=args.progress,
                           distributed=ctx)
        if args.nprobe or args.ef_search:
            apply_search_params(index, args)
            if ctx.is_main:
                index.save()
            ctx.barrier()
        if not ctx.is_main:
            return 0
        print(f"added {report.added} image(s) to {args.output}: {before} -> {len(index)} "
              f"({report.already_indexed} already indexed, {len(report.skipped)} unreadable skipped) "
              f"in {time.time() - started:.1f} s")
        skipped = report.skipped
    else:
        index = _build(args, images, ctx)
        if not ctx.is_main:  # the folder is complete (build waits for rank 0); rank 0 reports
            return 0
        skipped = index.skipped
        print(f"indexed {len(index)} image(s) into {args.output} ({index.factory}, {index.descriptor_dim}-d, model "
              f"{index.fingerprint}; {len(skipped)} unreadable skipped) in {time.time() - started:.1f} s")
    for path in skipped[:20]:
        print(f"  skipped (unreadable): {path}")
    if len(skipped) > 20:
        print(f"  ... and {len(skipped) - 20} more (all listed in {Path(args.output) / INFO_FILE})")
    return 0


def build_options(args: argparse.Namespace) -> BuildOptions:
    """The one :class:`~vitrieval.index.BuildOptions` of the command line (either store)."""
    from vitrieval.index import BuildOptions, MilvusOptions

    milvus = None
    if args.backend == "milvus":
        if args.dba or args.runtime != "torch" or args.factory != "auto":
            raise CLIError("--factory, --dba and --runtime onnx apply to the faiss backend (a Milvus build embeds with "
                           "torch and stores the vectors as they are extracted, in its --milvus-index)")
        milvus = MilvusOptions(args.milvus_uri, collection=args.collection, index_type=args.milvus_index,
                               overwrite=args.overwrite)
    return BuildOptions(factory=args.factory, batch_size=args.batch_size, num_workers=args.workers,
                        shard_size=args.shard_size, device=args.device, nprobe=args.nprobe, ef_search=args.ef_search,
                        progress=args.progress, scales=args.scales, dba=args.dba, runtime=args.runtime,
                        fast_decode=not args.full_decode, milvus=milvus)


def _build(args: argparse.Namespace, images: str, ctx: DistContext) -> Index | None:
    """Build the index of ``images`` with faiss, or into Milvus with the ``--milvus-*`` options."""
    from vitrieval.index import Index

    return Index.build(args.checkpoint, images, args.output, build_options(args), distributed=ctx)


def _model_for_new_index(args: argparse.Namespace) -> None:
    """The model of a new index (from images or from descriptors), once the store options are consistent:
    ``--model`` written into the index folder (search / serve / --add then need nothing else) as
    ``args.checkpoint``, or ``--checkpoint`` refused over another model's index unless ``--overwrite``."""
    if (args.backend == "milvus") != bool(args.milvus_uri):
        raise CLIError("--backend milvus needs --milvus-uri (and --milvus-uri needs --backend milvus)")
    if args.model:
        args.checkpoint = str(model_into_index(args))
    elif not args.overwrite:
        refuse_other_models_index(Path(args.output), Path(args.checkpoint))


def _from_descriptors(args: argparse.Namespace) -> int:
    """``--descriptors``: an index of descriptors computed elsewhere (:mod:`vitrieval.index.external`)."""
    from vitrieval.index import Index
    from vitrieval.index.external import read_descriptors

    if args.add or args.images is not None:
        raise CLIError("--descriptors builds a new index from descriptors: without --add or --images")
    if not args.checkpoint and not args.model:
        raise CLIError("--descriptors needs the model that made them, --checkpoint RUN or --model NAME (its "
                       "fingerprint and pre-processing embed the queries)")
    if not Path(args.descriptors).exists():
        raise CLIError(f"--descriptors {args.descriptors} does not exist")
    _model_for_new_index(args)
    started = time.time()
    x, records = read_descriptors(args.descriptors, args.table)
    index = Index.from_descriptors(args.checkpoint, x, [r.path for r in records], [r.label for r in records],
                                   args.output, build_options(args), class_names=[r.class_name for r in records])
    print(f"indexed {len(index)} descriptor(s) into {args.output} ({index.factory}, {index.descriptor_dim}-d, model "
          f"{index.fingerprint}) in {time.time() - started:.1f} s")
    return 0


def _remove(args: argparse.Namespace) -> int:
    """``--remove``: every id must be in the index, else nothing is removed (exit 2)."""
    from vitrieval.index import INFO_FILE, Index

    if args.add:
        raise CLIError("--remove and --add are separate commands: run one, then the other")
    if not (Path(args.output) / INFO_FILE).is_file():
        raise CLIError(f"--remove: {args.output} is not an index folder (no {INFO_FILE})")
    index = Index.load(args.output, checkpoint=args.checkpoint, device=args.device)
    missing = [i for i in args.remove if not index.has(i)]
    if missing:
        raise CLIError(f"--remove: no image with id {', '.join(map(str, missing))} in {args.output}; nothing "
                       "removed")
    before = len(index)
    removed = index.remove(args.remove)
    print(f"removed {removed} image(s) from {args.output}: {before} -> {len(index)}")
    return 0


def apply_search_params(index: Index, args: argparse.Namespace) -> None:
    """Set IVF nprobe / HNSW efSearch from ``--nprobe`` / ``--ef-search`` (shared by index and search)."""
    try:
        if args.nprobe:
            index.nprobe = args.nprobe
        if args.ef_search:
            index.ef_search = args.ef_search
    except AttributeError as exc:
        raise CLIError(str(exc)) from None
