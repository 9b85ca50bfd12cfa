"""The encoder: timm ViT/DeiT backbone -> token pooling -> [projection] -> L2 normalisation [-> PCA].

The descriptor is the CLS token of ``forward_features`` (after the final LayerNorm; token 0 also for distilled
models, whose ``forward_head(pre_logits=True)`` would average CLS and distillation tokens), or avg / max / GeM
over the patch tokens. A trained model is a folder: ``model.safetensors`` + ``config.json`` (+ ``pca.safetensors``);
:func:`resolve_model_dir` is the one rule that finds it from a training output folder (``OUT`` or ``OUT/model``).
``config.json`` holds the keys :meth:`Encoder.save` writes (``STANDARD_KEYS``), the attached PCA's record under
``"pca"`` and any other keys the writer added (``extra``: run name, trained iterations, ...), which a loaded
encoder keeps (``extra_info``) and writes back when saved again.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from vitrieval.config import ModelConfig
from vitrieval.pca import PCAReduction
from vitrieval.pooling import TokenPooling

log = logging.getLogger(__name__)

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
PCA_FILE = "pca.safetensors"
FORMAT_VERSION = 1
#: The ``config.json`` keys that describe the model itself (rewritten by every save).
STANDARD_KEYS = ("format", "version", "model", "data_config", "feature_dim", "descriptor_dim", "fingerprint")
#: The ``config.json`` key recording how the attached PCA was fitted (``{"dim", "whiten", "fitted_on"}``).
PCA_KEY = "pca"


class PretrainedWeightsError(RuntimeError):
    """Weights that do not fit the architecture (or a missing file); names the file and the mismatched keys."""


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    obj = torch.load(str(path), map_location="cpu", weights_only=True)
    for key in ("model", "state_dict", "model_state"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise PretrainedWeightsError(f"{path}: not a state dict (got {type(obj).__name__})")
    return obj


def describe_mismatch(expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor], limit: int = 8) -> str:
    """Human-readable difference between two state dicts: missing, unexpected and shape-mismatched keys."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    shapes = sorted(k for k in set(expected) & set(found) if tuple(expected[k].shape) != tuple(found[k].shape))

    def fmt(keys: list[str]) -> str:
        more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
        return ", ".join(keys[:limit]) + more

    parts = []
    if missing:
        parts.append(f"{len(missing)} missing key(s): {fmt(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected key(s): {fmt(unexpected)}")
    if shapes:
        detail = [f"{k} {tuple(found[k].shape)} vs model {tuple(expected[k].shape)}" for k in shapes[:limit]]
        parts.append(f"{len(shapes)} shape mismatch(es): " + "; ".join(detail))
    return "; ".join(parts) or "no key differences"


def create_backbone(cfg: ModelConfig) -> nn.Module:
    """Create the timm backbone without a classifier; load pretrained weights (hub or ``pretrained_file``)."""
    import timm

    kwargs: dict[str, Any] = {"num_classes": 0, "img_size": cfg.image_size, "drop_path_rate": cfg.drop_path_rate}
    for key in ("patch_size", "depth", "embed_dim", "num_heads"):
        if getattr(cfg, key):
            kwargs[key] = getattr(cfg, key)
    if cfg.pretrained_file:
        path = Path(cfg.pretrained_file).expanduser()
        if not path.is_file():
            raise PretrainedWeightsError(f"pretrained weights file not found: {path} (model.pretrained_file)")
        try:
            return timm.create_model(cfg.name, pretrained=True, pretrained_cfg_overlay={"file": str(path)}, **kwargs)
        except (RuntimeError, KeyError, ValueError) as exc:
            reference_model = timm.create_model(cfg.name, pretrained=False, **kwargs)
            reference = reference_model.state_dict()
            heads = reference_model.pretrained_cfg.get("classifier") or ()
            heads = (heads,) if isinstance(heads, str) else tuple(heads)
            try:  # the classifier is dropped by timm (num_classes=0): not a mismatch
                found = {k: v for k, v in _read_state_dict(path).items()
                         if not any(k.startswith(h + ".") for h in heads)}
                detail = describe_mismatch(reference, found)
            except Exception as read_exc:  # noqa: BLE001 - reported to the user, nothing is lost
                detail = f"unreadable checkpoint ({read_exc})"
            raise PretrainedWeightsError(
                f"pretrained weights {path} do not fit {cfg.name} (image_size={cfg.image_size}"
                f"{f', patch_size={cfg.patch_size}' if cfg.patch_size else ''}): {detail}. timm said: "
                f"{str(exc).splitlines()[0][:300]}") from None
    return timm.create_model(cfg.name, pretrained=cfg.pretrained, **kwargs)


