"""``vitrieval analyze``: the paper's descriptor figures for your models, and Table 1's cost measurement.

    vitrieval analyze --checkpoint runs/irt-l --checkpoint runs/irt-r --dataset sop --data-root /data/SOP -o an/
    vitrieval analyze --model deit_small_patch16_224 --pretrained-file deit_s.pth --checkpoint runs/irt-r \\
        --dataset rparis6k --data-root /data/rparis6k --image-size 224 -o an/
    vitrieval analyze --cost --preset table1-r50 -o cost/          (or --cost --model NAME)

Descriptor analysis writes OUTPUT/analysis.json and a self-contained OUTPUT/analysis.html with, per model, the
cumulative PCA energy of the test descriptors (Figs 2-3, ``cumulative_energy``) and the cosine histograms of
positive and negative pairs (Fig 5, ``positive_pairs`` / ``negative_pairs``, their ``overlap`` = histogram
intersection). Pairs: every unordered pair of distinct test images (SOP, CUB, folder), every query x gallery pair
(In-Shop), every query x database pair under the Medium protocol with junk left out (ROxford5k, RParis6k).
``--model`` (IRT_O, off-the-shelf) is analysed first, then each ``--checkpoint``. ``--pca 256`` reduces each model's
descriptors first (pool -> PCA -> L2), with a PCA fitted as ``vitrieval evaluate --pca`` fits it: on the training
split of a category-level set; for ROxford5k / RParis6k give ``--pca-fit-dataset sfm120k --pca-fit-root DIR`` as the
paper does (without it, their database, with a warning). Fig 5 is RParis (Medium), 224 px, 256-d::

    vitrieval analyze --model deit_small_patch16_224 --checkpoint runs/irt-l --checkpoint runs/irt-r \\
        --dataset rparis6k --data-root /data/rparis6k --image-size 224 --pca 256 \\
        --pca-fit-dataset sfm120k --pca-fit-root /data/sfm120k -o fig5/

``--cost`` writes OUTPUT/cost.json: parameters, FLOPs (torch's FlopCounterMode, one image) and images/s of the
encoder on this machine (no weights needed).
"""

from __future__ import annotations

import argparse

