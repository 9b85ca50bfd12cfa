"""``vitrieval train``: fine-tune an encoder with the IRT objective (also under torchrun)."""

from __future__ import annotations

import argparse

from vitrieval.cli import add_set_flag


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("train", help="train an encoder (IRT_L / IRT_R)",
                       description="Train from a preset or a YAML config; `--set key=value` overrides any value. "
                                   "Under torchrun: `torchrun --nproc_per_node N -m vitrieval train ...`.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--preset", help="a shipped preset (see `vitrieval presets`)")
    src.add_argument("--config", help="a YAML config file")
    p.add_argument("--data-root", help="dataset folder (sets data.root)")
    p.add_argument("--output", "-o", required=True, help="output folder (model, checkpoints, logs, metrics)")
    add_set_flag(p, "override config values, e.g. --set train.iterations=500 train.lr=1e-4 (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue from OUTPUT/checkpoints/last.pt")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def run(args: argparse.Namespace) -> int:
    from vitrieval.config import apply_overrides, load_config
    from vitrieval.presets import load_preset

    config = load_preset(args.preset) if args.preset else load_config(args.config)
    overrides = list(args.overrides)
    if args.data_root:
        overrides.append(f"data.root={args.data_root}")
    config = apply_overrides(config, overrides)

    from vitrieval.training import train

    try:
        result = train(config, args.output, resume=args.resume, progress=not args.no_progress)
    except KeyboardInterrupt:
        from pathlib import Path

        from vitrieval.training.checkpoint import LAST

        last = Path(args.output) / "checkpoints" / LAST
        if last.is_file():
            raise KeyboardInterrupt(f"the same command with --resume continues from {last}") from None
        raise
    if result.recall_at_k:
        table = "  ".join(f"R@{k} {100 * v:5.1f}" for k, v in result.recall_at_k.items())
        print(f"held-out classes: {table}")
    print(f"model: {result.output_dir / 'model'}  ({result.iterations} iterations, {result.seconds:.0f} s)")
    return 0