class Encoder(nn.Module):
    """Image -> L2-normalised descriptor. ``forward`` is the training path; ``embed`` also applies PCA."""

    def __init__(self, cfg: ModelConfig, load_pretrained: bool = True) -> None:
        super().__init__()
        if not load_pretrained:
            cfg_build = dataclasses.replace(cfg, pretrained=False, pretrained_file=None)
        else:
            cfg_build = cfg
        self.config = cfg
        self.backbone = create_backbone(cfg_build)
        num_prefix = int(getattr(self.backbone, "num_prefix_tokens", 1))
        self.pool = TokenPooling(cfg.pooling, num_prefix, cfg.gem_p, cfg.gem_learnable)
        width = int(self.backbone.num_features)
        self.projection: nn.Module = nn.Linear(width, cfg.projection_dim) if cfg.projection_dim else nn.Identity()
        self.feature_dim = cfg.projection_dim or width
        self.pca: PCAReduction | None = None
        #: How the attached PCA was fitted (``config.json["pca"]``); ``None`` when unknown or no PCA.
        self.pca_info: dict[str, Any] | None = None
        #: Other ``config.json`` keys of the folder this encoder was loaded from, written back by :meth:`save`.
        self.extra_info: dict[str, Any] = {}
        self.data_config = self._resolve_data_config()

    def _resolve_data_config(self) -> dict[str, Any]:
        """Mean, std, interpolation and crop_pct from the backbone's pretrained_cfg (timm)."""
        import timm.data

        dc = timm.data.resolve_model_data_config(self.backbone)
        return {"mean": [float(v) for v in dc["mean"]], "std": [float(v) for v in dc["std"]],
                "interpolation": str(dc.get("interpolation", "bicubic")),
                "crop_pct": float(dc.get("crop_pct", 0.875)), "image_size": self.config.image_size}

    @property
    def descriptor_dim(self) -> int:
        """Dimension of what :meth:`embed` returns (after PCA, if one is attached)."""
        return self.pca.out_dim if self.pca is not None else self.feature_dim

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` normalised pixels -> ``(B, D)`` unit-norm descriptors (before PCA)."""
        tokens = self.backbone.forward_features(images)
        z = self.projection(self.pool(tokens))
        return F.normalize(z.float(), dim=-1)

    def set_pca(self, pca: PCAReduction | None, info: dict[str, Any] | None = None) -> None:
        """Attach ``pca`` (``None`` detaches), with the record :meth:`save` stores under ``config.json["pca"]``."""
        if pca is not None and pca.in_dim != self.feature_dim:
            raise ValueError(f"PCA expects {pca.in_dim}-d input but the encoder gives {self.feature_dim}-d")
        self.pca = pca
        self.pca_info = dict(info) if pca is not None and info is not None else None

    def reduce(self, z: torch.Tensor) -> torch.Tensor:
        """Apply the attached PCA (and re-normalise); identity without one."""
        return self.pca(z) if self.pca is not None else z

    def eval_transform(self) -> Callable[[Image.Image], torch.Tensor]:
        from vitrieval.data.transforms import eval_transform

        return eval_transform(self.data_config)

    @torch.no_grad()
    def embed(self, images: Sequence[Image.Image] | torch.Tensor, batch_size: int = 64,
              amp: str = "auto") -> np.ndarray:
        """Descriptors (after PCA, if any) of PIL images or a pre-processed batch, as float32 numpy."""
        from vitrieval.amp import autocast_context

        was_training = self.training
        self.eval()
        device = next(self.parameters()).device
        if isinstance(images, torch.Tensor):
            batches = [images[i:i + batch_size] for i in range(0, len(images), batch_size)]
        else:
            tf = self.eval_transform()
            batches = [torch.stack([tf(im) for im in images[i:i + batch_size]])
                       for i in range(0, len(images), batch_size)]
        out = []
        for x in batches:
            with autocast_context(device, amp):
                z = self.forward(x.to(device))
            out.append(self.reduce(z.float()).cpu())
        self.train(was_training)
        if not out:
            return np.zeros((0, self.descriptor_dim), dtype=np.float32)
        return torch.cat(out).numpy().astype(np.float32, copy=False)

    # -- persistence ---------------------------------------------------------------------------------------------
    def fingerprint(self) -> str:
        """A short id of architecture + weights: an index refuses queries embedded by another model."""
        h = hashlib.sha256(json.dumps(dataclasses.asdict(self.config), sort_keys=True).encode())
        for name, tensor in sorted(self.state_dict().items()):
            h.update(name.encode())
            t = tensor.detach().float().flatten()
            h.update(t[:: max(1, t.numel() // 64)].cpu().numpy().tobytes())
        return h.hexdigest()[:16]

    def save(self, directory: str | Path, extra: dict[str, Any] | None = None) -> Path:
        """Write ``model.safetensors`` + ``config.json`` (+ ``pca.safetensors``) atomically into ``directory``.

        ``config.json``: the ``STANDARD_KEYS``, then :attr:`extra_info`, the attached PCA's :attr:`pca_info` (as
        ``"pca"``) and ``extra`` (later ones win). Without a PCA, a ``pca.safetensors`` left there is removed.
        """
        from safetensors.torch import save_file

        from vitrieval.io_utils import atomic_path, atomic_write_json

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items() if not k.startswith("pca.")}
        with atomic_path(directory / MODEL_FILE) as tmp:
            save_file(state, str(tmp), metadata={"format": "vitrieval", "version": str(FORMAT_VERSION)})
        if self.pca is not None:
            self.pca.save(directory / PCA_FILE)
        elif (directory / PCA_FILE).exists():
            (directory / PCA_FILE).unlink()
        meta = {"format": "vitrieval", "version": FORMAT_VERSION, "model": dataclasses.asdict(self.config),
                "data_config": self.data_config, "feature_dim": self.feature_dim,
                "descriptor_dim": self.descriptor_dim, "fingerprint": self.fingerprint(), **self.extra_info}
        if self.pca is not None and self.pca_info is not None:
            meta[PCA_KEY] = dict(self.pca_info)
        meta.update(extra or {})
        atomic_write_json(directory / CONFIG_FILE, meta)
        return directory


def resolve_model_dir(directory: str | Path) -> Path:
    """The model folder of ``directory``: itself, or its ``model/`` sub-folder for a training output folder.

    ``directory`` is kept when it holds ``config.json`` or when neither does (the caller's error then names it).
    """
    directory = Path(directory)
    if not (directory / CONFIG_FILE).is_file() and (directory / "model" / CONFIG_FILE).is_file():
        return directory / "model"
    return directory


def at_image_size(encoder: Encoder, image_size: int | None) -> Encoder:
    """``encoder`` itself, or a copy whose ViT takes ``image_size`` inputs (position embeddings resampled)."""
    if image_size is None or image_size == int(encoder.data_config["image_size"]):
        return encoder
    if image_size < 1:
        raise ValueError(f"image size must be positive, got {image_size}")
    backbone = encoder.backbone
    if not hasattr(backbone, "set_input_size"):
        raise ValueError(f"{encoder.config.name}: cannot change the input size of this backbone "
                         f"(evaluate at its own size, {encoder.data_config['image_size']})")
    resized = copy.deepcopy(encoder)
    resized.backbone.set_input_size(img_size=(image_size, image_size))
    resized.data_config = {**encoder.data_config, "image_size": int(image_size)}
    return resized


def read_model_config(directory: str | Path) -> tuple[ModelConfig, dict[str, Any]]:
    """The model's config and the whole ``config.json`` of the model folder ``directory``."""
    directory = Path(directory)
    cfg_path = directory / CONFIG_FILE
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{directory} is not a vitrieval model folder: {CONFIG_FILE} not found")
    try:
        meta = json.loads(cfg_path.read_text())
        if not isinstance(meta, dict) or not isinstance(meta.get("model"), dict):
            raise ValueError("no \"model\" settings in it")
    except ValueError as exc:  # JSONDecodeError included; UnicodeDecodeError too
        raise ValueError(f"{cfg_path} is unreadable ({exc}); a damaged copy? copy the model folder again or "
                         "retrain") from None
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(meta.get("model", {})) - known)
    if unknown:
        raise ValueError(f"{cfg_path}: unknown model key(s) {', '.join(unknown)}; valid: {', '.join(sorted(known))}")
    return ModelConfig(**meta["model"]), meta


def _read_model_file(path: Path, read: Callable[[str], Any]) -> Any:
    """``read(path)``, or a ``ValueError`` naming a truncated or corrupt file and what to do."""
    try:
        return read(str(path))
    except Exception as exc:  # noqa: BLE001 - safetensors' SafetensorError, OSError...: one line naming the file
        detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise ValueError(f"{path} is unreadable ({detail}): truncated or damaged? copy the model folder again or "
                         "retrain") from None


def load(directory: str | Path, device: str | torch.device = "cpu") -> Encoder:
    """Load a trained encoder (and its PCA, if one was fitted) from a folder written by :meth:`Encoder.save`.

    ``directory`` may also be a training output folder (its ``model/`` sub-folder is used, see
    :func:`resolve_model_dir`). The other ``config.json`` keys are kept on the encoder (:attr:`Encoder.extra_info`,
    :attr:`Encoder.pca_info`), so saving it again preserves them.
    """
    from safetensors.torch import load_file

    directory = resolve_model_dir(directory)
    cfg, meta = read_model_config(directory)
    encoder = Encoder(cfg, load_pretrained=False)
    weights = directory / MODEL_FILE
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} not found (a model folder holds {MODEL_FILE} and {CONFIG_FILE})")
    state = _read_model_file(weights, load_file)
    expected = encoder.state_dict()
    if set(state) != set(expected) or any(tuple(state[k].shape) != tuple(expected[k].shape) for k in state):
        raise PretrainedWeightsError(f"{weights} does not fit the architecture in {directory / CONFIG_FILE} "
                                     f"({cfg.name}): {describe_mismatch(expected, state)}. The two files come "
                                     "from different models: copy the model folder again as a whole")
    encoder.load_state_dict(state)
    if (directory / PCA_FILE).is_file():
        stored = meta.get(PCA_KEY)
        pca = _read_model_file(directory / PCA_FILE, PCAReduction.load)
        encoder.set_pca(pca, stored if isinstance(stored, dict) else None)
    encoder.extra_info = {k: v for k, v in meta.items() if k not in STANDARD_KEYS and k != PCA_KEY}
    return encoder.to(device).eval()
