"""A report comparing training runs: their final Recall@K (one table per data set, named), training curves, the
gradient noise γ when logged (Fig 4: :mod:`vitrieval.report.gradient_noise`) and, for tuple training, the mined
negatives' distance per epoch — from what every run folder holds (``metrics.jsonl``, ``eval.json``,
``config.yaml``), without loading a model. Each run is described by its data and its initialisation."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from vitrieval.analyze.gradient_noise import GRADIENT_NOISE_KEY
from vitrieval.report.figures import metric_curves, training_curves
from vitrieval.report.gradient_noise import RunGamma, gamma_vs_margin, run_gammas
from vitrieval.report.html import recall_table_html, write_report
from vitrieval.training.run_log import read_metrics


def _read_run(run: Path) -> dict[str, Any]:
    metrics = run / "metrics.jsonl"
    if not metrics.is_file():
        raise FileNotFoundError(f"{run} is not a training run folder: {metrics} is missing")
    try:
        rows = read_metrics(metrics)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{metrics}: not JSON lines ({exc})") from None
    final = json.loads((run / "eval.json").read_text()) if (run / "eval.json").is_file() else {}
    config = yaml.safe_load((run / "config.yaml").read_text()) if (run / "config.yaml").is_file() else {}
    return {"rows": rows, "eval": final, "config": config or {}}


def _without_unused_terms(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows without the loss terms that are 0 throughout the run (KoLeo of IRT_L, an unused memory)."""
    unused = {k for k in {k for r in rows for k in r if k.startswith("loss_")}
              if all(not r.get(k) for r in rows)}
    return [{k: v for k, v in r.items() if k not in unused} for r in rows]


def run_data(config: dict[str, Any]) -> str:
    """The data a run trained and was evaluated on, from its ``config.yaml``: the dataset and its folder."""
    if not config:
        return "unknown data (no config.yaml)"
    data = config.get("data", {})
    return f"{data.get('dataset', '?')} data in {data.get('root') or '?'}"


def initialisation(model: dict[str, Any]) -> str:
    """Where a run's weights started: a weights file (``model.pretrained_file``), timm's pretrained weights
    (``model.pretrained``), or random initialisation."""
    if model.get("pretrained_file"):
        return f"initialised from {model['pretrained_file']}"
    return "timm's pretrained weights" if model.get("pretrained") else "random init"


def run_summary(config: dict[str, Any]) -> str:
    """The settings that tell runs apart, read from a run's ``config.yaml`` (``--set`` overrides included)."""
    if not config:
        return "no config.yaml"
    model, loss, train = config.get("model", {}), config.get("loss", {}), config.get("train", {})
    parts = [f"{config.get('name', '?')} on {run_data(config)}: {model.get('name', '?')} at "
             f"{model.get('image_size', '?')} px"]
    if model.get("depth") or model.get("embed_dim"):
        parts.append(f"{model.get('depth') or 'all'} blocks x {model.get('embed_dim') or 'default'} wide")
    parts.append(f"{model.get('pooling', 'cls')} pooling, {initialisation(model)}")
    if train.get("sampler") == "tuples":
        tuples = config.get("tuples", {})
        parts.append(f"tuples ({tuples.get('per_batch')} x 1+1+{tuples.get('negatives')}, {tuples.get('epochs')} "
                     f"epochs of {tuples.get('query_size')} pairs, pool {tuples.get('pool_size')}), "
                     f"margin {loss.get('margin')}")
    else:
        memory = config.get("memory", {})
        parts.append(f"P x K batches of {train.get('batch_size')}, {train.get('iterations')} iterations, "
                     f"β {loss.get('margin')}, memory {memory.get('size', 0)}")
    parts.append(f"λ {loss.get('koleo_weight', 0)}, {train.get('optimizer', 'adamw')} lr {train.get('lr')}")
    return ", ".join(parts)


