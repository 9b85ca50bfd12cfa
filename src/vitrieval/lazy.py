"""A module imported on first use, so that importing a module that names it costs nothing (and needs no torch).

``torch = LazyModule("torch")`` at the top of a module makes ``torch.cuda.is_available()`` inside its functions
import torch then; a module that only *defines* things (dataclasses, constants) can thus be imported by the
torch-free serving path (``runtime="onnx"``, see :mod:`vitrieval.runtime`).
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any


class LazyModule:
    """Stands for the module ``name``: an attribute read imports it (once; Python caches it in ``sys.modules``).

    An attribute set on the stand-in (e.g. a test's ``monkeypatch.setattr``) shadows the module's own.
    """

    def __init__(self, name: str) -> None:
        self._name = name

    @property
    def module(self) -> ModuleType:
        return importlib.import_module(self._name)

    def __getattr__(self, attr: str) -> Any:
        return getattr(self.module, attr)

    def __repr__(self) -> str:
        return f"LazyModule({self._name!r})"
