"""The input pipeline against the model's speed: training and extraction images/s, all measured in one run.

For each folder of photos (class sub-folders; ``--data`` several times) and a generated set of large JPEGs (written
to a temporary folder and deleted after: smooth colour fields with fine noise, or with ``--large-from FOLDER`` that
folder's photos upsampled), with a preset's model (``--preset``, default cpu-tiny: DeiT-Tiny, 64 px, 8-px patches):

training (P x K batches of 32, the real trainer, ``--iterations`` steps; img/s from the first step to the last,
loader start-up included); every row but the last two with ``data.fast_decode`` on (the default) and off:
  - ``defaults``          the preset as shipped (``data.num_workers=auto``), one loader per run;
  - ``workers=0`` / ``1`` / ``2``  an explicit worker count, one loader per run;
  - ``per-epoch, 2``      main before issue 15: a new DataLoader with 2 workers every epoch;
  - ``model only``        the trainer's step on batches decoded beforehand (the ceiling);
extraction (``embed.extract``, batches of 64, every image of the folder):
  - ``extract defaults``  ``num_workers=auto``, ``fast_decode`` on and off;
  - ``bare forward``      the encoder on tensors decoded beforehand (the ceiling);
  - ``torchvision W``     ``ImageFolder`` + ``DataLoader(num_workers=W)`` + the same forward: what a user writes.
where the time goes, one core, ms per image: decode (full / draft), the train transform after each, collate.

Ratios are to ``workers=0`` (training) and to the bare forward (extraction), measured in the same process, so
machine noise hits them alike; with ``--repeats N`` each figure is the best of N.

    python benchmarks/input_pipeline.py --data ../shared/data/orl_faces --data ../shared/data/coil20
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from vitrieval.amp import autocast_context
from vitrieval.config import Config, apply_overrides
from vitrieval.data.dataset import collate_skip_bad
from vitrieval.data.loading import resolve_num_workers
from vitrieval.data.readers import read_dataset
from vitrieval.data.transforms import eval_transform
from vitrieval.embed import ExtractionOptions, extract
from vitrieval.model import Encoder
from vitrieval.presets import load_preset
from vitrieval.training.pk_trainer import Trainer


class PerEpochTrainer(Trainer):
    """The P x K trainer with main's loader before issue 15: a new DataLoader (and its workers) every epoch."""

    def _batches(self) -> Iterator[dict[str, Any]]:
        while True:
            self.sampler.set_epoch(self.epoch, self.batch_in_epoch)
            generator = torch.Generator().manual_seed(self.cfg.train.seed * 1_000_003 + self.epoch)
            loader = DataLoader(self.dataset, batch_sampler=self.sampler, num_workers=self.num_workers,
                                collate_fn=collate_skip_bad, pin_memory=self.device.type == "cuda",
                                generator=generator)
            for batch in loader:
                self.batch_in_epoch += 1
                yield batch
            self.epoch += 1
            self.batch_in_epoch = 0


