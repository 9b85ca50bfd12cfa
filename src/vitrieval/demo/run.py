"""``vitrieval demo``, the orchestration (:func:`run_demo`): data, pretraining the encoder on separate identities,
the raw-pixel and pretrained-encoder (IRT_O) baselines, fine-tuning IRT_L and IRT_R from those weights, their
evaluation on the unseen test classes, the index of the test images and the report.
The output folder is described in :mod:`vitrieval.demo`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vitrieval.config import Config
from vitrieval.data.table import ImageTable
from vitrieval.demo.baseline import description, raw_pixels
from vitrieval.demo.data import prepare_data, pretrain_data
from vitrieval.demo.pretrain import WEIGHTS_FILE, pretrain
from vitrieval.demo.report import write_demo_report
from vitrieval.demo.variants import DEMO_PRESET, KOLEO_WEIGHT, QUICK_PRESET, finetune_config

if TYPE_CHECKING:
    from vitrieval.model import Encoder

log = logging.getLogger(__package__)


DEMO_FOLDERS: tuple[str, ...] = ("pretrain", "irt_o", "irt_l", "irt_r", "index")
"""The folders a demo run replaces (checked before any work starts)."""
MARKER = ".vitrieval-demo.json"
"""The file in OUT recording the folders the demo created: ``{"folders": {name: {"complete", "files"}}}``."""


def _files_in(path: Path) -> list[str]:
    """Every file and link under ``path`` (links not followed), relative, sorted."""
    found = []
    for parent, dirs, files in os.walk(path):
        links = [d for d in dirs if (Path(parent) / d).is_symlink()]
        found += [(Path(parent) / name).relative_to(path).as_posix() for name in [*files, *links]]
    return sorted(found)


def _written(out: Path) -> dict[str, Any]:
    """What :data:`MARKER` in ``out`` records (nothing when absent)."""
    marker = out / MARKER
    if not marker.is_file():
        return {}
    try:
        folders = json.loads(marker.read_text())["folders"]
        return {name: {"complete": bool(f["complete"]), "files": list(f["files"])} for name, f in folders.items()}
    except (ValueError, KeyError, TypeError, AttributeError):
        raise ValueError(f"{marker} is unreadable; move it away or choose another --output") from None


def _record(path: Path, complete: bool) -> None:
    from vitrieval.io_utils import atomic_write_json

    folders = _written(path.parent)
    folders[path.name] = {"complete": complete, "files": _files_in(path) if complete else []}
    atomic_write_json(path.parent / MARKER, {"folders": folders})


def _check_dir(path: Path) -> bool:
    """Whether ``path`` is an earlier demo's folder to remove (:data:`MARKER` lists every file in it, or says its
    step stopped before the end); ``False`` for an absent or empty folder; any other ``path`` is refused, naming it."""
    if path.is_symlink() or path.exists() and not path.is_dir():
        raise ValueError(f"{path} exists and is not a folder the demo wrote; move it away or choose another --output")
    if not path.is_dir() or not any(path.iterdir()):
        return False
    written = _written(path.parent).get(path.name)
    if written is None:
        raise ValueError(f"{path} exists and was not written by `vitrieval demo` (no record of it in "
                         f"{path.parent / MARKER}; an older vitrieval kept none); move it away or choose another "
                         "--output")
    foreign = [f for f in _files_in(path) if f not in set(written["files"])] if written["complete"] else []
    if foreign:
        raise ValueError(f"{path} holds file(s) `vitrieval demo` did not write ({', '.join(foreign[:3])}"
                         f"{', ...' if len(foreign) > 3 else ''}); move them away or choose another --output")
    return True


def _fresh_dir(path: Path) -> None:
    """Clear the way for a demo step writing ``path``; never remove what the demo did not write
    (:func:`_check_dir`). The step then writes ``path`` and :func:`_seal_dir` records what it holds."""
    if _check_dir(path):
        shutil.rmtree(path)
    _record(path, complete=False)


def _seal_dir(path: Path) -> None:
    """Record in :data:`MARKER` every file the step wrote in ``path`` (what a rerun may remove)."""
    _record(path, complete=True)


def _embed(encoder: Encoder, table: ImageTable, cfg: Config) -> np.ndarray:
    """Descriptors of every image of ``table`` (table order), as the trainer's evaluation computes them."""
    from vitrieval.embed import ExtractionOptions, extract

    ex = extract(encoder, table, ExtractionOptions(batch_size=max(64, cfg.train.batch_size),
                                                   num_workers=cfg.data.num_workers, amp=cfg.train.amp,
                                                   resize=cfg.data.eval_resize, progress=False))
    if len(ex.indices) != len(table):
        raise ValueError(f"{len(table) - len(ex.indices)} test image(s) could not be read: {ex.bad_paths[:3]}")
    return ex.descriptors


