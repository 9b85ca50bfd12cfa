"""``vitrieval demo``: the whole pipeline offline on a CPU in minutes: data, IRT_L / IRT_R training, evaluation
against IRT_O and a raw-pixel baseline, a self-contained HTML report, and a searchable index.

Output folder::

    OUT/data/products/      the generated "products" (default data; reused by a rerun with the same settings)
    OUT/data/table.csv      the exact train / test split every step used (absolute paths, split column)
    OUT/irt_o/model/        the untrained encoder (IRT_O: the same initial weights IRT_L and IRT_R start from)
    OUT/irt_l/, OUT/irt_r/  the two training runs (model/, metrics.jsonl, train.log, eval.json, ...)
    OUT/index/              a Flat faiss index of the test images, embedded by IRT_R (``vitrieval search`` /
                            ``vitrieval serve --index OUT/index``)
    OUT/report.html         Recall@K table and figures, one self-contained file
    OUT/results.json        Recall@K of every variant, timings and the data description
    OUT/demo.log            the log of the whole demo (training logs included)

Everything is evaluated with the deep-metric-learning protocol: the classes of the test split were never seen
in training, and every test image queries all the *other* test images (leave-one-out Recall@K).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vitrieval.config import Config, apply_overrides
from vitrieval.data.readers.folder import read_folder
from vitrieval.data.table import ImageTable, Record

if TYPE_CHECKING:
    from vitrieval.model import Encoder

log = logging.getLogger(__name__)

DEMO_PRESET = "demo"
QUICK_PRESET = "demo-quick"
KOLEO_WEIGHT = 0.7
"""λ of IRT_R, the paper's value for SOP / CUB / In-Shop."""

VARIANTS = ("raw_pixels", "IRT_O", "IRT_L", "IRT_R")
"""Keys of ``results.json`` (and rows of the table), in display order."""

LABELS = {"raw_pixels": "raw pixels", "IRT_O": "IRT_O (untrained)", "IRT_L": "IRT_L",
          "IRT_R": f"IRT_R (λ={KOLEO_WEIGHT:g})"}

RAW_PIXEL_SIZE = 16
"""Raw-pixel baseline: images resized to 16 x 16 RGB, mean-subtracted, L2-normalised (768-d)."""

GRID_QUERIES = 6
GRID_NEIGHBOURS = 8
CURVE_SMOOTHING = 5
"""Training-curve loss terms: moving average over this many logged values (one every ``train.log_every`` steps)."""
MIN_WORKER_EPOCH = 20
"""Fewer batches per epoch than this: load training images in the main process (see :func:`loader_overrides`)."""
ALL_PAIRS_LIMIT = 2_000_000
"""Similarity histograms use every pair of test images up to this many pairs (else a sample of 200,000)."""


@dataclass(frozen=True)
class SyntheticSpec:
    """How much of the built-in "products" data a demo generates: identities (train + unseen test) x views."""

    train_classes: int
    test_classes: int
    views: int

    @property
    def num_classes(self) -> int:
        return self.train_classes + self.test_classes


SYNTHETIC: dict[str, SyntheticSpec] = {
    DEMO_PRESET: SyntheticSpec(train_classes=300, test_classes=100, views=6),
    QUICK_PRESET: SyntheticSpec(train_classes=120, test_classes=30, views=6),
}
"""Generated data per preset (images at the preset's ``model.image_size``). The test identities are the last ones."""


# ----------------------------------------------------------------------------------------------------------------
# data


def folder_table(root: str | Path, train_fraction: float) -> ImageTable:
    """A class-per-folder dataset split into training classes and unseen test classes, read by the ``folder``
    reader (:func:`~vitrieval.data.readers.folder.read_folder`) with absolute paths.

    ``ROOT/train/<class>/…`` + ``ROOT/test/<class>/…`` keeps that split. Otherwise the class folders are put in
    *natural* order (``s1, s2, …, s10``, not ``s1, s10, s11, …``) and the first ``train_fraction`` of them
    (rounded down, at least one on each side) are the training classes, the rest the test classes; labels are
    the class's position in that order. ORL faces (``s1``..``s40``) thus trains on people 1-20 and tests on 21-40.
    """
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"demo --data: {root} does not exist or is not a directory")
    return read_folder(root, train_fraction=train_fraction)


