"""Cost of one SfM-120k tuple-training epoch: hard-negative mining vs the training steps, and the full-size estimate.

Runs the real code (``vitrieval.training.mining`` + ``vitrieval.training.tuple_trainer``) for one epoch with a
reduced pool on an SfM-120k-layout folder (the real one, or a stand-in converted from a class-per-folder set, e.g.
COIL-20), times mining (embedding queries + pool, ranking) and the steps separately, and extrapolates linearly to
the paper's epoch (2,000 queries + a 22,000-image pool to embed; 400 steps of 5 tuples x 7 images). The baseline
in the same run is a plain forward pass over the same number of images, so the table also gives mining's overhead
over bare embedding.

    python benchmarks/tuple_epoch.py --coil20 ../shared/data/coil20            # DeiT-S 224, random init, CPU
    python benchmarks/tuple_epoch.py --data /data/train --queries 200 --pool 2000 --device cuda
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import torch

from vitrieval.config import apply_overrides
from vitrieval.presets import load_preset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", help="an SfM-120k layout (the folder holding retrieval-SfM-120k/)")
    source.add_argument("--coil20", help="a class-per-folder set converted to the layout in a temporary folder")
    parser.add_argument("--preset", default="sfm120k-irt-r-deit-s")
    parser.add_argument("--queries", type=int, default=40, help="query-positive pairs this epoch (paper: 2000)")
    parser.add_argument("--pool", type=int, default=400, help="negative pool size (paper: 22000)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--amp", default="auto")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    tmp = Path(tempfile.mkdtemp(prefix="tuple_epoch_"))
    try:
        root = Path(args.data) if args.data else tmp / "train"
        if args.coil20:
            from vitrieval.data.sfm120k_layout import sfm120k_from_folder

            sfm120k_from_folder(args.coil20, root, val_fraction=0.25, pairs_per_cluster=None, seed=0)
        cfg = apply_overrides(load_preset(args.preset), [
            f"data.root={root}", "model.pretrained=false", f"train.device={args.device}", f"train.amp={args.amp}",
            f"data.num_workers={args.workers}", "tuples.epochs=1", f"tuples.query_size={args.queries}",
            f"tuples.pool_size={args.pool}", "train.eval_every=0", "train.eval_ks=[1]", "train.eval_max_images=2",
            "train.log_every=1000000"])
        figures = run_epoch(cfg, tmp / "run")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print_table(cfg, figures)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))


def run_epoch(cfg, out: Path) -> dict[str, float]:
    """Mine and train one epoch with the real trainer; time the parts and a plain embedding of as many images."""
    from vitrieval.embed import ExtractionOptions, extract
    from vitrieval.training.tuple_trainer import TupleTrainer

    trainer = TupleTrainer(cfg, out, progress=False)
    t0 = time.perf_counter()
    trainer.tuples = trainer.mine()
    mining = time.perf_counter() - t0
    embedded = len(trainer.tuples) + min(cfg.tuples.pool_size, len(trainer.train_table))
    t0 = time.perf_counter()
    extract(trainer.encoder, trainer.train_table.select([i < embedded for i in range(len(trainer.train_table))]),
            ExtractionOptions(batch_size=cfg.tuples.mining_batch_size, num_workers=cfg.data.num_workers,
                              amp=cfg.train.amp, resize=cfg.data.eval_resize, output="normalized", progress=False))
    plain = time.perf_counter() - t0
    steps, images = 0, 0
    t0 = time.perf_counter()
    for batch in trainer._loader(trainer.tuples):
        trainer.step(batch, trainer.tuples.tuple_size)
        steps += 1
        images += len(batch["images"])
    training = time.perf_counter() - t0
    full_embed = 2000 + 22000
    full_steps = 400
    return {
        "device": str(trainer.device), "model": cfg.model.name, "image_size": cfg.model.image_size,
        "queries": len(trainer.tuples), "pool": embedded - len(trainer.tuples), "mining_s": mining,
        "plain_embedding_s": plain, "mining_images_per_s": embedded / mining, "steps": steps,
        "training_s": training, "training_images_per_s": images / training, "step_s": training / steps,
        "full_epoch_mining_s_est": mining / embedded * full_embed,
        "full_epoch_training_s_est": training / steps * full_steps,
    }


def print_table(cfg, f: dict[str, float]) -> None:
    print(f"\n{f['model']} {f['image_size']} px on {f['device']}, {cfg.tuples.negatives} negatives, "
          f"{cfg.tuples.per_batch} tuples a step, amp={cfg.train.amp}")
    print(f"{'part':<34}{'seconds':>10}{'images/s':>10}")
    print(f"{'mining (' + str(f['queries']) + ' queries + ' + str(f['pool']) + ' pool)':<34}"
          f"{f['mining_s']:>10.1f}{f['mining_images_per_s']:>10.1f}")
    print(f"{'plain embedding, same images':<34}{f['plain_embedding_s']:>10.1f}"
          f"{(f['queries'] + f['pool']) / f['plain_embedding_s']:>10.1f}   mining / plain = "
          f"{f['mining_s'] / f['plain_embedding_s']:.2f}")
    print(f"{'training (' + str(f['steps']) + ' steps)':<34}{f['training_s']:>10.1f}"
          f"{f['training_images_per_s']:>10.1f}")
    print(f"full paper epoch, estimated: mining {f['full_epoch_mining_s_est'] / 60:.0f} min + training "
          f"{f['full_epoch_training_s_est'] / 60:.0f} min")


if __name__ == "__main__":
    main()
