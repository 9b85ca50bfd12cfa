"""Configuration as data: dataclasses, YAML presets and ``--set key=value`` overrides, all validated.

An unknown key stops with the list of valid keys; a value of the wrong type names the key and the expected type; a
value that cannot work (a zero period, a negative size or weight, a device, dataset or timm model that does not
exist, K < 2 for P x K batches, ...) names the key, the value and what is allowed (:meth:`Config.validate`), so
the CLI stops with one line and exit 2 before any work starts.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

POOLINGS = ("cls", "avg", "max", "gem", "mac", "spoc", "rmac")
"""Every ``model.pooling``: ViT tokens take cls / avg / max / gem, convnet feature maps mac / spoc / gem / rmac
(:data:`vitrieval.model.POOLINGS` checks the family)."""

@dataclass
class ModelConfig:
    """The encoder: a timm backbone (ViT / DeiT tokens or a convnet's feature map), a pooling, an optional
    projection, then L2 normalisation."""

    name: str = "deit_small_patch16_224"
    pretrained: bool = True  # timm's usual weights (needs the network) unless pretrained_file is set
    pretrained_file: str | None = None  # offline weights (.pth / .safetensors) loaded through timm
    image_size: int = 224
    patch_size: int | None = None  # override the backbone's patch size (e.g. 8 for 64 tokens at 64 px)
    depth: int | None = None  # override the number of blocks (small CPU models trained from scratch)
    embed_dim: int | None = None  # override the width (with num_heads)
    num_heads: int | None = None
    pooling: str = "cls"  # ViT tokens: cls | avg | max | gem; convnet feature maps: mac | spoc | gem | rmac
    gem_p: float = 3.0
    gem_learnable: bool = False
    projection_dim: int = 0  # 0 = no projection (the paper's setting)
    drop_path_rate: float = 0.0


@dataclass
class DataConfig:
    """Where the images come from and how they are turned into tensors."""

    dataset: str = "folder"
    root: str | None = None  # set by --data-root
    train_fraction: float = 0.5  # folder dataset: share of (sorted) classes used for training
    images_per_class: int = 4  # K of the P x K sampler
    num_workers: int | str = "auto"  # decode processes per rank, or auto (cores beside the model's: data/loading.py)
    train_resize_ratio: float = 256 / 224  # train: square resize to size * ratio, random crop, flip
    hflip: bool = True
    train_resize: str = "crop"  # crop (square resize to size * ratio, random crop) | square (landmarks: whole image)
    eval_resize: str = "shorter"  # shorter (resize shorter side, centre crop) | square (landmarks)
    fast_decode: bool = True  # JPEGs decoded at 1/2, 1/4, 1/8 scale when the first resize still gets its size
    on_bad_image: str = "stop"  # stop | skip (skip-and-count, logged)


@dataclass
class LossConfig:
    """L = objective + lambda * KoLeo(batch); the objective (P x K batches) is ``objective``:

    contrastive(batch) + w * contrastive(batch, memory) (the paper's), nsoftmax (softmax over learned class
    proxies, Zhai & Wu 2018) or snca (softmax over a memory of every training image, Wu et al. 2018).
    """

    objective: str = "contrastive"  # contrastive | nsoftmax | snca (train.sampler=classes)
    temperature: float = 0.05  # nsoftmax / snca: tau of the softmax (0.05 in both references)
    proxy_lr_multiplier: float = 1.0  # nsoftmax: the proxies' lr = train.lr x this (1 in Zhai & Wu's code)
    proxy_warmup_iterations: int = 0  # nsoftmax: first N steps update only proxies + head, backbone frozen
    snca_momentum: float = 0.5  # snca: memory[i] <- normalise(m * memory[i] + (1 - m) * z_i) (0.5 in Wu et al.'s code)
    margin: float = 0.5  # beta of Eq. 1; with train.sampler=tuples the distance margin tau (0.85 in cirtorch)
    koleo_weight: float = 0.0  # lambda of Eq. 5; 0 = IRT_L, > 0 = IRT_R
    koleo_eps: float = 1e-8
    koleo_global: bool = False  # under torchrun: KoLeo over the global batch (default: per rank, as the paper)


@dataclass
class MemoryConfig:
    """Cross-batch memory (XBM): a FIFO queue of detached embeddings and labels."""

    size: int = 0  # 0 disables the memory
    start_iteration: int = 1000
    weight: float = 1.0
    momentum: float = 0.0  # > 0: queued embeddings come from a momentum encoder (0.999 for In-Shop)


@dataclass
class TuplesConfig:
    """Tuple training for particular objects (cirtorch's SfM-120k procedure; used when ``train.sampler=tuples``).

    Each epoch draws ``query_size`` query-positive pairs and a pool of ``pool_size`` images, embeds both with the
    current model and gives every query its ``negatives`` hardest pool images outside its cluster (at most one per
    cluster); a step takes ``per_batch`` tuples of 1 + 1 + ``negatives`` images.
    """

    epochs: int = 100
    query_size: int = 2000
    pool_size: int = 22000
    negatives: int = 5
    per_batch: int = 5
    lr_decay: float = 0.01  # lr *= exp(-lr_decay) after every epoch
    mining_batch_size: int = 32  # images per forward pass while mining


@dataclass
class TrainConfig:
    """The optimisation loop (iterations are optimizer steps, as the paper counts them)."""

    sampler: str = "classes"  # classes (P x K batches, Eq. 1 + memory) | tuples (mined tuples, see the tuples section)
    iterations: int = 35000  # optimizer steps (sampler=classes; with tuples the length is tuples.epochs)
    batch_size: int = 64
    optimizer: str = "adamw"  # adamw (decoupled weight decay) | adam (L2 penalty, cirtorch) | sgd (L2 penalty)
    sgd_momentum: float = 0.9  # train.optimizer=sgd only: heavy-ball momentum (0 = plain SGD)
    lr: float = 3e-5
    weight_decay: float = 5e-4
    weight_decay_exempt: bool = True  # no decay on 1-d (norm, bias) params, pos_embed, cls/dist tokens (timm, DeiT)
    gem_p_lr_multiplier: float = 10.0  # a learnable GeM p trains at lr x this, without decay (cirtorch)
    sync_bn: bool = True  # torchrun on GPUs: a convnet's BatchNorm as SyncBatchNorm (global batch statistics)
    log_gradient_noise: bool = False  # Fig 4: log gamma = ||Cov(grad directions)||_* at every log step
    amp: str = "auto"  # auto (bf16 on CPU and recent GPUs) | bf16 | fp16 | off
    grad_clip: float = 0.0  # max gradient norm; 0 = off
    batchnorm: str = "train"  # train (batch statistics) | frozen (BatchNorm in eval mode, as cirtorch; convnets)
    checkpoint_every: int = 1000
    eval_every: int = 0  # 0 = only at the end
    log_every: int = 10
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    eval_ks: list[int] = field(default_factory=lambda: [1, 2, 4, 8])
    eval_max_images: int = 0  # 0 = all held-out images in periodic evaluation


@dataclass
class Config:
    """A whole run: what a preset YAML file holds."""

    name: str = "custom"
    description: str = ""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    tuples: TuplesConfig = field(default_factory=TuplesConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self, check_model_registry: bool = True) -> Config:
        """Check every value before any work starts; a ``ValueError`` names the key, the value and what is allowed.

        ``train.eval_every=0`` (evaluate only at the end), ``memory.size=0`` (no memory), ``train.grad_clip=0`` and
        ``model.projection_dim=0`` (off) keep their meaning. With ``check_model_registry`` the model name is
        checked against timm's registry last: that imports timm (seconds), so reading a preset or YAML file checks
        the values only and the trainer, which builds the model next, checks the name before any work starts.
        """
        choices = {
            "model.pooling": (self.model.pooling, POOLINGS),
            "data.eval_resize": (self.data.eval_resize, ("shorter", "square")),
            "data.train_resize": (self.data.train_resize, ("crop", "square")),
            "train.sampler": (self.train.sampler, ("classes", "tuples")),
            "loss.objective": (self.loss.objective, ("contrastive", "nsoftmax", "snca")),
            "train.optimizer": (self.train.optimizer, ("adamw", "adam", "sgd")),
            "train.batchnorm": (self.train.batchnorm, ("train", "frozen")),
            "data.on_bad_image": (self.data.on_bad_image, ("stop", "skip")),
            "train.amp": (self.train.amp, ("auto", "bf16", "fp16", "off")),
        }
        for key, (value, allowed) in choices.items():
            if value not in allowed:
                raise ValueError(f"config key {key}: {value!r} is not one of {', '.join(allowed)}")
        if not _DEVICE.fullmatch(str(self.train.device)):
            raise ValueError(f"config key train.device: {self.train.device!r} is not one of auto, cpu, cuda, "
                             f"cuda:N (N = 0, 1, ...), mps")
        if self.train.amp == "fp16" and (self.train.device == "cpu" or self.train.device == "mps"):
            raise ValueError(f"config key train.amp: fp16 autocast needs a CUDA device, train.device is "
                             f"{self.train.device!r}; use train.amp=bf16 or off")
        m, d, lo, mem, tu, tr = self.model, self.data, self.loss, self.memory, self.tuples, self.train
        positive = {
            "model.image_size": m.image_size, "train.batch_size": tr.batch_size,
            "train.iterations": tr.iterations, "data.images_per_class": d.images_per_class,
            "tuples.epochs": tu.epochs, "tuples.query_size": tu.query_size,
            "tuples.pool_size": tu.pool_size, "tuples.per_batch": tu.per_batch,
            "tuples.mining_batch_size": tu.mining_batch_size,
            "train.checkpoint_every": tr.checkpoint_every, "train.log_every": tr.log_every,
            "train.lr": tr.lr, "model.gem_p": m.gem_p, "loss.koleo_eps": lo.koleo_eps,
            "loss.temperature": lo.temperature, "loss.proxy_lr_multiplier": lo.proxy_lr_multiplier,
            "train.gem_p_lr_multiplier": tr.gem_p_lr_multiplier,
        }
        for key, value in positive.items():
            if value <= 0:
                raise ValueError(f"config key {key} must be > 0, got {value}")
        for key, value in {"model.patch_size": m.patch_size, "model.depth": m.depth,
                           "model.embed_dim": m.embed_dim, "model.num_heads": m.num_heads}.items():
            if value is not None and value <= 0:
                raise ValueError(f"config key {key} must be > 0 (or null: the backbone's own), got {value}")
        non_negative = {
            "model.projection_dim": m.projection_dim,
            "loss.koleo_weight": lo.koleo_weight, "memory.size": mem.size,
            "memory.start_iteration": mem.start_iteration, "memory.weight": mem.weight,
            "tuples.negatives": tu.negatives, "tuples.lr_decay": tu.lr_decay,
            "train.weight_decay": tr.weight_decay, "train.grad_clip": tr.grad_clip,
            "train.eval_every": tr.eval_every, "train.eval_max_images": tr.eval_max_images,
            "loss.proxy_warmup_iterations": lo.proxy_warmup_iterations,
        }
        for key, value in non_negative.items():
            if value < 0:
                raise ValueError(f"config key {key} must be >= 0, got {value}")
        ranges = {  # key: (value, ok, the allowed range)
            "data.train_fraction": (d.train_fraction, 0.0 < d.train_fraction < 1.0, "in (0, 1)"),
            "memory.momentum": (mem.momentum, 0.0 <= mem.momentum < 1.0, "in [0, 1)"),
            "train.sgd_momentum": (tr.sgd_momentum, 0.0 <= tr.sgd_momentum < 1.0, "in [0, 1)"),
            "loss.snca_momentum": (lo.snca_momentum, 0.0 <= lo.snca_momentum < 1.0, "in [0, 1)"),
            "model.drop_path_rate": (m.drop_path_rate, 0.0 <= m.drop_path_rate < 1.0, "in [0, 1)"),
            "data.train_resize_ratio": (d.train_resize_ratio, d.train_resize_ratio >= 1.0,
                                        ">= 1 (a resize to image_size x ratio, then a random crop of image_size)"),
            "train.seed": (tr.seed, 0 <= tr.seed < 2 ** 32, "in [0, 2**32) (numpy's seed range)"),
        }
        if tr.sampler == "classes":
            ranges["loss.margin"] = (lo.margin, -1.0 < lo.margin < 1.0,
                                     "in (-1, 1) with train.sampler=classes (a cosine-similarity margin: "
                                     "negatives count while their similarity is above it)")
        else:
            ranges["loss.margin"] = (lo.margin, 0.0 < lo.margin <= 2.0,
                                     "in (0, 2] with train.sampler=tuples (a distance margin between unit "
                                     "vectors: negatives count while closer than it)")
        for key, (value, ok, allowed) in ranges.items():
            if not ok:
                raise ValueError(f"config key {key} must be {allowed}, got {value}")
        if not tr.eval_ks or any(k <= 0 for k in tr.eval_ks):
            raise ValueError(f"config key train.eval_ks must be a non-empty list of integers > 0, got {tr.eval_ks}")
        if m.embed_dim is not None and m.num_heads is not None and m.embed_dim % m.num_heads:
            raise ValueError(f"config keys model.embed_dim ({m.embed_dim}) and model.num_heads ({m.num_heads}): "
                             f"the width must be a multiple of the number of heads")
        if tr.sampler == "tuples" and (mem.size > 0 or mem.momentum > 0):
            raise ValueError("config keys memory.size / memory.momentum: tuple training (train.sampler=tuples) has "
                             "no cross-batch memory; set memory.size=0 and memory.momentum=0")
        if lo.objective != "contrastive" and tr.sampler != "classes":
            raise ValueError(f"config key loss.objective: {lo.objective} trains on P x K batches "
                             f"(train.sampler=classes), not train.sampler={tr.sampler}")
        if lo.objective != "contrastive" and (mem.size > 0 or mem.momentum > 0):
            raise ValueError(f"config keys memory.size / memory.momentum: the cross-batch memory feeds the "
                             f"contrastive objective only, loss.objective is {lo.objective} (snca keeps its own "
                             f"memory of every training image); set memory.size=0 and memory.momentum=0")
        if tr.log_gradient_noise and tr.sampler != "classes":
            raise ValueError(f"config key train.log_gradient_noise: gamma of Eq. 1 is logged by the P x K trainer "
                             f"(train.sampler=classes), not train.sampler={tr.sampler}")
        if tr.sampler == "classes" and d.images_per_class < 2:
            raise ValueError(f"config key data.images_per_class must be >= 2 with train.sampler=classes, got "
                             f"{d.images_per_class}: a P x K batch holds K images of each of P classes, and the "
                             f"loss needs two images of a class for a positive pair")
        if tr.sampler == "classes" and tr.batch_size % d.images_per_class:
            raise ValueError(f"train.batch_size ({tr.batch_size}) must be a multiple of "
                             f"data.images_per_class ({d.images_per_class})")
        d.num_workers = _check_num_workers(d.num_workers)
        _check_dataset(d.dataset)
        if check_model_registry:
            check_model_name(m.name)
        return self


_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")
"""What ``train.device`` may be (``vitrieval.amp.resolve_device`` takes these)."""

_MODEL_SOURCES = ("hf-hub", "hf_hub", "local-dir")
"""timm's name prefixes for weights from elsewhere (``hf-hub:timm/...``): resolved by timm when the model is built."""


def check_model_name(name: str) -> None:
    """``ValueError`` unless ``name`` is a timm model (``arch`` or ``arch.pretrained_tag``), naming close matches."""
    source, sep, rest = name.partition(":")
    if sep and source.lower() in _MODEL_SOURCES and rest:
        return
    import difflib

    import timm

    arch, _, tag = name.partition(".")
    if timm.is_model(arch):
        if not tag:
            return
        tagged = list(timm.list_pretrained(f"{arch}.*"))
        if name in tagged:
            return
        raise ValueError(f"config key model.name: {name!r} has no pretrained tag {tag!r} in timm; "
                         f"{arch}'s are: {', '.join(t.partition('.')[2] for t in tagged) or 'none'}")
    models = timm.list_models()
    close = [n for n in models if n.startswith(arch)][:5] or difflib.get_close_matches(arch, models, n=5, cutoff=0.6)
    hint = f"; close matches: {', '.join(close)}" if close else "; e.g. deit_small_patch16_224 (the paper's DeiT-S)"
    raise ValueError(f"config key model.name: {name!r} is not a timm model{hint} (all: timm.list_models())")


def _check_num_workers(value: int | str) -> int | str:
    """``data.num_workers``: an integer >= 0 (``--set data.num_workers=2`` arrives as "2") or ``auto``."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
        return value
    raise ValueError(f"config key data.num_workers must be >= 0 (an integer) or auto, got {value!r}")


def _check_dataset(name: str) -> None:
    from vitrieval.data.readers import READERS

    if name not in READERS:
        raise ValueError(f"config key data.dataset: {name!r} is not one of {', '.join(sorted(READERS))}")


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def valid_keys(cls: type = Config, prefix: str = "") -> list[str]:
    """Every dotted key a config accepts, e.g. ``train.iterations``."""
    keys = []
    for name, tp in _field_types(cls).items():
        if dataclasses.is_dataclass(tp):
            keys.extend(valid_keys(tp, f"{prefix}{name}."))
        else:
            keys.append(f"{prefix}{name}")
    return keys


def unknown_key_hint(key: str, keys: list[str]) -> str:
    """What to say about an unknown dotted ``key``: the closest valid keys (difflib) in its section (or anywhere,
    for a wrong section), else the keys of its section, else the sections: a short line, never all ~80 keys."""
    section, _, last = key.rpartition(".")
    in_section = [k[len(section) + 1:] for k in keys if section and k.startswith(section + ".")]
    if in_section:
        close = [f"{section}.{n}" for n in difflib.get_close_matches(last, in_section, n=3, cutoff=0.6)]
        if close:
            return f"did you mean {' or '.join(close)}?"
        return f"the keys of {section}: {', '.join(in_section)}"
    by_last = {k.rpartition(".")[2]: k for k in keys}
    close = difflib.get_close_matches(key, keys, n=3, cutoff=0.75)
    close += [by_last[n] for n in difflib.get_close_matches(last, list(by_last), n=3, cutoff=0.75)
              if by_last[n] not in close]
    if close:
        return f"did you mean {' or '.join(close[:3])}?"
    sections = list(dict.fromkeys(k.split(".", 1)[0] for k in keys if "." in k))
    return f"keys are SECTION.NAME with SECTION one of {', '.join(sections)} (vitrieval presets NAME shows them all)"


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp`` (int -> float allowed); raise naming ``key``."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except (TypeError, ValueError) as exc:
                errors.append(str(exc))
        raise TypeError(f"config key {key}: expected {_type_name(tp)}, got {value!r}")
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"config key {key}: expected a list of {_type_name(item_tp)}, got {value!r}")
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise TypeError(f"config key {key}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise TypeError(f"config key {key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 5e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise TypeError(f"config key {key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        hint = " (YAML reads on/off/yes/no as booleans: quote the value)" if isinstance(value, bool) else ""
        raise TypeError(f"config key {key}: expected a string, got {value!r}{hint}")
    raise TypeError(f"config key {key}: unsupported type {tp}")


def _build(cls: type, data: dict[str, Any], prefix: str, source: str) -> Any:
    if not isinstance(data, dict):
        raise TypeError(f"{source}: section {prefix.rstrip('.') or '<root>'} must be a mapping, got {data!r}")
    hints = _field_types(cls)
    unknown = sorted(set(data) - set(hints))
    if unknown:
        keys = [f"{prefix}{k}" for k in unknown]
        hints_ = "; ".join(f"{k}: {unknown_key_hint(k, valid_keys(Config))}" for k in keys)
        raise KeyError(f"{source}: unknown config key(s) {', '.join(keys)} ({hints_})")
    kwargs = {}
    for name, value in data.items():
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, value or {}, f"{prefix}{name}.", source)
        else:
            kwargs[name] = _coerce(value, tp, f"{prefix}{name}")
    return cls(**kwargs)


def config_from_dict(data: dict[str, Any], source: str = "config") -> Config:
    """Build and validate a :class:`Config` from nested dicts (unknown keys and wrong types are errors)."""
    try:
        return _build(Config, data, "", source).validate(check_model_registry=False)
    except TypeError as exc:
        raise ValueError(f"{source}: {exc}") from None


def load_config(path: str | Path) -> Config:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    return config_from_dict(read_yaml(path), str(path))


def read_yaml(path: Path) -> dict[str, Any]:
    """The YAML mapping in ``path`` (``{}`` for an empty file); invalid YAML is an error naming the file."""
    try:
        return yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: invalid YAML ({exc})") from None


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.iterations=100"`` -> (["train", "iterations"], 100); the value is parsed as YAML."""
    if "=" not in text:
        raise ValueError(f"override {text!r} must look like key=value (e.g. train.iterations=100)")
    key, raw = text.split("=", 1)
    key = key.strip()
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def _is_string_field(path: list[str]) -> bool:
    cls: Any = Config
    for part in path[:-1]:
        cls = _field_types(cls)[part]
    tp = _field_types(cls)[path[-1]]
    return tp is str or (typing.get_origin(tp) in (Union, types.UnionType) and str in typing.get_args(tp))


def apply_overrides(config: Config, overrides: list[str]) -> Config:
    """Apply ``key=value`` overrides; unknown keys list the valid ones; wrong types name the key."""
    data = config.to_dict()
    all_keys = valid_keys()
    for text in overrides:
        path, value = parse_override(text)
        dotted = ".".join(path)
        if dotted not in all_keys:
            raise KeyError(f"unknown config key {dotted!r}; {unknown_key_hint(dotted, all_keys)}")
        if _is_string_field(path) and isinstance(value, (bool, int, float)):
            value = text.split("=", 1)[1].strip()  # --set train.amp=off means the string "off", not false
        node = data
        for part in path[:-1]:
            node = node[part]
        node[path[-1]] = value
    return config_from_dict(data, "--set")


def save_config(config: Config, path: str | Path) -> None:
    from vitrieval.io_utils import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(config.to_dict(), sort_keys=False))
