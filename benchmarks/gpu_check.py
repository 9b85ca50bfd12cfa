"""GPU check: IRT_R training and extraction throughput, peak GPU memory, and a short run whose Recall@1 rises.

    bash benchmarks/gpu_check.sh                          # on a CUDA machine: about 1-2 minutes, under 5
    python benchmarks/gpu_check.py --cpu-smoke            # the same code paths on CPU with tiny sizes (~1 minute)
    python benchmarks/gpu_check.py --out DIR --json r.json

What it measures (one process, one GPU; nothing is downloaded, weights are random):

1. **Training throughput**: the paper's ``sop-irt-r-deit-s`` recipe (DeiT-S, 224 px, batch 64 = 16 classes x 4,
   contrastive + cross-batch memory of 59,551 + KoLeo 0.7) through :meth:`vitrieval.training.pk_trainer.Trainer.step` --
   forward, memory, loss, backward, AdamW -- on a fixed pinned batch (no image decoding), memory active from the
   first step; bf16 autocast, then the same in float32 (``amp off``) for comparison. Images/s over the timed steps
   after warm-up; peak GPU memory (``torch.cuda.max_memory_allocated``) over those steps.
2. **Extraction throughput**: the same encoder, eval mode, bf16, batches of 256 random 224 px images (the model
   alone), then :func:`vitrieval.embed.extract` end to end over generated PNG files (decode + resize + transfer in
   DataLoader workers).
3. **Learning check**: 200 iterations of the small ``cpu-tiny`` recipe (DeiT-Tiny shape with 4 blocks of width
   128, 64 px, 8-px patches, random init, IRT_L, lr 1e-3, batch 32) on generated products
   (:func:`vitrieval.data.synthetic.generate_products`, 80 identities x 6 views, the last 40 held out); Recall@1 on
   the held-out identities before and after must rise (the CPU test of the same recipe measured 0.046 -> 0.146).

Prints a table; ``--json`` also writes the numbers. Exit code 1 when Recall@1 did not rise.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # runs from a checkout without installing


@dataclass(frozen=True)
class Sizes:
    model: list[str]  # overrides of the throughput model (on top of sop-irt-r-deit-s)
    image_size: int
    batch: int
    memory: int
    warmup: int
    steps: int
    extract_batch: int
    extract_batches: int
    products: tuple[int, int, int]  # identities, views, pixels
    recall_model: list[str] = field(default_factory=list)
    recall_iterations: int = 200
    recall_batch: int = 32


GPU = Sizes(model=[], image_size=224, batch=64, memory=59551, warmup=5, steps=30, extract_batch=256,
            extract_batches=10, products=(80, 6, 64),
            recall_model=["model.depth=4", "model.embed_dim=128", "model.num_heads=4"])
SMOKE = Sizes(model=["model.name=deit_tiny_patch16_224", "model.image_size=32", "model.patch_size=8", "model.depth=2"],
              image_size=32, batch=16, memory=256, warmup=1, steps=3, extract_batch=16, extract_batches=2,
              products=(16, 4, 32),
              recall_model=["model.image_size=32", "model.depth=2", "model.embed_dim=64", "model.num_heads=2"],
              recall_iterations=10, recall_batch=16)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gib(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2**30


def train_throughput(sizes: Sizes, device: torch.device, amp: str, data: Path, out: Path) -> tuple[dict, object]:
    """Images/s and peak memory of Trainer.step on a fixed batch (the decode pipeline is not timed)."""
    from vitrieval.config import apply_overrides
    from vitrieval.presets import load_preset
    from vitrieval.training.pk_trainer import Trainer

    cfg = apply_overrides(load_preset("sop-irt-r-deit-s"), [
        "model.pretrained=false", "data.dataset=folder", f"data.root={data}", "data.num_workers=0",
        f"train.batch_size={sizes.batch}", f"train.amp='{amp}'", f"train.device={device}", "train.eval_every=0",
        f"train.iterations={sizes.warmup + sizes.steps}", f"memory.size={sizes.memory}", "memory.start_iteration=0",
        *sizes.model])
    trainer = Trainer(cfg, out / f"throughput-{amp}", progress=False)
    trainer.run_dir.close()  # detach train.log: run() would, step() alone does not
    k = cfg.data.images_per_class
    batch = {"images": torch.randn(sizes.batch, 3, sizes.image_size, sizes.image_size),
             "labels": torch.arange(sizes.batch // k).repeat_interleave(k)}
    if device.type == "cuda":
        batch = {key: value.pin_memory() for key, value in batch.items()}
    for _ in range(sizes.warmup):
        trainer.step(batch)
        trainer.iteration += 1
    _reset_peak(device)
    start = time.perf_counter()
    for _ in range(sizes.steps):
        row = trainer.step(batch)  # reads the loss back: synchronous
        trainer.iteration += 1
    _sync(device)
    seconds = time.perf_counter() - start
    assert row["loss_memory"] > 0, "the cross-batch memory term should be active"
    return {"what": f"train IRT_R {cfg.model.name} {sizes.image_size}px batch {sizes.batch} amp {amp}",
            "images_per_s": sizes.steps * sizes.batch / seconds, "ms_per_step": 1000 * seconds / sizes.steps,
            "peak_gib": _peak_gib(device), "loss": row["loss"]}, trainer


@torch.no_grad()
def model_extraction(sizes: Sizes, encoder: torch.nn.Module, device: torch.device) -> dict:
    """Images/s of the encoder alone in eval mode with bf16 autocast on random batches already on the device."""
    from vitrieval.amp import autocast_context

    encoder.eval()
    x = torch.randn(sizes.extract_batch, 3, sizes.image_size, sizes.image_size, device=device)
    with autocast_context(device, "bf16"):
        for _ in range(2):
            encoder(x)
        _reset_peak(device)
        start = time.perf_counter()
        for _ in range(sizes.extract_batches):
            z = encoder(x)
        _sync(device)
    seconds = time.perf_counter() - start
    assert torch.isfinite(z).all()
    encoder.train()
    return {"what": f"extract (model only) {sizes.image_size}px batch {sizes.extract_batch} bf16",
            "images_per_s": sizes.extract_batches * sizes.extract_batch / seconds,
            "ms_per_step": 1000 * seconds / sizes.extract_batches, "peak_gib": _peak_gib(device)}


def pipeline_extraction(sizes: Sizes, encoder: torch.nn.Module, data: Path, device: torch.device,
                        workers: int) -> dict:
    """Images/s of embed.extract end to end (PNG decode, resize, transfer, forward) over the generated images."""
    from vitrieval.data.readers import read_dataset
    from vitrieval.data.table import ImageTable
    from vitrieval.embed import ExtractionOptions, extract

    table = read_dataset("folder", str(data))
    table = ImageTable(table.records * 4, "products x4")
    options = ExtractionOptions(batch_size=sizes.extract_batch, num_workers=workers, amp="bf16", progress=False)
    extract(encoder, ImageTable(table.records[:sizes.extract_batch], "warm-up"),
            replace(options, num_workers=0))
    _reset_peak(device)
    start = time.perf_counter()
    ext = extract(encoder, table, options)
    _sync(device)
    seconds = time.perf_counter() - start
    assert len(ext.indices) == len(table)
    return {"what": f"extract() end to end, {len(table)} PNGs ({sizes.products[2]}px -> {sizes.image_size}px), "
                    f"{workers} workers", "images_per_s": len(table) / seconds,
            "ms_per_step": 1000 * seconds * sizes.extract_batch / len(table), "peak_gib": _peak_gib(device)}


def recall_run(sizes: Sizes, device: torch.device, data: Path, out: Path) -> dict:
    """The small recipe for ``recall_iterations`` steps: Recall@1 on held-out identities before and after."""
    from vitrieval.config import apply_overrides
    from vitrieval.presets import load_preset
    from vitrieval.training import train

    n = sizes.recall_iterations
    cfg = apply_overrides(load_preset("cpu-tiny"), [
        f"data.root={data}", "data.num_workers=0", f"train.iterations={n}", "train.lr=1e-3", "memory.size=0",
        f"train.eval_every={n}", f"train.checkpoint_every={n}", f"train.batch_size={sizes.recall_batch}",
        f"train.device={device}", "train.amp='bf16'" if device.type == "cuda" else "train.amp='off'",
        *sizes.recall_model])
    _reset_peak(device)
    start = time.perf_counter()
    result = train(cfg, out / "recall-run", progress=False)
    seconds = time.perf_counter() - start
    evals = [row for row in result.history if "recall@1" in row]
    before, after = evals[0]["recall@1"], evals[-1]["recall@1"]
    return {"what": f"{n} iterations {cfg.model.name} (depth {cfg.model.depth}, width {cfg.model.embed_dim}) "
                    f"{cfg.model.image_size}px batch {cfg.train.batch_size} amp {cfg.train.amp}",
            "recall@1_before": before, "recall@1_after": after, "seconds": seconds, "peak_gib": _peak_gib(device),
            "rose": after > before}


def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny sizes on CPU (tests the code paths)")
    parser.add_argument("--out", help="working folder (generated images, runs); default: a temporary folder")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="extract() workers")
    parser.add_argument("--no-fp32", action="store_true", help="skip the float32 training throughput row")
    args = parser.parse_args(argv)

    from vitrieval.data.synthetic import generate_products

    sizes = SMOKE if args.cpu_smoke else GPU
    if args.cpu_smoke:
        device = torch.device("cpu")
        torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    else:
        if not torch.cuda.is_available():
            print("no CUDA device: run with --cpu-smoke to test the script on CPU", file=sys.stderr)
            return 2
        device = torch.device("cuda", 0)
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="gpu_check_"))
    out.mkdir(parents=True, exist_ok=True)
    for stale in ("throughput-bf16", "throughput-off", "recall-run"):  # reruns start fresh runs
        target = out / stale
        if target.exists():
            import shutil

            shutil.rmtree(target)

    env = {"torch": torch.__version__, "device": torch.cuda.get_device_name(device) if device.type == "cuda"
           else "cpu", "cuda": torch.version.cuda}
    print(f"torch {env['torch']} on {env['device']} (CUDA {env['cuda']})", flush=True)
    started = time.perf_counter()
    t = time.perf_counter()
    identities, views, px = sizes.products
    data = generate_products(out / "products", identities, views, size=px, seed=0, progress=False,
                             workers=min(8, os.cpu_count() or 1))
    print(f"generated {identities} x {views} products at {px} px in {time.perf_counter() - t:.1f} s", flush=True)

    rows = []
    row, trainer = train_throughput(sizes, device, "bf16", data, out)
    rows.append(row)
    print(f"  {row['what']}: {row['images_per_s']:.0f} img/s", flush=True)
    encoder = trainer.encoder
    del trainer
    if not args.no_fp32:
        row, other = train_throughput(sizes, device, "off", data, out)
        rows.append(row)
        print(f"  {row['what']}: {row['images_per_s']:.0f} img/s", flush=True)
        del other
    if device.type == "cuda":
        torch.cuda.empty_cache()
    rows.append(model_extraction(sizes, encoder, device))
    print(f"  {rows[-1]['what']}: {rows[-1]['images_per_s']:.0f} img/s", flush=True)
    rows.append(pipeline_extraction(sizes, encoder, data, device, args.workers))
    print(f"  {rows[-1]['what']}: {rows[-1]['images_per_s']:.0f} img/s", flush=True)
    del encoder
    recall = recall_run(sizes, device, data, out)

    width = max(len(r["what"]) for r in rows)
    print()
    print(f"{'measurement'.ljust(width)}  {'images/s':>9}  {'ms/batch':>9}  {'peak GiB':>8}")
    for r in rows:
        print(f"{r['what'].ljust(width)}  {r['images_per_s']:9.1f}  {r['ms_per_step']:9.2f}  "
              f"{_fmt(r['peak_gib'], '8.2f')}")
    print()
    verdict = "PASS" if recall["rose"] else "FAIL"
    print(f"learning check ({recall['what']}): Recall@1 on held-out identities "
          f"{recall['recall@1_before']:.3f} -> {recall['recall@1_after']:.3f} in {recall['seconds']:.0f} s "
          f"(peak {_fmt(recall['peak_gib'], '.2f')} GiB): {verdict}")
    print(f"total {time.perf_counter() - started:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({"env": env, "cpu_smoke": args.cpu_smoke, "rows": rows,
                                               "recall": recall}, indent=2))
    return 0 if recall["rose"] or args.cpu_smoke else 1


if __name__ == "__main__":
    sys.exit(main())
