"""``vitrieval embed``: a collection's descriptors as ``.npy`` shards with a ``path,label`` CSV beside each.

    vitrieval embed --checkpoint runs/sop --images ./catalog -o catalog.emb
    vitrieval embed --model deit_small_patch16_224 --pretrained-file deit_s.pth --table photos.csv -o photos.emb
    torchrun --nproc_per_node 8 -m vitrieval embed --checkpoint runs/sop --images /data/photos -o photos.emb

The extraction of ``vitrieval index`` without the index (as clip-retrieval's ``inference`` feeds autofaiss): shards
of ``--shard-size`` images (``OUT/shards/NNNNN.npy``: float32, one row per readable image; ``NNNNN.csv``: their
path and label; ``OUT/embeddings.json``: the model, its pre-processing and the shards). An interrupted run resumes
(rerun the same command); under torchrun the ranks share each shard. ``vitrieval index`` with the same model and
images and ``-o OUT`` builds its index from these shards without embedding again. ``--model`` writes its model
folder into ``OUT/model``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from vitrieval.cli import CLIError, num_workers_arg
from vitrieval.cli.retrieval_options import (
    add_device_argument,
    add_full_decode_argument,
    add_model_arguments,
    add_scales_argument,
)


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``embed``."""
    parser = subparsers.add_parser("embed", help="embed a collection into .npy shards (+ path,label CSVs)",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser, required=True)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", help="folder of images (searched recursively)")
    source.add_argument("--table", help="CSV table with a 'path' column (and optionally 'label')")
    parser.add_argument("-o", "--output", required=True, help="folder to write the shards into")
    parser.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default 64)")
    parser.add_argument("--workers", type=num_workers_arg, default="auto",
                        help="image-decoding workers: auto (cores beside the model's threads) or a number")
    parser.add_argument("--shard-size", type=int, default=10_000,
                        help="images per resumable shard (default 10000)")
    add_device_argument(parser)
    add_scales_argument(parser)
    add_full_decode_argument(parser)
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    return parser


def run(args: argparse.Namespace) -> int:
    """Embed the collection; print a one-line summary."""
    from vitrieval.cli.index_cmd import model_into_index, refuse_other_models_index
    from vitrieval.distributed import process_group
    from vitrieval.index.build import BuildOptions
    from vitrieval.index.embeddings import embed_collection

    images = args.images if args.images is not None else args.table
    if not Path(images).exists():
        raise CLIError(f"{'--images' if args.images is not None else '--table'} {images} does not exist")
    if args.batch_size < 1 or args.shard_size < 1:
        raise CLIError("--batch-size and --shard-size must be >= 1")
    args.overwrite = False
    if args.model:
        args.checkpoint = str(model_into_index(args))
    else:
        refuse_other_models_index(Path(args.output), Path(args.checkpoint))
    started = time.time()
    options = BuildOptions(batch_size=args.batch_size, num_workers=args.workers, shard_size=args.shard_size,
                           device=args.device, progress=args.progress, scales=args.scales,
                           fast_decode=not args.full_decode)
    with process_group() as ctx:
        done = embed_collection(args.checkpoint, images, args.output, options, ctx)
    if done is None:  # not rank 0
        return 0
    print(f"embedded {done.count} image(s) into {len(done.info['shards'])} shard(s) in {args.output} "
          f"({done.info['descriptor_dim']}-d, model {done.info['fingerprint']}; {len(done.skipped)} unreadable "
          f"skipped) in {time.time() - started:.1f} s")
    for path in done.skipped[:20]:
        print(f"  skipped (unreadable): {path}")
    return 0