def write_large_jpegs(root: Path, classes: int, per_class: int, size: tuple[int, int], seed: int = 0,
                      source: Path | None = None) -> Path:
    """``classes`` folders of ``per_class`` JPEGs of ``size`` (w, h), quality 90: smooth random colour fields with
    fine noise (photo-like spectra), or with ``source`` (a class-per-folder set) its photos upsampled bicubically
    (the first ``classes`` classes, ``per_class`` photos each, cycled), plus the same mild noise."""
    rng = np.random.default_rng(seed)
    w, h = size
    photos: list[list[str]] = []
    if source is not None:
        table = read_dataset("folder", source)
        by_class: dict[int, list[str]] = {}
        for rec in table:
            by_class.setdefault(rec.label, []).append(rec.path)
        photos = [paths for _, paths in sorted(by_class.items())][:classes]
        classes = len(photos)
    for c in range(classes):
        folder = root / f"class{c:03d}"
        folder.mkdir(parents=True)
        base = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
        for i in range(per_class):
            if photos:
                img = Image.open(photos[c][i % len(photos[c])]).convert("RGB").resize((w, h), Image.BICUBIC)
            else:
                coarse = np.clip(base.astype(np.int16) + rng.integers(-40, 40, base.shape), 0, 255).astype(np.uint8)
                img = Image.fromarray(coarse).resize((w, h), Image.BICUBIC)
            noise = rng.integers(-12, 12, (h, w, 3))
            pixels = np.clip(np.asarray(img, np.int16) + noise, 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{i:03d}.jpg", quality=90)
    return root


def config_for(root: Path, iterations: int, *extra: str) -> Config:
    return apply_overrides(load_preset(PRESET), [
        f"data.root={root}", f"train.iterations={iterations}", "train.eval_every=0",
        f"train.checkpoint_every={iterations}", f"train.log_every={iterations}", "train.eval_max_images=2", *extra])


def train_rate(cfg: Config, out: Path, trainer_cls: type[Trainer] = Trainer) -> float:
    """The trainer's own images/s over the run (first step to last, loader start-up included)."""
    shutil.rmtree(out, ignore_errors=True)
    result = trainer_cls(cfg, out, progress=False).run()
    return float([row for row in result.history if "images_per_second" in row][-1]["images_per_second"])


def model_only_rate(cfg: Config, out: Path) -> float:
    """The trainer's step on ``train.iterations`` batches decoded beforehand (in the main process)."""
    shutil.rmtree(out, ignore_errors=True)
    trainer = Trainer(apply_overrides(cfg, ["data.num_workers=0"]), out, progress=False)
    try:
        batches_iter = trainer._batches()
        batches = [next(batches_iter) for _ in range(cfg.train.iterations)]
        batches_iter.close()
        start = time.perf_counter()
        images = 0
        for batch in batches:
            trainer.step(batch)
            images += len(batch["images"])
        return images / (time.perf_counter() - start)
    finally:
        trainer.metrics.close()
        trainer.run_dir.close()


def extraction_rates(cfg: Config, root: Path, tv_workers: list[int], max_images: int) -> dict[str, float]:
    """``embed.extract`` (defaults, fast decoding on and off), a bare forward on decoded tensors, torchvision
    ImageFolder loops: img/s, on ``max_images`` evenly spaced images of the folder."""
    from torch.utils.data import Subset
    from torchvision.datasets import ImageFolder

    torch.manual_seed(0)
    encoder = Encoder(cfg.model).eval()
    device = next(encoder.parameters()).device
    table = read_dataset("folder", root).evenly_subsampled(max_images)
    n = len(table)
    rates: dict[str, float] = {}

    def timed(fn: Callable[[], int]) -> float:
        start = time.perf_counter()
        count = fn()
        return count / (time.perf_counter() - start)

    for fast in (True, False):
        rates[f"extract defaults{'' if fast else ', full decode'}"] = timed(
            lambda fast=fast: len(extract(encoder, table, ExtractionOptions(batch_size=64, progress=False,
                                                                            fast_decode=fast)).indices))
    transform = eval_transform(encoder.data_config)
    from vitrieval.data.images import load_image

    tensors = torch.stack([transform(load_image(path)) for path in table.paths])

    @torch.no_grad()
    def bare() -> int:
        for start in range(0, n, 64):
            with autocast_context(device, "auto"):
                encoder(tensors[start:start + 64])
        return n

    rates["bare forward"] = timed(bare)
    for workers in tv_workers:
        whole = ImageFolder(str(root), transform=transform)
        step = -(-len(whole) // max_images)
        folder = Subset(whole, range(0, len(whole), step))

        @torch.no_grad()
        def torchvision_loop(folder: Subset = folder, workers: int = workers) -> int:
            count = 0
            for images, _ in DataLoader(folder, batch_size=64, num_workers=workers):
                with autocast_context(device, "auto"):
                    encoder(images)
                count += len(images)
            return count

        rates[f"torchvision {workers}"] = timed(torchvision_loop)
    return rates


def stage_costs(cfg: Config, root: Path, max_images: int) -> dict[str, float]:
    """Where one image's time goes on one core, ms per image: reading + decoding (full, and with the train
    transform's fast-decode ``min_side``), the train transform (resize, crop, flip, to tensor, normalise) after
    each, and collating a batch of 32."""
    from vitrieval.data.images import load_image
    from vitrieval.data.transforms import train_transform

    encoder_cfg = {"image_size": cfg.model.image_size, "mean": (0.5,) * 3, "std": (0.5,) * 3}
    transform = train_transform(encoder_cfg, cfg.data.train_resize_ratio, fast_decode=True)
    paths = read_dataset("folder", root).evenly_subsampled(max_images).paths
    costs: dict[str, float] = {}
    for key, min_side in (("full", None), ("draft", transform.min_side)):
        start = time.perf_counter()
        images = [load_image(path, min_side=min_side) for path in paths]
        costs[f"decode, {key}"] = (time.perf_counter() - start) * 1e3 / len(paths)
        start = time.perf_counter()
        tensors = [transform(img) for img in images]
        costs[f"transform after {key}"] = (time.perf_counter() - start) * 1e3 / len(paths)
    items = [(t, 0, i) for i, t in enumerate(tensors)]
    start = time.perf_counter()
    for first in range(0, len(items), 32):
        collate_skip_bad(items[first:first + 32])
    costs["collate"] = (time.perf_counter() - start) * 1e3 / len(items)
    return costs


def measure(root: Path, name: str, iterations: int, scratch: Path, repeats: int,
            extract_max: int, rows: list[str] | None = None) -> dict[str, Any]:
    cfg = config_for(root, iterations)
    auto = resolve_num_workers("auto", "cpu")
    train: dict[str, float] = {}
    extraction: dict[str, float] = {}
    stages: dict[str, float] = {}
    runs: list[tuple[str, Callable[[], float]]] = []
    for fast in (True, False):
        tail = "" if fast else ", full decode"
        over = [f"data.fast_decode={str(fast).lower()}"]
        runs += [
            (f"defaults{tail}", lambda over=over: train_rate(apply_overrides(cfg, over), scratch / "run")),
            (f"workers=0{tail}", lambda over=over: train_rate(apply_overrides(cfg, [*over, "data.num_workers=0"]),
                                                              scratch / "run")),
            (f"workers=1{tail}", lambda over=over: train_rate(apply_overrides(cfg, [*over, "data.num_workers=1"]),
                                                              scratch / "run")),
            (f"workers=2{tail}", lambda over=over: train_rate(apply_overrides(cfg, [*over, "data.num_workers=2"]),
                                                              scratch / "run")),
        ]
    runs += [
        ("per-epoch, 2", lambda: train_rate(apply_overrides(cfg, ["data.num_workers=2", "data.fast_decode=false"]),
                                            scratch / "run", PerEpochTrainer)),
        ("model only", lambda: model_only_rate(cfg, scratch / "run")),
    ]
    runs = [(key, fn) for key, fn in runs if rows is None or key in rows or key in ("workers=0", "model only")]
    for _ in range(repeats):  # interleaved: noise spreads over every row
        for key, fn in runs:
            train[key] = max(train.get(key, 0.0), fn())
        for key, value in extraction_rates(cfg, root, sorted({auto, 2}), extract_max).items():
            extraction[key] = max(extraction.get(key, 0.0), value)
        for key, value in stage_costs(cfg, root, min(extract_max, 160)).items():
            stages[key] = min(stages.get(key, float("inf")), value)
    table = read_dataset("folder", root)
    sampler_batches = len(table.split("train").class_counts()) * 4 // cfg.train.batch_size
    return {"name": name, "images": len(table), "train_images": len(table.split("train")),
            "batches_per_epoch": sampler_batches, "auto_workers": auto, "train": train, "extraction": extraction,
            "stages_ms": stages}


def print_table(results: list[dict[str, Any]]) -> None:
    model = load_preset(PRESET).model
    print(f"torch {torch.__version__}, {torch.get_num_threads()} torch thread(s); {PRESET}: {model.name} "
          f"{model.image_size} px, P x K 8 x 4")
    for r in results:
        print(f"\n{r['name']}: {r['images']} images ({r['train_images']} training, ~{r['batches_per_epoch']} "
              f"batch(es) per epoch), auto = {r['auto_workers']} worker(s)")
        base = r["train"]["workers=0"]
        print(f"  {'training':<32}{'img/s':>8}{'vs workers=0':>14}{'vs model only':>15}")
        for key, value in r["train"].items():  # "defaults" is the workers=auto row
            print(f"  {key:<32}{value:8.1f}{value / base:13.2f}x{value / r['train']['model only']:14.2f}x")
        bare = r["extraction"]["bare forward"]
        print(f"  {'extraction':<32}{'img/s':>8}{'vs bare':>14}")
        for key, value in r["extraction"].items():
            print(f"  {key:<32}{value:8.1f}{value / bare:13.2f}x")
        ours = r["extraction"]["extract defaults"]
        tv = {k: v for k, v in r["extraction"].items() if k.startswith("torchvision")}
        print("  extract defaults vs " + ", ".join(f"{k}: {ours / v:.2f}x" for k, v in tv.items()))
        st = r["stages_ms"]
        print("  one core, ms/image: " + ", ".join(f"{k} {v:.2f}" for k, v in st.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", action="append", default=[], help="a folder of class sub-folders (repeatable)")
    parser.add_argument("--large", type=int, nargs=3, action="append", default=None,
                        metavar=("CLASSES", "PER", "WIDTH"),
                        help="a generated JPEG set: classes, images per class, width (height = 3/4); repeatable; "
                             "default 16 10 1024; CLASSES 0 = none")
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--rows", default=None,
                        help="training rows to time, separated by semicolons (workers=0 and model only always)")
    parser.add_argument("--extract-max", type=int, default=480, help="images embedded per extraction figure")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    parser.add_argument("--large-from", default=None, help="upsample this folder's photos for the large JPEGs")
    parser.add_argument("--preset", default="cpu-tiny", help="the preset whose model and settings are timed")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    global PRESET
    PRESET = args.preset
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = args.rows.split(";") if args.rows else None
    scratch = Path(tempfile.mkdtemp(prefix="vitrieval-input-"))
    results = []
    try:
        for folder in args.data:
            results.append(measure(Path(folder), Path(folder).name, args.iterations, scratch, args.repeats,
                                   args.extract_max, rows))
        for classes, per, width in args.large or [[16, 10, 1024]]:
            if not classes:
                continue
            root = write_large_jpegs(scratch / f"large-{width}", classes, per, (width, width * 3 // 4),
                                     source=Path(args.large_from) if args.large_from else None)
            results.append(measure(root, f"generated {width}x{width * 3 // 4} JPEGs", args.iterations, scratch,
                                   args.repeats, args.extract_max, rows))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print_table(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