def _recall(desc: np.ndarray, labels: np.ndarray, ks: Sequence[int]) -> dict[str, float]:
    from vitrieval.metrics import recall_at_k

    return {str(k): float(v) for k, v in recall_at_k(desc, labels, list(ks)).items()}


def _cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the data-loading and rendering workers)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def run_demo(output: str | Path = "runs/demo", data: str | Path | None = None, quick: bool = False, seed: int = 0,
             progress: bool = True, threads: int | None = None) -> dict[str, Any]:
    """Run the demo into ``output`` and return what ``results.json`` holds (plus ``output``/``report`` paths).

    ``data``: a class-per-folder dataset (``ROOT/<class>/<image>``, split by natural class order with the
    preset's ``data.train_fraction``; or ``ROOT/train`` + ``ROOT/test``) instead of the generated products.
    ``quick``: the ``demo-quick`` preset (tiny data and model, about 1.5 minutes; for tests). ``seed``: the training
    seed (initial weights, batches, augmentation); the generated data does not depend on it. ``threads``: torch
    intra-op threads (``None``: leave torch's setting).
    """
    import torch

    from vitrieval.model import Encoder
    from vitrieval.training import seed_everything, train
    from vitrieval.training.run_log import attach_file_log

    started, cpu_started = time.time(), _cpu_seconds()
    out = Path(output).expanduser().resolve()
    for folder in DEMO_FOLDERS:  # refuse a folder the demo did not write before any work
        _check_dir(out / folder)
    if data is not None and not Path(data).expanduser().is_dir():  # before OUT is made: a failed start leaves none
        raise ValueError(f"demo --data: {data} does not exist or is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    if threads:
        torch.set_num_threads(int(threads))
    handler = attach_file_log(out / "demo.log")
    timings: dict[str, float] = {}
    try:
        preset = QUICK_PRESET if quick else DEMO_PRESET
        csv_path = out / "data" / "table.csv"
        weights = out / "pretrain" / WEIGHTS_FILE
        base = finetune_config(preset, csv_path, seed, 0.0, "demo", weights)
        log.info("vitrieval demo: preset %s, seed %d, output %s, %d torch thread(s)", preset, seed, out,
                 torch.get_num_threads())

        # 1. data: the products to fine-tune and test on, and the separate pretraining identities ----------------
        t0 = time.time()
        table, info = prepare_data(out / "data", data, preset, base, progress)
        _, pretrain_source = pretrain_data(out / "data", preset, base.model.image_size, progress)
        test = table.split("test")
        timings["data"] = time.time() - t0
        labels = test.labels
        paths = test.paths
        ks = [k for k in base.train.eval_ks if k < len(test)]

        # 2. pretraining: classification of the pretraining identities (the demo's ImageNet) -------------------------
        _fresh_dir(out / "pretrain")
        pretrained = pretrain(out / "pretrain", out / "data" / "pretrain_table.csv", preset, seed, pretrain_source,
                              progress)
        _seal_dir(out / "pretrain")
        timings["pretrain"] = pretrained["train_seconds"]

        # 3. baselines: raw pixels and the pretrained encoder as is (IRT_O) -------------------------------------------
        t0 = time.time()
        raw = raw_pixels(paths)
        results: dict[str, Any] = {"raw_pixels": {
            "recall_at_k": _recall(raw, labels, ks),
            "descriptor": description(raw.shape[1])}}
        seed_everything(base.train.seed)  # what the trainer does right before it builds the encoder
        irt_o = Encoder(base.model)  # the pretrained weights, through model.pretrained_file
        _fresh_dir(out / "irt_o")
        irt_o.save(out / "irt_o" / "model", extra={"trained_iterations": 0, "run": "demo IRT_O (pretrained)",
                                                   "pretrained_on": pretrained["data"]})
        _seal_dir(out / "irt_o")
        descriptors = {"IRT_O": _embed(irt_o, test, base)}
        results["IRT_O"] = {"recall_at_k": _recall(descriptors["IRT_O"], labels, ks),
                            "model": str(out / "irt_o" / "model")}
        del irt_o
        timings["baselines"] = time.time() - t0
        log.info("raw pixels R@1 %.1f%%, IRT_O (pretrained) R@1 %.1f%%",
                 100 * results["raw_pixels"]["recall_at_k"]["1"], 100 * results["IRT_O"]["recall_at_k"]["1"])

        # 4. fine-tuning: IRT_L (λ = 0) and IRT_R (λ = 0.7), both from the pretrained weights ------------------------
        from vitrieval.model import load
        from vitrieval.training.run_log import read_metrics

        runs = {"IRT_L": ("irt_l", 0.0), "IRT_R": ("irt_r", KOLEO_WEIGHT)}
        metrics: dict[str, list[dict[str, Any]]] = {}
        for variant, (folder, weight) in runs.items():
            cfg = finetune_config(preset, csv_path, seed, weight, f"demo-{folder.replace('_', '-')}", weights)
            run_dir = out / folder
            _fresh_dir(run_dir)
            log.info("fine-tuning %s (λ = %g) from the pretrained weights: %d iterations of %d images", variant,
                     weight, cfg.train.iterations, cfg.train.batch_size)
            result = train(cfg, run_dir, progress=progress)
            _seal_dir(run_dir)
            timings[f"train_{variant}"] = result.seconds
            encoder = load(run_dir)
            t0 = time.time()
            descriptors[variant] = _embed(encoder, test, cfg)
            timings[f"evaluate_{variant}"] = time.time() - t0
            results[variant] = {"recall_at_k": _recall(descriptors[variant], labels, ks),
                                "model": str(run_dir / "model"), "iterations": result.iterations,
                                "koleo_weight": weight, "train_seconds": round(result.seconds, 1),
                                "log_every": cfg.train.log_every}
            metrics[variant] = read_metrics(run_dir / "metrics.jsonl")
            log.info("%s: R@1 %.1f%% on the unseen classes (%.0f s of training)", variant,
                     100 * results[variant]["recall_at_k"]["1"], result.seconds)

        # 5. index of the test images, embedded by IRT_R --------------------------------------------------------
        from vitrieval.index import Index

        t0 = time.time()
        _fresh_dir(out / "index")
        Index.build(out / "irt_r" / "model", test, out / "index", factory="Flat",
                    batch_size=max(64, base.train.batch_size), num_workers=base.data.num_workers,
                    resize=base.data.eval_resize, progress=False)
        _seal_dir(out / "index")
        timings["index"] = time.time() - t0

        # 6. report -----------------------------------------------------------------------------------------------
        t0 = time.time()
        results["seconds"] = round(time.time() - started, 1)
        results["data"] = info
        results.update({"preset": preset, "seed": seed, "pretrained": pretrained,
                        "model": dataclasses.asdict(base.model),
                        "koleo_weight": KOLEO_WEIGHT, "index": str(out / "index"),
                        "trained_model": str(out / "irt_r" / "model"), "report": str(out / "report.html"),
                        "results": str(out / "results.json"),
                        "example_query": paths[0]})
        write_demo_report(out, results, descriptors, labels, paths, metrics, base, seed)
        timings["report"] = time.time() - t0
        results["timings"] = {k: round(v, 1) for k, v in timings.items()}
        results["seconds"] = round(time.time() - started, 1)
        results["cpu_seconds"] = round(_cpu_seconds() - cpu_started, 1)
        from vitrieval.io_utils import atomic_write_json

        atomic_write_json(out / "results.json", results)
        log.info("demo done in %.0f s (%.0f s of CPU time): report %s", results["seconds"], results["cpu_seconds"],
                 out / "report.html")
        return results
    finally:
        logging.getLogger("vitrieval").removeHandler(handler)
        handler.close()
