"""The encoder: timm backbone -> pooling -> [projection] -> [PCA] -> L2 normalisation.

Two backbone families (:func:`backbone_family`), one descriptor recipe:

- **tokens** (ViT / DeiT, a timm model with ``num_prefix_tokens``): ``forward_features`` gives ``(B, N, D)``;
  the descriptor is the CLS token (after the final LayerNorm; token 0 also for distilled models, whose
  ``forward_head(pre_logits=True)`` would average CLS and distillation tokens), or avg / max / GeM over the patch
  tokens (:class:`~vitrieval.pooling.TokenPooling`; ``model.pooling`` cls | avg | max | gem).
- **feature maps** (any other timm model, e.g. ``resnet50``): ``forward_features`` gives ``(B, C, H, W)``; the
  descriptor is MAC / SPoC / GeM / R-MAC over the map (:class:`~vitrieval.pooling.FeatureMapPooling`;
  ``model.pooling`` mac | spoc | gem | rmac), ``C`` = 2048 for ResNet-50 / 101.

Then the optional projection (:meth:`Encoder.pooled`), and the L2 normalisation: :meth:`Encoder.forward` (training)
normalises the pooled vector, :meth:`Encoder.reduce` gives the final descriptor, ``L2(PCA(pooled))`` with an attached
PCA, fitted on pooled vectors, in the paper's order (§3.2: "we optionally reduce the vector by PCA *before*
normalizing it"; not pool → L2 → PCA → L2), else ``L2(pooled)``.

A trained model is a folder: ``model.safetensors`` + ``config.json`` (+ ``pca.safetensors``);
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
from vitrieval.pooling import FEATURE_MAP_POOLINGS, FeatureMapPooling, TokenPooling

log = logging.getLogger(__name__)

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
PCA_FILE = "pca.safetensors"
FORMAT_VERSION = 1
#: The ``config.json`` keys that describe the model itself (rewritten by every save).
STANDARD_KEYS = ("format", "version", "model", "data_config", "feature_dim", "descriptor_dim", "fingerprint")
#: The ``config.json`` key recording how the attached PCA was fitted (``{"dim", "whiten", "fitted_on"}``).
PCA_KEY = "pca"


#: The ``model.pooling`` values of each backbone family.
TOKEN_POOLINGS = ("cls", "avg", "max", "gem")
POOLINGS = {"tokens": TOKEN_POOLINGS, "feature_map": FEATURE_MAP_POOLINGS}
#: ``ModelConfig`` keys that resize a ViT (timm's ``img_size`` included): a convnet takes none of them.
_VIT_ONLY_KEYS = ("patch_size", "depth", "embed_dim", "num_heads")


def backbone_family(backbone: nn.Module) -> str:
    """``"tokens"`` for a timm model with prefix tokens (ViT / DeiT / EVA ...), else ``"feature_map"``."""
    return "tokens" if hasattr(backbone, "num_prefix_tokens") else "feature_map"


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


def _timm_create(name: str, pretrained: bool, kwargs: dict[str, Any], **extra: Any) -> nn.Module:
    """``timm.create_model``; a model that takes no ``img_size`` (a convnet: any input size) is built without it,
    and ViT-only settings given to such a model stop with a message naming them."""
    import timm

    try:
        return timm.create_model(name, pretrained=pretrained, **kwargs, **extra)
    except TypeError as exc:
        if "img_size" not in str(exc):
            raise
    rest = {k: v for k, v in kwargs.items() if k != "img_size"}
    vit_only = [f"model.{k}" for k in _VIT_ONLY_KEYS if k in rest]
    if vit_only:
        raise ValueError(f"{', '.join(vit_only)}: only a ViT backbone takes these; {name} is not one (set them to "
                         "null)")
    return timm.create_model(name, pretrained=pretrained, **rest, **extra)


def _without_heads(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` without the classifier entries (timm drops the classifier: ``num_classes=0``) and without
    BatchNorm's ``num_batches_tracked`` counters (some checkpoints leave them out)."""
    heads = model.pretrained_cfg.get("classifier") or ()
    heads = (heads,) if isinstance(heads, str) else tuple(heads)
    return {k: v for k, v in state.items()
            if not any(k.startswith(h + ".") for h in heads) and not k.endswith("num_batches_tracked")}


