"""The exported model file: where it lives, what it records (ONNX ``metadata_props``) and the checks on opening it.

``vitrieval export`` writes ``<model folder>/model.onnx``: one graph ``images (B, 3, S, S) -> descriptors (B, D)``
whose ``metadata_props`` record what the torch-free runtime needs to embed a query exactly as the torch path does:

=============================  =================================================================================
key                            value
=============================  =================================================================================
``vitrieval.fingerprint``      ``Encoder.fingerprint()`` of the exported model (an index refuses any other)
``vitrieval.data_config``      the model's timm data config as JSON (mean, std, interpolation, crop_pct, size)
``vitrieval.resize``           the eval resize mode the parity check used (an index's own mode wins at query time)
``vitrieval.descriptor_dim``   ``D``
``vitrieval.parity``           the maximum absolute difference to torch measured at export
=============================  =================================================================================

Torch-free: this module needs only the standard library (the checks read the metadata through onnxruntime).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ONNX_FILE = "model.onnx"
INPUT_NAME = "images"
OUTPUT_NAME = "descriptors"
META_PREFIX = "vitrieval."
_MODEL_CONFIG_FILE = "config.json"  # vitrieval.model.CONFIG_FILE (not imported: that module needs torch)


class OnnxModelError(ValueError):
    """The exported model is missing, unreadable or not the one an index was built with (one-line message)."""


def model_folder(checkpoint: str | Path) -> Path:
    """The model folder of ``checkpoint`` (itself, or ``model/`` of a training run folder), by the rule of
    :func:`vitrieval.model.resolve_model_dir`."""
    directory = Path(checkpoint).expanduser()
    if not (directory / _MODEL_CONFIG_FILE).is_file() and (directory / "model" / _MODEL_CONFIG_FILE).is_file():
        return directory / "model"
    return directory


def default_onnx_path(checkpoint: str | Path) -> Path:
    """``<model folder>/model.onnx``: where ``vitrieval export`` writes and ``runtime="onnx"`` looks."""
    return model_folder(checkpoint) / ONNX_FILE


@dataclass(frozen=True)
class OnnxModelInfo:
    """What an exported file records about its model (its ``metadata_props``)."""

    fingerprint: str
    data_config: dict[str, Any]
    descriptor_dim: int
    resize: str = "shorter"
    parity: float | None = None

    def to_metadata(self) -> dict[str, str]:
        """The ``metadata_props`` entries (string values)."""
        out = {"fingerprint": self.fingerprint, "data_config": json.dumps(self.data_config, sort_keys=True),
               "descriptor_dim": str(self.descriptor_dim), "resize": self.resize}
        if self.parity is not None:
            out["parity"] = f"{self.parity:.3e}"
        return {META_PREFIX + k: v for k, v in out.items()}

    @classmethod
    def from_metadata(cls, meta: dict[str, str], path: Path) -> OnnxModelInfo:
        """Read back :meth:`to_metadata`; an ONNX file not written by ``vitrieval export`` is refused."""
        values = {k[len(META_PREFIX):]: v for k, v in meta.items() if k.startswith(META_PREFIX)}
        missing = [k for k in ("fingerprint", "data_config", "descriptor_dim") if k not in values]
        if missing:
            raise OnnxModelError(f"{path} has no {META_PREFIX}{missing[0]} metadata: it was not written by "
                                 "`vitrieval export`; export the model again")
        try:
            return cls(values["fingerprint"], json.loads(values["data_config"]), int(values["descriptor_dim"]),
                       values.get("resize", "shorter"), float(values["parity"]) if "parity" in values else None)
        except ValueError as exc:
            raise OnnxModelError(f"{path}: unreadable vitrieval metadata ({exc}); export the model again") from None


def check_same_model(info: OnnxModelInfo, path: Path, fingerprint: str, descriptor_dim: int) -> None:
    """Refuse an exported file of another model than the index's (fingerprint, then dimension)."""
    if info.fingerprint != fingerprint:
        raise OnnxModelError(f"{path} was exported from model {info.fingerprint}, the index was built with model "
                             f"{fingerprint}: run `vitrieval export --checkpoint <the index's model>` again")
    if info.descriptor_dim != descriptor_dim:
        raise OnnxModelError(f"{path} gives {info.descriptor_dim}-d descriptors, the index holds "
                             f"{descriptor_dim}-d ones")