from vitrieval.cli import CLIError, num_workers_arg
from vitrieval.cli.retrieval_options import add_full_decode_argument
from vitrieval.config import POOLINGS


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``analyze``."""
    p = subparsers.add_parser("analyze", help="PCA energy and pair similarities (Figs 2, 3, 5); --cost: Table 1",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", action="append", default=[], help="trained model folder (repeatable)")
    p.add_argument("--model", help="timm model name: off-the-shelf features (IRT_O); with --cost, the backbone")
    p.add_argument("--pretrained-file", help="with --model: timm weights file, offline")
    p.add_argument("--pooling", choices=POOLINGS,
                   help="with --model: the descriptor's pooling (default cls for a ViT; a convnet needs one of mac, "
                        "spoc, gem, rmac)")
    p.add_argument("--label", action="append", default=[],
                   help="a name per model, in order (--model first, then each --checkpoint)")
    p.add_argument("--dataset", help="sop | cub | inshop | roxford5k | rparis6k | folder | csv")
    p.add_argument("--data-root", help="the dataset folder")
    p.add_argument("--output", "-o", required=True, help="output folder")
    p.add_argument("--image-size", type=int, help="input size (default: the model's)")
    p.add_argument("--bins", type=int, default=200, help="histogram bins over [-1, 1] (default 200)")
    p.add_argument("--pca", type=int, help="reduce the descriptors to this dimension first (Fig 5: 256)")
    p.add_argument("--pca-fit-dataset", help="with --pca: fit it on this dataset's training split (landmarks: sfm120k)")
    p.add_argument("--pca-fit-root", help="with --pca-fit-dataset: its folder")
    p.add_argument("--pca-fit-max-images", type=int, default=0, help="with --pca: at most this many fit images")
    p.add_argument("--cost", action="store_true", help="measure parameters, FLOPs and images/s instead")
    p.add_argument("--preset", help="with --cost: the preset whose model to measure")
    p.add_argument("--repeats", type=int, default=3, help="with --cost: timed batches (default 3)")
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass (--cost: default 8)")
    p.add_argument("--workers", type=num_workers_arg, default="auto",
                   help="image-decoding workers: auto (cores beside the model's threads) or a number")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--amp", default="auto", choices=("auto", "bf16", "fp16", "off"), help="autocast policy")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    add_full_decode_argument(p)
    return p


def _cost(args: argparse.Namespace) -> int:
    from pathlib import Path

    from vitrieval.amp import resolve_device
    from vitrieval.analyze.cost import measure
    from vitrieval.config import ModelConfig
    from vitrieval.io_utils import atomic_write_json
    from vitrieval.presets import load_preset

    if bool(args.preset) == bool(args.model):
        raise CLIError("--cost needs --preset NAME or --model NAME (one of them)")
    model = load_preset(args.preset).model if args.preset else ModelConfig(name=args.model)
    batch = 8 if args.batch_size == 64 else args.batch_size
    result = measure(model, image_size=args.image_size, batch_size=batch, repeats=args.repeats,
                     device=str(resolve_device(args.device)))
    if args.preset:
        result["preset"] = args.preset
    path = Path(args.output) / "cost.json"
    atomic_write_json(path, result)
    print(f"{result['model']} at {result['image_size']} px: {result['params_m']:.1f} M parameters, "
          f"{result['gflops']:.2f} GFLOPs, {result['images_per_s']:.1f} images/s on {result['device']} "
          f"({result['threads']} threads); written to {path}")
    return 0


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    if args.cost:
        return _cost(args)
    if not args.checkpoint and not args.model:
        raise CLIError("name at least one model: --checkpoint DIR (repeatable) and/or --model NAME")
    if not args.dataset or not args.data_root:
        raise CLIError("--dataset and --data-root are needed (or --cost)")
    if not Path(args.data_root).expanduser().exists():
        raise CLIError(f"--data-root {args.data_root} does not exist")
    if args.pretrained_file and not args.model:
        raise CLIError("--pretrained-file goes with --model")
    if args.bins < 2:
        raise CLIError(f"--bins must be >= 2, got {args.bins}")
    sources = ([("model", args.model)] if args.model else []) + [("checkpoint", c) for c in args.checkpoint]
    if args.label and len(args.label) != len(sources):
        raise CLIError(f"{len(args.label)} --label for {len(sources)} models")
    from vitrieval.amp import resolve_device
    from vitrieval.analyze.models import benchmark_descriptors, write_analysis
    from vitrieval.cli.evaluate_cmd import encoder_from_args
    from vitrieval.evaluation.pca_fit import PCAOptions
    from vitrieval.evaluation.protocol import ExtractionOptions

    if args.pca is not None and args.pca < 1:
        raise CLIError(f"--pca must be >= 1, got {args.pca}")
    if args.pca_fit_root and not Path(args.pca_fit_root).expanduser().exists():
        raise CLIError(f"--pca-fit-root {args.pca_fit_root} does not exist")
    try:
        pca = PCAOptions(dim=args.pca, fit_dataset=args.pca_fit_dataset, fit_root=args.pca_fit_root,
                         fit_max_images=args.pca_fit_max_images, save=False)
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    device = resolve_device(args.device)
    extraction = ExtractionOptions(batch_size=args.batch_size, num_workers=args.workers, amp=args.amp,
                                   progress=args.progress, fast_decode=not args.full_decode)
    descriptors, protocols, records = {}, {}, {}
    for i, (kind, value) in enumerate(sources):
        name = args.label[i] if args.label else (f"IRT_O ({value})" if kind == "model" else Path(value).name)
        if name in descriptors:
            name = f"{name} ({i + 1})"
        one = argparse.Namespace(checkpoint=value if kind == "checkpoint" else None,
                                 model=value if kind == "model" else None, pretrained_file=args.pretrained_file,
                                 image_size=args.image_size, pooling=args.pooling if kind == "model" else None)
        encoder = encoder_from_args(one).to(device).eval()
        record: dict = {}
        descriptors[name], protocols[name] = benchmark_descriptors(
            encoder, args.dataset, args.data_root, image_size=args.image_size if kind == "checkpoint" else None,
            extraction=extraction, pca=pca, pca_record=record)
        records[name] = record["pca"]
    data = write_analysis(args.output, args.dataset, descriptors, protocols, bins=args.bins, pca=records)
    for name, m in data["models"].items():
        overlap = "n/a" if m["overlap"] is None else f"{m['overlap']:.3f}"
        print(f"{name}: {m['descriptor_dim']}-d; 90% energy in {m['components_for']['0.9']} components; "
              f"{m['positive_pairs']:,} positive / {m['negative_pairs']:,} negative pairs; overlap {overlap}")
    print(f"written: {Path(args.output) / 'analysis.json'}, {Path(args.output) / 'analysis.html'}")
    return 0