def write_runs_report(runs: Sequence[str | Path], output: str | Path, names: Sequence[str] | None = None,
                      title: str = "vitrieval training runs") -> Path:
    """Write a self-contained HTML report of ``runs`` (run folders) to ``output``; ``names`` label them (default:
    the folder names). Runs still in progress are fine: the curves show what is logged so far."""
    folders = [Path(r) for r in runs]
    if not folders:
        raise ValueError("no run folders given")
    labels = list(names) if names else [f.name or str(f) for f in folders]
    if len(labels) != len(folders) or len(set(labels)) != len(labels):
        raise ValueError(f"need one distinct name per run, got {labels} for {len(folders)} run(s)")
    data = {label: _read_run(folder) for label, folder in zip(labels, folders)}
    recall: dict[str, dict[str, dict[str, float]]] = {}  # one table per data: runs on other data are not compared
    for label, d in data.items():
        if d["eval"].get("recall_at_k"):
            recall.setdefault(f"on {run_data(d['config'])}", {})[label] = d["eval"]["recall_at_k"]
    rows = {label: d["rows"] for label, d in data.items()}
    sections = [("Training curves",
                 "Loss terms (left) and held-out Recall@1 (right) against the optimizer step, from each run's "
                 "metrics.jsonl (terms that are 0 throughout a run are left out).",
                 training_curves({label: _without_unused_terms(r) for label, r in rows.items()}))]
    if any("negative_distance" in r for rs in rows.values() for r in rs):
        sections.append((
            "Mined hard negatives (tuple training)",
            "Mean L2 distance between each query and its mined negatives at the start of every epoch: it grows as "
            "the model pushes other 3D models away (cirtorch's statistic).",
            metric_curves(rows, "negative_distance", "mean L2 distance", x_key="epoch",
                          title="query - hard negative distance")))
    gammas = run_gammas(rows, {label: d["config"] for label, d in data.items()})
    if gammas:
        sections.extend(gradient_noise_sections(rows, gammas))
    if any("lr" in r for rs in rows.values() for r in rs):
        sections.append(("Learning rate", "", metric_curves(rows, "lr", "learning rate", title="learning rate")))
    notes = []
    for label, folder in zip(labels, folders):
        d = data[label]
        cfg, final = d["config"], d["eval"]
        steps = max((int(r.get("iteration", 0)) for r in d["rows"]), default=0)
        state = f"finished, {final['iterations']} iterations" if final else f"in progress or stopped, {steps} logged"
        notes.append(f"{label} ({folder}): {run_summary(cfg)} [{state}]")
    notes += [f"{g.run}: mean γ {g.mean_gamma:.4f} over {g.steps} logged step(s) (β {g.margin}, λ {g.koleo_weight})"
              for g in gammas]
    if len(recall) > 1:
        notes.insert(0, f"The runs were trained and evaluated on {len(recall)} different data sets: one Recall table "
                        "per data set (numbers on different data are not comparable).")
    tables = [(f"Recall@K (%) {data_name}", recall_table_html(table)) for data_name, table in recall.items()]
    return write_report(output, title, {}, sections, notes, tables=tables)


def gradient_noise_sections(rows: dict[str, list[dict[str, Any]]], gammas: Sequence[RunGamma]
                            ) -> list[tuple[str, str, bytes]]:
    """Fig 4's sections: γ against the iteration per run, and each run's mean γ against its β, one line per λ."""
    what = ("γ = ‖Cov(ĝ)‖_*, the nuclear norm of the covariance of the directions of the contrastive loss's "
            "gradients w.r.t. the batch descriptors (train.log_gradient_noise)")
    return [("Gradient noise per step", f"{what}, at every logged step of each run.",
             metric_curves(rows, GRADIENT_NOISE_KEY, "γ", title="gradient noise γ per logged step")),
            ("Gradient noise vs margin (Fig 4)", f"{what}: each run's mean over its logged steps against its margin "
             "β (loss.margin), one line per KoLeo weight λ (loss.koleo_weight).", gamma_vs_margin(gammas))]
