"""What the demo compares and how each run is configured: the two presets, the four variants (raw pixels, the
pretrained encoder IRT_O, IRT_L with λ = 0, IRT_R with KoLeo), their display labels, the configuration of the
pretraining run and of one fine-tuning run."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from vitrieval.config import Config, apply_overrides

DEMO_PRESET = "demo"
QUICK_PRESET = "demo-quick"
KOLEO_WEIGHT = 0.7
"""λ of IRT_R, the paper's value for SOP / CUB / In-Shop."""

VARIANTS = ("raw_pixels", "IRT_O", "IRT_L", "IRT_R")
"""Keys of ``results.json`` (and rows of the table), in display order."""

LABELS = {"raw_pixels": "raw pixels", "IRT_O": "IRT_O (pretrained)", "IRT_L": "IRT_L",
          "IRT_R": f"IRT_R (λ={KOLEO_WEIGHT:g})"}

PRETRAIN_OBJECTIVE = "nsoftmax"
"""The pretraining objective: classification of the pretraining identities, a softmax over one learned
(normalised) proxy per class (:class:`~vitrieval.training.objectives.NSoftmaxObjective`), as ImageNet
classification pretrains the paper's DeiT."""

PRETRAIN_SETTINGS = ("data.images_per_class=2", "loss.temperature=0.1", "train.lr=5e-4")
"""Pretraining from random weights: 8 identities of 2 images in a batch of 16 (more classes per step for the
softmax), a softer softmax than NSoftmax's 0.05 (made for fine-tuning an already pretrained network) and the lr of
training from scratch."""
PRETRAIN: dict[str, tuple[str, ...]] = {
    DEMO_PRESET: (*PRETRAIN_SETTINGS, "train.iterations=1500", "train.log_every=150"),
    QUICK_PRESET: (*PRETRAIN_SETTINGS, "train.iterations=400", "train.log_every=100"),
}
"""The pretraining run of each preset: the preset's model with these changes (beside the objective, no memory, no
KoLeo and no held-out evaluation: :func:`pretrain_config`)."""


def demo_config(preset: str, table_csv: Path, seed: int, koleo_weight: float, name: str,
                extra: Sequence[str] = ()) -> Config:
    """The demo preset with the data, seed and λ of one run (plus ``extra`` ``key=value`` overrides)."""
    from vitrieval.presets import load_preset

    return apply_overrides(load_preset(preset), [
        f"name={name}", "data.dataset=csv", f"data.root={table_csv}", f"train.seed={seed}",
        f"loss.koleo_weight={koleo_weight}", *extra])


def finetune_config(preset: str, table_csv: Path, seed: int, koleo_weight: float, name: str,
                    weights: Path, extra: Sequence[str] = ()) -> Config:
    """One fine-tuning run (IRT_L, IRT_R; also IRT_O's encoder): the preset, starting from the pretrained
    backbone ``weights``, loaded through ``model.pretrained_file`` as a user's DeiT weights are."""
    return demo_config(preset, table_csv, seed, koleo_weight, name,
                       ["model.pretrained=true", f"model.pretrained_file={weights}", *extra])


def pretrain_config(preset: str, table_csv: Path, seed: int, extra: Sequence[str] = ()) -> Config:
    """The pretraining run: classification (:data:`PRETRAIN_OBJECTIVE`) of the pretraining identities in
    ``table_csv``, from random initial weights, with the preset's model and batches and :data:`PRETRAIN`."""
    return demo_config(preset, table_csv, seed, 0.0, f"{preset}-pretrain", [
        f"loss.objective={PRETRAIN_OBJECTIVE}", "memory.size=0", "train.eval_every=0",
        "model.pretrained=false", "model.pretrained_file=null", *PRETRAIN[preset], *extra])