def _weights_error(cfg: ModelConfig, kwargs: dict[str, Any], path: Path, why: str) -> PretrainedWeightsError:
    """The error for weights in ``path`` that do not fit ``cfg``'s backbone: the file, the model and the keys."""
    reference_model = _timm_create(cfg.name, False, kwargs)
    try:
        found = _without_heads(reference_model, _read_state_dict(path))
        detail = describe_mismatch(_without_heads(reference_model, reference_model.state_dict()), found)
    except Exception as read_exc:  # noqa: BLE001 - reported to the user, nothing is lost
        detail = f"unreadable checkpoint ({read_exc})"
    return PretrainedWeightsError(
        f"pretrained weights {path} do not fit {cfg.name} (image_size={cfg.image_size}"
        f"{f', patch_size={cfg.patch_size}' if cfg.patch_size else ''}): {detail}. {why}")


def create_backbone(cfg: ModelConfig) -> nn.Module:
    """Create the timm backbone without a classifier; load pretrained weights (hub or ``pretrained_file``).

    ViTs are built for ``model.image_size`` (their position embeddings); convnets take any size as they are.
    """
    kwargs: dict[str, Any] = {"num_classes": 0, "img_size": cfg.image_size, "drop_path_rate": cfg.drop_path_rate}
    for key in _VIT_ONLY_KEYS:
        if getattr(cfg, key):
            kwargs[key] = getattr(cfg, key)
    if cfg.pretrained_file:
        path = Path(cfg.pretrained_file).expanduser()
        if not path.is_file():
            raise PretrainedWeightsError(f"pretrained weights file not found: {path} (model.pretrained_file)")
        try:
            model = _timm_create(cfg.name, True, kwargs, pretrained_cfg_overlay={"file": str(path)})
        except (RuntimeError, KeyError, ValueError) as exc:
            raise _weights_error(cfg, kwargs, path, f"timm said: {str(exc).splitlines()[0][:300]}") from None
        # timm loads non-strictly when the classifier is dropped (num_classes=0): a file that leaves weights of
        # the model unset (another architecture, e.g. a ViT's weights for a ResNet) must not pass silently.
        found = _read_state_dict(path)
        if any(k not in found for k in _without_heads(model, model.state_dict())):
            raise _weights_error(cfg, kwargs, path, "timm left these weights at their initial values")
        changes = resampled(found, model.state_dict())
        log.info("model.pretrained_file: loaded %s into %s%s", path, cfg.name,
                 f"; resampled {', '.join(changes)}" if changes else " (no resampling)")
        return model
    model = _timm_create(cfg.name, cfg.pretrained, kwargs)
    if cfg.pretrained:
        source = getattr(model, "pretrained_cfg", {}) or {}
        log.info("model.pretrained: loaded timm's weights for %s (%s)", cfg.name,
                 source.get("hf_hub_id") or source.get("url") or source.get("tag") or "timm's default")
    return model


