"""End-to-end training: Recall@1 on held-out classes rises; an interrupted run resumes to the same weights."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import vitrieval
from vitrieval.config import apply_overrides
from vitrieval.presets import load_preset
from vitrieval.training import train

SMALL_MODEL = ["model.depth=4", "model.embed_dim=128", "model.num_heads=4"]


def test_training_raises_recall_on_held_out_classes(products_64, tmp_path):
    """IRT_L from random init on generated products: R@1 on the 40 unseen identities must at least double."""
    cfg = apply_overrides(load_preset("cpu-tiny"), [
        f"data.root={products_64}", *SMALL_MODEL, "train.iterations=200", "train.lr=1e-3", "memory.size=0",
        "train.eval_every=200", "train.checkpoint_every=200", "data.num_workers=0"])
    result = train(cfg, tmp_path / "run", progress=False)
    evals = [row for row in result.history if "recall@1" in row]
    before, after = evals[0]["recall@1"], evals[-1]["recall@1"]
    assert evals[0]["iteration"] == 0 and evals[-1]["iteration"] == 200
    # measured: 0.046 -> 0.146 (240 held-out queries; chance is 5/239 = 0.021)
    assert after >= 2 * before and after - before >= 0.06, (before, after)
    # the output folder holds a loadable model, logs, metrics and the final evaluation
    out = tmp_path / "run"
    enc = vitrieval.load(out)
    assert enc.descriptor_dim == 128
    assert json.loads((out / "eval.json").read_text())["recall_at_k"]["1"] == pytest.approx(after)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) == 20 and sum(losses[-5:]) < sum(losses[:5])
    assert "iteration 200" in (out / "train.log").read_text()
    assert any((out / "tensorboard").iterdir())


def _cli(out: Path, root: Path, iterations: int, workers: int, resume: bool = False) -> list[str]:
    args = [sys.executable, "-m", "vitrieval", "train", "--preset", "cpu-tiny", "--data-root", str(root),
            "--output", str(out), "--no-progress",
            "--set", "model.image_size=32", "--set", "model.depth=2", "--set", "model.embed_dim=64",
            "--set", "model.num_heads=2", "--set", "train.batch_size=16", "--set", f"train.iterations={iterations}",
            "--set", "train.checkpoint_every=10", "--set", "train.log_every=1", "--set", "train.eval_every=0",
            "--set", "memory.size=48", "--set", "memory.start_iteration=4", "--set", "memory.momentum=0.9",
            "--set", "loss.koleo_weight=0.5", "--set", f"data.num_workers={workers}", "--set", "train.amp=off"]
    return args + (["--resume"] if resume else [])


def _last_logged_iteration(out: Path) -> int:
    path = out / "metrics.jsonl"
    if not path.exists():
        return 0
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    return json.loads(lines[-1])["iteration"] if lines else 0


def test_sigkill_between_checkpoints_then_resume_gives_identical_weights(products_32, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    reference = tmp_path / "reference"
    subprocess.run(_cli(reference, products_32, 30, workers=0), check=True, env=env, capture_output=True)

    interrupted = tmp_path / "interrupted"
    proc = subprocess.Popen(_cli(interrupted, products_32, 30, workers=2), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while _last_logged_iteration(interrupted) < 13 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    state = torch.load(interrupted / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)
    assert 10 <= state["iteration"] < 30, "the kill must land after a checkpoint and before the end"
    assert _last_logged_iteration(interrupted) > state["iteration"]  # work after the checkpoint was lost

    # without --resume the folder is protected; with it, the run continues from the checkpoint
    refused = subprocess.run(_cli(interrupted, products_32, 30, workers=2), env=env, capture_output=True, text=True)
    assert refused.returncode == 2 and "--resume" in refused.stderr
    subprocess.run(_cli(interrupted, products_32, 30, workers=2, resume=True), check=True, env=env,
                   capture_output=True)

    a = load_file(str(reference / "model" / "model.safetensors"))
    b = load_file(str(interrupted / "model" / "model.safetensors"))
    assert a.keys() == b.keys()
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst == 0.0, f"weights differ by up to {worst}"
    # the metrics file has each iteration exactly once after the resume
    rows = [json.loads(line) for line in (interrupted / "metrics.jsonl").read_text().splitlines()]
    iterations = [r["iteration"] for r in rows if "loss" in r]
    assert iterations == list(range(1, 31))
    reference_rows = [json.loads(line) for line in (reference / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in rows if "loss" in r] == [r["loss"] for r in reference_rows if "loss" in r]


def _eq1_gradient_noise(z: np.ndarray, y: np.ndarray, beta: float) -> float:
    """γ by brute force: Eq. 1's gradient of every descriptor from the pairs (dL/dz_k ∝ −Σ_{P(k)} z_j +
    Σ_{N(k), s_kj > β} z_j), its direction, the covariance of the directions and the sum of its singular values."""
    s = z @ z.T
    grad = np.zeros_like(z)
    for k in range(len(z)):
        for j in range(len(z)):
            if j != k and y[j] == y[k]:
                grad[k] -= z[j]
            elif y[j] != y[k] and s[k, j] > beta:
                grad[k] += z[j]
    norms = np.linalg.norm(grad, axis=1)
    directions = grad[norms > 0] / norms[norms > 0, None]
    return float(np.linalg.svd(np.cov(directions.T, bias=True), compute_uv=False).sum())


def test_logged_gradient_noise_is_gamma_of_the_steps_own_batch(products_32, tmp_path):
    """train.log_gradient_noise: each metrics row's grad_noise_nuclear equals γ computed independently (pairs by
    hand, numpy SVD) from the descriptors that step's forward pass produced; off, the key is absent."""
    from vitrieval.training.pk_trainer import Trainer

    overrides = [f"data.root={products_32}", "model.image_size=32", "model.depth=1", "model.embed_dim=32",
                 "model.num_heads=2", "train.batch_size=16", "train.iterations=3", "train.log_every=1",
                 "train.eval_every=0", "data.num_workers=0", "train.amp=off", "loss.margin=0.1"]
    trainer = Trainer(apply_overrides(load_preset("cpu-tiny"), [*overrides, "train.log_gradient_noise=true"]),
                      tmp_path / "on", progress=False)
    seen: list[tuple[np.ndarray, np.ndarray]] = []
    labels: list[torch.Tensor] = []
    step = trainer.step

    def recording_step(batch):
        labels.append(batch["labels"].clone())
        return step(batch)

    trainer.step = recording_step
    trainer.encoder.register_forward_hook(
        lambda module, args, out: seen.append(out.detach().double().numpy()) if module.training else None)
    trainer.run()
    rows = [json.loads(line) for line in (tmp_path / "on" / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "loss" in r]
    assert [r["iteration"] for r in rows] == [1, 2, 3] and len(seen) == 3
    for row, z, y in zip(rows, seen, labels):
        expected = _eq1_gradient_noise(z, y.numpy(), 0.1)
        assert 1e-3 < expected < 1.0
        assert row["grad_noise_nuclear"] == pytest.approx(expected, abs=1e-6)
    off = train(apply_overrides(load_preset("cpu-tiny"), overrides), tmp_path / "off", progress=False)
    assert all("grad_noise_nuclear" not in r for r in off.history)


def test_gradient_noise_logging_is_refused_for_tuple_training():
    with pytest.raises(ValueError, match="train.log_gradient_noise.*P x K"):
        apply_overrides(load_preset("sfm120k-cpu-tiny"), ["train.log_gradient_noise=true"])
