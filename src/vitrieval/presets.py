"""Presets: the paper's recipes and small CPU runs, as YAML files shipped inside the package.

A preset may start from another with ``base: <preset name>``: its sections are merged key by key over the base's
(the pooling ablation of Table 9 is a CLS preset with ``model.pooling`` switched).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

from vitrieval.config import Config, config_from_dict, read_yaml


def preset_dir() -> Path:
    return Path(str(resources.files("vitrieval") / "presets"))


def _names() -> list[str]:
    return sorted(p.stem for p in preset_dir().glob("*.yaml"))


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def preset_data(name: str, _seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """The preset's YAML as nested dicts, with its ``base`` chain merged in."""
    path = preset_dir() / f"{name}.yaml"
    if not path.is_file():
        raise ValueError(f"unknown preset {name!r}; known presets: {', '.join(_names())} (see `vitrieval presets`)")
    if name in _seen:
        raise ValueError(f"preset {name}: circular base chain {' -> '.join((*_seen, name))}")
    data = read_yaml(path)
    base = data.pop("base", None)
    if base is None:
        return data
    return _merge(preset_data(str(base), (*_seen, name)), data)


def list_presets() -> dict[str, str]:
    """Preset name -> one-line description."""
    return {name: load_preset(name).description for name in _names()}


def load_preset(name: str) -> Config:
    return config_from_dict(preset_data(name), str(preset_dir() / f"{name}.yaml"))
