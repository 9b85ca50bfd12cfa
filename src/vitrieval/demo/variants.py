"""What the demo compares and how each run is configured: the two presets, the four variants (raw pixels, the
untrained encoder IRT_O, IRT_L with λ = 0, IRT_R with KoLeo), their display labels, and the config of one run."""

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

LABELS = {"raw_pixels": "raw pixels", "IRT_O": "IRT_O (untrained)", "IRT_L": "IRT_L",
          "IRT_R": f"IRT_R (λ={KOLEO_WEIGHT:g})"}


def demo_config(preset: str, table_csv: Path, seed: int, koleo_weight: float, name: str,
                extra: Sequence[str] = ()) -> Config:
    """The demo preset with the data, seed and λ of one run (plus ``extra`` ``key=value`` overrides)."""
    from vitrieval.presets import load_preset

    return apply_overrides(load_preset(preset), [
        f"name={name}", "data.dataset=csv", f"data.root={table_csv}", f"train.seed={seed}",
        f"loss.koleo_weight={koleo_weight}", *extra])