def synthetic_table(root: Path, spec: SyntheticSpec, size: int, progress: bool) -> ImageTable:
    """Generate (or reuse) the products dataset under ``root``; the last ``spec.test_classes`` are the test split."""
    from vitrieval.data.synthetic import generate_products

    workers = 2 if (os.cpu_count() or 1) >= 2 and spec.num_classes >= 200 else 1
    generate_products(root, spec.num_classes, spec.views, size=size, seed=0, progress=progress, workers=workers)
    table = read_folder(root, train_fraction=spec.train_classes / spec.num_classes)
    n_train = len({r.label for r in table if r.split == "train"})
    if n_train != spec.train_classes:  # int() rounding of the fraction: pin the exact split
        table = ImageTable([Record(r.path, r.label, "train" if r.label < spec.train_classes else "test")
                            for r in table], table.name, table.extras)
    return table


def prepare_data(data_dir: Path, data: str | Path | None, preset: str, cfg: Config,
                 progress: bool) -> tuple[ImageTable, dict[str, Any]]:
    """The demo's table (generated products, or the ``data`` folder split in natural class order), written to
    ``data_dir/table.csv`` for the trainer, and its description for ``results.json``."""
    data_dir.mkdir(parents=True, exist_ok=True)
    if data is None:
        spec = SYNTHETIC[preset]
        table = synthetic_table(data_dir / "products", spec, cfg.model.image_size, progress)
        source = (f"built-in synthetic products ({spec.num_classes} identities x {spec.views} views, "
                  f"{cfg.model.image_size} px): identities 1-{spec.train_classes} train, "
                  f"{spec.train_classes + 1}-{spec.num_classes} test")
    else:
        table = folder_table(data, cfg.data.train_fraction)
        names = table.extras.get("classes", [])
        train_labels = sorted({r.label for r in table if r.split == "train"})
        source = f"folder dataset {Path(data).expanduser().resolve()}"
        if names and train_labels:
            source += (f" (classes in natural order; train: {names[train_labels[0]]}..{names[train_labels[-1]]}, "
                       f"test: the other {len(names) - len(train_labels)})")
    test = table.split("test")
    if len(test) < 3 or len(test.class_counts()) < 2:
        raise ValueError(f"the test split has {len(test)} image(s) in {len(test.class_counts())} class(es); "
                         "the demo needs at least 2 unseen classes")
    table.to_csv(data_dir / "table.csv")
    info = _describe(table, source)
    log.info("data: %d train images / %d classes, %d test images / %d unseen classes (%s)", info["train_images"],
             info["train_classes"], info["test_images"], info["test_classes"], source)
    return table, info


def _describe(table: ImageTable, source: str) -> dict[str, Any]:
    s = table.summary()
    return {"source": source, "train_images": s["train_images"], "train_classes": s["train_classes"],
            "test_images": s["test_images"], "test_classes": s["test_classes"],
            "protocol": "leave-one-out on the unseen test classes (every test image queries all other test images)"}


# ----------------------------------------------------------------------------------------------------------------
# helpers


def _fresh_dir(path: Path, marker: Sequence[str]) -> None:
    """Remove ``path`` if an earlier demo wrote it (it holds one of ``marker``); refuse any other non-empty folder."""
    if not path.exists():
        return
    if path.is_dir() and not any(path.iterdir()):
        return
    if path.is_dir() and any((path / m).exists() for m in marker):
        shutil.rmtree(path)
        return
    raise ValueError(f"{path} exists and was not written by `vitrieval demo`; choose another --output")


def _load_images(paths: Sequence[str]) -> list:
    from vitrieval.data.images import load_image

    return [load_image(p) for p in paths]