def resampled(found: dict[str, torch.Tensor], model_state: dict[str, torch.Tensor]) -> list[str]:
    """What timm resampled to fit the weights ``found`` to the model: the patch size (``patch_embed.proj.weight``'s
    kernel, e.g. ``patch 16 -> 8``) and the number of position tokens (``pos_embed``, e.g. ``197 -> 65 position
    tokens``)."""
    changes = []
    kernel, want = found.get("patch_embed.proj.weight"), model_state.get("patch_embed.proj.weight")
    if kernel is not None and want is not None and kernel.shape[-2:] != want.shape[-2:]:
        changes.append(f"patch {'x'.join(map(str, kernel.shape[-2:]))} -> {'x'.join(map(str, want.shape[-2:]))}"
                       if kernel.shape[-2] != kernel.shape[-1] or want.shape[-2] != want.shape[-1]
                       else f"patch {kernel.shape[-1]} -> {want.shape[-1]}")
    pos, want_pos = found.get("pos_embed"), model_state.get("pos_embed")
    if pos is not None and want_pos is not None and pos.shape != want_pos.shape:
        changes.append(f"{pos.shape[-2]} -> {want_pos.shape[-2]} position tokens")
    return changes


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
        #: ``"tokens"`` (ViT / DeiT) or ``"feature_map"`` (convnets), see :func:`backbone_family`.
        self.family = backbone_family(self.backbone)
        allowed = POOLINGS[self.family]
        if cfg.pooling not in allowed:
            kind = "a token (ViT)" if self.family == "tokens" else "a feature-map (convnet)"
            raise ValueError(f"config key model.pooling: {cfg.pooling!r} does not apply to {cfg.name}, {kind} "
                             f"backbone; its poolings are {', '.join(allowed)}")
        self.pool: nn.Module
        if self.family == "tokens":
            num_prefix = int(self.backbone.num_prefix_tokens)
            self.pool = TokenPooling(cfg.pooling, num_prefix, cfg.gem_p, cfg.gem_learnable)
        else:
            self.pool = FeatureMapPooling(cfg.pooling, cfg.gem_p, cfg.gem_learnable)
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

    #: ``train.batchnorm=frozen``: BatchNorm layers stay in eval mode (ImageNet statistics) when training.
    batchnorm_frozen: bool = False

    def train(self, mode: bool = True) -> Encoder:
        """``nn.Module.train``; with :attr:`batchnorm_frozen` every BatchNorm layer stays in eval mode (its running
        statistics are used and kept, its affine weights still learn), as cirtorch trains on tuples."""
        super().train(mode)
        if mode and self.batchnorm_frozen:
            for module in self.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self

    @property
    def descriptor_dim(self) -> int:
        """Dimension of what :meth:`embed` returns (after PCA, if one is attached)."""
        return self.pca.out_dim if self.pca is not None else self.feature_dim

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` normalised pixels -> ``(B, D)`` unit-norm descriptors ``L2(pooled)`` (no PCA)."""
        return F.normalize(self.pooled(images), dim=-1)

    def pooled(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` -> ``(B, D)`` pooled (and projected) vectors, float32, *not* normalised: what a PCA is
        fitted on and applied to (:meth:`reduce`)."""
        features = self.backbone.forward_features(images)
        if self.family == "feature_map" and features.ndim != 4:
            raise ValueError(f"{self.config.name}: forward_features gave shape {tuple(features.shape)}, not a "
                             "(B, C, H, W) feature map; vitrieval pools token sequences only of ViTs with prefix "
                             "tokens and (B, C, H, W) maps of convnets")
        return self.projection(self.pool(features)).float()

    def set_pca(self, pca: PCAReduction | None, info: dict[str, Any] | None = None) -> None:
        """Attach ``pca`` (``None`` detaches), with the record :meth:`save` stores under ``config.json["pca"]``."""
        if pca is not None and pca.in_dim != self.feature_dim:
            raise ValueError(f"PCA expects {pca.in_dim}-d input but the encoder gives {self.feature_dim}-d")
        self.pca = pca
        self.pca_info = dict(info) if pca is not None and info is not None else None

    def reduce(self, pooled: torch.Tensor) -> torch.Tensor:
        """The final descriptor of :meth:`pooled` vectors: ``L2(PCA(pooled))`` with an attached PCA, else
        ``L2(pooled)`` (pool → PCA → L2)."""
        return self.pca(pooled) if self.pca is not None else F.normalize(pooled.float(), dim=-1)

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
                pooled = self.pooled(x.to(device))
            out.append(self.reduce(pooled.float()).cpu())
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
    """``encoder`` itself, or a copy that takes ``image_size`` inputs: a ViT with its position embeddings resampled,
    a convnet (which takes any size) with only its pre-processing size changed."""
    if image_size is None or image_size == int(encoder.data_config["image_size"]):
        return encoder
    if image_size < 1:
        raise ValueError(f"image size must be positive, got {image_size}")
    if encoder.family == "feature_map":
        resized = copy.deepcopy(encoder)
        resized.data_config = {**encoder.data_config, "image_size": int(image_size)}
        return resized
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
