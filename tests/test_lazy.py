"""vitrieval.lazy: a stand-in imports its module on first attribute use, not before."""

from __future__ import annotations

import sys

import pytest

from vitrieval.lazy import LazyModule


def test_nothing_is_imported_until_an_attribute_is_read() -> None:
    sys.modules.pop("colorsys", None)
    lazy = LazyModule("colorsys")
    assert "colorsys" not in sys.modules and repr(lazy) == "LazyModule('colorsys')"
    assert lazy.rgb_to_hsv(1.0, 0.0, 0.0) == (0.0, 1.0, 1.0)
    assert "colorsys" in sys.modules and lazy.module is sys.modules["colorsys"]


def test_a_missing_module_fails_on_use_and_a_set_attribute_shadows() -> None:
    lazy = LazyModule("vitrieval_no_such_module")
    with pytest.raises(ModuleNotFoundError, match="vitrieval_no_such_module"):
        lazy.anything  # noqa: B018
    lazy.anything = 42  # what a test's monkeypatch.setattr on a stand-in does
    assert lazy.anything == 42


def test_the_serving_modules_name_torch_lazily() -> None:
    from vitrieval import amp, distributed

    assert isinstance(amp.torch, LazyModule) and isinstance(distributed.dist, LazyModule)
    assert str(amp.resolve_device("cpu")) == "cpu"