def _embed(encoder: Encoder, table: ImageTable, cfg: Config) -> np.ndarray:
    """Descriptors of every image of ``table`` (table order), as the trainer's evaluation computes them."""
    from vitrieval.embed import extract

    ex = extract(encoder, table, batch_size=max(64, cfg.train.batch_size), num_workers=cfg.data.num_workers,
                 amp=cfg.train.amp, resize=cfg.data.eval_resize, progress=False)
    if len(ex.indices) != len(table):
        raise ValueError(f"{len(table) - len(ex.indices)} test image(s) could not be read: {ex.bad_paths[:3]}")
    return ex.descriptors


def _recall(desc: np.ndarray, labels: np.ndarray, ks: Sequence[int]) -> dict[str, float]:
    from vitrieval.metrics import recall_at_k

    return {str(k): float(v) for k, v in recall_at_k(desc, labels, list(ks)).items()}


def _grid_queries(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """``n`` test images of ``n`` different classes (the first image of randomly drawn classes), seeded."""
    classes = np.unique(labels)
    rng = np.random.default_rng(seed)
    picked = rng.choice(classes, size=min(n, len(classes)), replace=False)
    return np.asarray([int(np.flatnonzero(labels == c)[0]) for c in sorted(picked)])


def _grid(desc: np.ndarray, labels: np.ndarray, paths: Sequence[str], queries: np.ndarray, title: str) -> bytes:
    from vitrieval.metrics import exact_knn
    from vitrieval.report import retrieval_grid

    k = min(GRID_NEIGHBOURS, len(desc) - 1)
    scores, idx = exact_knn(desc, k, exclude_self=True)
    scores, idx = scores[queries], idx[queries]
    correct = labels[idx] == labels[queries][:, None]
    return retrieval_grid([paths[q] for q in queries], [[paths[j] for j in row] for row in idx], correct, scores,
                          title=title)


def _curve_rows(rows: Sequence[dict[str, Any]], cfg: Config, window: int) -> list[dict[str, Any]]:
    """Metric rows for the training-curve figure: loss terms smoothed by a trailing moving average over ``window``
    logged rows; the memory term only from ``memory.start_iteration`` on and KoLeo only if λ > 0 (elsewhere they
    are not part of the objective and are logged as 0)."""
    loss_rows = [r for r in rows if "loss" in r]
    out: list[dict[str, Any]] = [r for r in rows if "loss" not in r]
    keys = ("loss", "loss_contrastive", "loss_memory", "loss_koleo")
    koleo_on = any(r.get("loss_koleo", 0.0) for r in loss_rows)
    for i, r in enumerate(loss_rows):
        row: dict[str, Any] = {"iteration": r["iteration"]}
        for key in keys:
            if key not in r or (key == "loss_koleo" and not koleo_on):
                continue
            if key == "loss_memory" and r["iteration"] <= cfg.memory.start_iteration:
                continue
            window_rows = [w for w in loss_rows[max(0, i - window + 1):i + 1] if key in w and not (
                key == "loss_memory" and w["iteration"] <= cfg.memory.start_iteration)]
            row[key] = float(np.mean([w[key] for w in window_rows]))
        out.append(row)
    return out


def format_table(results: dict[str, Any]) -> str:
    """The Recall@K table of ``results`` (as ``run_demo`` returns it) as aligned text, in percent."""
    ks = sorted({k for v in VARIANTS for k in results[v]["recall_at_k"]}, key=int)
    width = max(len(LABELS[v]) for v in VARIANTS)
    lines = [f"{'variant':<{width}}  " + "  ".join(f"{'R@' + k:>6}" for k in ks)]
    for v in VARIANTS:
        rec = results[v]["recall_at_k"]
        lines.append(f"{LABELS[v]:<{width}}  " + "  ".join(
            f"{100 * rec[k]:6.1f}" if k in rec else f"{'-':>6}" for k in ks))
    return "\n".join(lines)


def demo_config(preset: str, table_csv: Path, seed: int, koleo_weight: float, name: str,
                extra: Sequence[str] = ()) -> Config:
    """The demo preset with the data, seed and λ of one run (plus ``extra`` ``key=value`` overrides)."""
    from vitrieval.presets import load_preset

    return apply_overrides(load_preset(preset), [
        f"name={name}", "data.dataset=csv", f"data.root={table_csv}", f"train.seed={seed}",
        f"loss.koleo_weight={koleo_weight}", *extra])


def loader_overrides(cfg: Config, table: ImageTable) -> list[str]:
    """``data.num_workers=0`` when an epoch of the P x K sampler is short (fewer than :data:`MIN_WORKER_EPOCH`
    batches, e.g. COIL-20's 10 training classes give 2 batches of 4 classes): the trainer starts its DataLoader
    workers afresh every epoch, which then costs more than loading the images in the main process."""
    counts = table.split("train").class_counts()
    classes = sum(1 for n in counts.values() if n >= 2)
    batches_per_epoch = classes // max(1, cfg.train.batch_size // cfg.data.images_per_class)
    if cfg.data.num_workers > 0 and batches_per_epoch < MIN_WORKER_EPOCH:
        return ["data.num_workers=0"]
    return []


# ----------------------------------------------------------------------------------------------------------------
# the demo


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

    started = time.time()
    out = Path(output).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    if threads:
        torch.set_num_threads(int(threads))
    handler = attach_file_log(out / "demo.log")
    timings: dict[str, float] = {}
    try:
        preset = QUICK_PRESET if quick else DEMO_PRESET
        csv_path = out / "data" / "table.csv"
        base = demo_config(preset, csv_path, seed, 0.0, "demo")
        log.info("vitrieval demo: preset %s, seed %d, output %s, %d torch thread(s)", preset, seed, out,
                 torch.get_num_threads())

        # 1. data -----------------------------------------------------------------------------------------------
        t0 = time.time()
        table, info = prepare_data(out / "data", data, preset, base, progress)
        extra = loader_overrides(base, table)
        if extra:
            log.info("only %d training batches per epoch: images are loaded in the main process (%s)",
                     len(table.split("train").class_counts()) * base.data.images_per_class // base.train.batch_size,
                     ", ".join(extra))
        base = demo_config(preset, csv_path, seed, 0.0, "demo", extra)
        test = table.split("test")
        timings["data"] = time.time() - t0
        labels = test.labels
        paths = test.paths
        ks = [k for k in base.train.eval_ks if k < len(test)]

        # 2. baselines: raw pixels and the untrained encoder (IRT_O) ------------------------------------------------
        t0 = time.time()
        raw = _raw_pixels(paths)
        results: dict[str, Any] = {"raw_pixels": {
            "recall_at_k": _recall(raw, labels, ks),
            "descriptor": f"{RAW_PIXEL_SIZE}x{RAW_PIXEL_SIZE} RGB pixels, mean-subtracted, L2-normalised "
                          f"({raw.shape[1]}-d)"}}
        seed_everything(base.train.seed)  # what the trainer does right before it builds the encoder
        untrained = Encoder(base.model)
        _fresh_dir(out / "irt_o", ("model",))
        untrained.save(out / "irt_o" / "model", extra={"trained_iterations": 0, "run": "demo IRT_O (untrained)"})
        descriptors = {"IRT_O": _embed(untrained, test, base)}
        results["IRT_O"] = {"recall_at_k": _recall(descriptors["IRT_O"], labels, ks),
                            "model": str(out / "irt_o" / "model")}
        del untrained
        timings["baselines"] = time.time() - t0
        log.info("raw pixels R@1 %.1f%%, IRT_O R@1 %.1f%%", 100 * results["raw_pixels"]["recall_at_k"]["1"],
                 100 * results["IRT_O"]["recall_at_k"]["1"])

        # 3. training: IRT_L (λ = 0) and IRT_R (λ = 0.7) from the same initial weights --------------------------
        from vitrieval.model import load

        runs = {"IRT_L": ("irt_l", 0.0), "IRT_R": ("irt_r", KOLEO_WEIGHT)}
        metrics: dict[str, list[dict[str, Any]]] = {}
        for variant, (folder, weight) in runs.items():
            cfg = demo_config(preset, csv_path, seed, weight, f"demo-{folder.replace('_', '-')}", extra)
            run_dir = out / folder
            _fresh_dir(run_dir, ("config.yaml", "checkpoints", "model"))
            log.info("training %s (λ = %g): %d iterations of %d images", variant, weight, cfg.train.iterations,
                     cfg.train.batch_size)
            result = train(cfg, run_dir, progress=progress)
            timings[f"train_{variant}"] = result.seconds
            encoder = load(run_dir)
            t0 = time.time()
            descriptors[variant] = _embed(encoder, test, cfg)
            timings[f"evaluate_{variant}"] = time.time() - t0
            results[variant] = {"recall_at_k": _recall(descriptors[variant], labels, ks),
                                "model": str(run_dir / "model"), "iterations": result.iterations,
                                "koleo_weight": weight, "train_seconds": round(result.seconds, 1)}
            from vitrieval.training.run_log import read_metrics

            metrics[variant] = read_metrics(run_dir / "metrics.jsonl")
            log.info("%s: R@1 %.1f%% on the unseen classes (%.0f s of training)", variant,
                     100 * results[variant]["recall_at_k"]["1"], result.seconds)

        # 4. index of the test images, embedded by IRT_R --------------------------------------------------------
        from vitrieval.index import Index

        t0 = time.time()
        _fresh_dir(out / "index", ("index.json", "index.faiss", "shards"))
        Index.build(out / "irt_r" / "model", test, out / "index", factory="Flat",
                    batch_size=max(64, base.train.batch_size), num_workers=base.data.num_workers,
                    resize=base.data.eval_resize, progress=False)
        timings["index"] = time.time() - t0

        # 5. report -----------------------------------------------------------------------------------------------
        t0 = time.time()
        results["seconds"] = round(time.time() - started, 1)
        results["data"] = info
        results.update({"preset": preset, "seed": seed, "model": dataclasses.asdict(base.model),
                        "koleo_weight": KOLEO_WEIGHT, "index": str(out / "index"),
                        "trained_model": str(out / "irt_r" / "model"), "report": str(out / "report.html"),
                        "results": str(out / "results.json"),
                        "example_query": paths[0]})
        _write_report(out, results, descriptors, labels, paths, metrics, base, seed)
        timings["report"] = time.time() - t0
        results["timings"] = {k: round(v, 1) for k, v in timings.items()}
        results["seconds"] = round(time.time() - started, 1)
        from vitrieval.io_utils import atomic_write_json

        atomic_write_json(out / "results.json", results)
        log.info("demo done in %.0f s: report %s", results["seconds"], out / "report.html")
        return results
    finally:
        logging.getLogger("vitrieval").removeHandler(handler)
        handler.close()


def _raw_pixels(paths: Sequence[str]) -> np.ndarray:
    from vitrieval.data.synthetic import raw_pixel_descriptors

    return raw_pixel_descriptors(_load_images(paths), size=RAW_PIXEL_SIZE)


def _write_report(out: Path, results: dict[str, Any], descriptors: dict[str, np.ndarray], labels: np.ndarray,
                  paths: Sequence[str], metrics: dict[str, list[dict[str, Any]]], cfg: Config, seed: int) -> Path:
    """``OUT/report.html``: the Recall@K table, retrieval grids IRT_O vs IRT_R, histograms, PCA energy, curves."""
    from vitrieval.report import pair_similarities, pca_energy, similarity_histograms, training_curves, write_report

    info = results["data"]
    table = {LABELS[v]: results[v]["recall_at_k"] for v in VARIANTS}
    queries = _grid_queries(labels, GRID_QUERIES, seed)
    trained = ("IRT_O", "IRT_L", "IRT_R")
    r1 = {v: 100 * results[v]["recall_at_k"]["1"] for v in VARIANTS}
    n = len(labels)
    max_pairs = ALL_PAIRS_LIMIT if n * (n - 1) // 2 <= ALL_PAIRS_LIMIT else 200_000
    pairs = {LABELS[v]: pair_similarities(descriptors[v], labels, max_pairs=max_pairs, seed=seed) for v in trained}
    sections = [
        (f"Retrieval with IRT_O, the untrained encoder (R@1 {r1['IRT_O']:.1f}%)",
         f"{len(queries)} test queries (blue) of unseen classes and their top {GRID_NEIGHBOURS} neighbours among the "
         "other test images (cosine); green = same class, red = another class.",
         _grid(descriptors["IRT_O"], labels, paths, queries, "IRT_O (untrained encoder)")),
        (f"Retrieval with IRT_R (R@1 {r1['IRT_R']:.1f}%)",
         "The same queries, after training with the contrastive loss, the cross-batch memory and KoLeo "
         f"(λ = {KOLEO_WEIGHT:g}).",
         _grid(descriptors["IRT_R"], labels, paths, queries, f"IRT_R (λ = {KOLEO_WEIGHT:g})")),
        ("Similarity of positive and negative pairs (paper Fig. 5)",
         "Cosine similarity of the positive pairs (same class, green) and negative pairs (red) among the test "
         f"images ({'all pairs' if max_pairs == ALL_PAIRS_LIMIT else 'negatives: a sample of 200,000'}); dashed "
         "lines are the means. Training separates the two; KoLeo spreads the negatives.",
         similarity_histograms(pairs)),
        ("Cumulative PCA energy of the descriptors (paper Figs. 2-3)",
         "Share of the variance of the test descriptors captured by the first n principal components; a curve "
         "that rises steeply means the descriptor uses few directions (collapsed dimensions). The legend gives the "
         "number of components that reach 90%.",
         pca_energy({LABELS[v]: descriptors[v] for v in trained})),
        ("Training curves",
         "Loss terms (contrastive within the batch, against the cross-batch memory before its weight "
         f"{cfg.memory.weight:g}, KoLeo before λ; each a moving average over {CURVE_SMOOTHING} logged values) and "
         "Recall@1 on the unseen test classes over the iterations, from each run's metrics.jsonl. A term is drawn "
         "only where it is part of the objective (the memory from its first iteration, KoLeo for IRT_R).",
         training_curves({LABELS[v]: _curve_rows(rows, cfg, CURVE_SMOOTHING) for v, rows in metrics.items()})),
    ]
    m, t, mem = cfg.model, cfg.train, cfg.memory
    arch = (f"{m.name} family from random init, {m.depth or 'all'} blocks x {m.embed_dim or 'default'} wide "
            f"({m.num_heads or 'default'} heads), {m.image_size} px images in {m.patch_size or 16}-px patches, "
            f"{m.pooling} token; batch {t.batch_size} ({t.batch_size // cfg.data.images_per_class} classes x "
            f"{cfg.data.images_per_class} images), AdamW lr {t.lr:g}, {t.iterations} iterations; cross-batch memory "
            f"of {mem.size} at weight {mem.weight:g} from iteration {mem.start_iteration}")
    notes = [
        f"Data: {info['source']}. Training: {info['train_images']} images of {info['train_classes']} classes; "
        f"test: {info['test_images']} images of {info['test_classes']} classes never seen in training.",
        f"Protocol: {info['protocol']}; Recall@K = share of queries with a same-class image among their K nearest "
        "neighbours (cosine).",
        f"Raw-pixel baseline: Recall@1 = {r1['raw_pixels']:.1f}% ({results['raw_pixels']['descriptor']}), "
        f"against {r1['IRT_R']:.1f}% for IRT_R and {r1['IRT_L']:.1f}% for IRT_L.",
        f"Model and training ({results['preset']} preset): {arch}.",
        f"IRT_O is that encoder before training (the same initial weights as IRT_L and IRT_R, seed {seed}); "
        f"IRT_L: λ = 0, IRT_R: λ = {KOLEO_WEIGHT:g}; {results['IRT_L'].get('iterations', '?')} iterations each.",
        f"Time: {results['seconds']:.0f} s so far when this report was written (training IRT_L "
        f"{results['IRT_L'].get('train_seconds', 0):.0f} s, IRT_R {results['IRT_R'].get('train_seconds', 0):.0f} s).",
        f"Search the test images with the trained model: vitrieval search --index {results['index']} IMAGE; "
        f"browse them: vitrieval serve --index {results['index']}",
    ]
    return write_report(out / "report.html", f"vitrieval demo: {info['test_classes']} unseen classes", table,
                        sections, notes)
