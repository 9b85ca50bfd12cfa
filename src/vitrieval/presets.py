"""Presets: the paper's recipes and small CPU runs, as YAML files shipped inside the package."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from vitrieval.config import Config, load_config


def preset_dir() -> Path:
    return Path(str(resources.files("vitrieval") / "presets"))


def list_presets() -> dict[str, str]:
    """Preset name -> one-line description."""
    out = {}
    for path in sorted(preset_dir().glob("*.yaml")):
        out[path.stem] = load_config(path).description
    return out


def load_preset(name: str) -> Config:
    path = preset_dir() / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in preset_dir().glob("*.yaml")))
        raise ValueError(f"unknown preset {name!r}; known presets: {known} (see `vitrieval presets`)")
    return load_config(path)
