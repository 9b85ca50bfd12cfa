"""``vitrieval export``: the whole encoder as one ONNX graph, checked against torch before it is written.

    vitrieval export --checkpoint runs/sop                 # -> runs/sop/model/model.onnx
    vitrieval export --checkpoint runs/sop/model -o encoder.onnx --images queries/
    vitrieval export --model deit_small_patch16_224 --pretrained-file deit_s.pth -o deit_s.onnx

Then ``vitrieval serve --index catalog.idx --runtime onnx`` serves with onnxruntime (no torch needed there).
"""

from __future__ import annotations

import argparse

from vitrieval.cli import CLIError, check_output_file
from vitrieval.cli.retrieval_options import add_model_arguments, encoder_from_args


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``export``."""
    parser = subparsers.add_parser("export", help="export a trained model to ONNX (parity-checked)",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser, required=True)
    parser.add_argument("--format", default="onnx", choices=["onnx"], help="export format (default onnx)")
    parser.add_argument("-o", "--output", help="file to write (default: <model folder>/model.onnx; needed with "
                                               "--model)")
    parser.add_argument("--images", help="folder (or CSV) of images for the parity check (default: generated)")
    parser.add_argument("--parity-images", type=int, default=4, help="how many of --images to check (default 4)")
    parser.add_argument("--resize", default="shorter", choices=["shorter", "square"],
                        help="eval resize of the parity check and the recorded default (default shorter)")
    return parser


def run(args: argparse.Namespace) -> int:
    """Load the model, export it, check it, write it; print the parity."""
    from vitrieval.data.collection import collection_table
    from vitrieval.model import resolve_model_dir
    from vitrieval.onnx_export import export_onnx, parity_images
    from vitrieval.runtime.onnx_file import default_onnx_path

    if args.parity_images < 1:
        raise CLIError(f"--parity-images must be >= 1, got {args.parity_images}")
    if args.model and not args.output:
        raise CLIError("--model has no model folder to write into: give -o FILE.onnx")
    out = args.output or str(default_onnx_path(args.checkpoint))
    check_output_file(out, "-o", "model.onnx")
    if args.checkpoint:
        args.checkpoint = str(resolve_model_dir(args.checkpoint))
    encoder = encoder_from_args(args).to("cpu").eval()
    paths = [r.path for r in collection_table(args.images).records[:args.parity_images]] if args.images else []
    report = export_onnx(encoder, out, parity_images(paths), resize=args.resize)
    print(f"parity: max abs difference {report.max_abs_diff:.3e} on {report.images} images (limit 1e-04)")
    print(f"wrote {report.path} (model {report.info.fingerprint}, {report.info.descriptor_dim}-d, "
          f"{report.seconds:.1f} s)")
    return 0
