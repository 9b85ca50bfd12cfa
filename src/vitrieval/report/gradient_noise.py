"""Fig 4 from training runs: the gradient noise γ (``grad_noise_nuclear`` in ``metrics.jsonl``, logged with
``train.log_gradient_noise``; :mod:`vitrieval.analyze.gradient_noise`) per run, and averaged against the margin.

A run's γ is the mean of its logged values (the paper averages γ over training iterations)::

    γ̄(run) = 1/T Σ_t γ_t,   γ_t = ‖Cov(ĝ)‖_* of the batch of logged step t

:func:`gamma_vs_margin` groups runs by their KoLeo weight λ (``loss.koleo_weight`` of ``config.yaml``) and draws
γ̄ against the margin β (``loss.margin``), one line per λ, as the paper's Fig 4 does for a Table 5 sweep.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from matplotlib.figure import Figure

from vitrieval.analyze.gradient_noise import GRADIENT_NOISE_KEY
from vitrieval.report.figures import _DPI, _VARIANT_COLOURS, _to_png


@dataclass(frozen=True)
class RunGamma:
    """One run's mean γ, how many logged steps it averages, and the run's β and λ (``None`` when unknown)."""

    run: str
    mean_gamma: float
    steps: int
    margin: float | None
    koleo_weight: float | None


def logged_gammas(rows: Sequence[Mapping[str, Any]]) -> list[float]:
    """The finite γ values of a run's metrics rows, in logged order."""
    values = [r.get(GRADIENT_NOISE_KEY) for r in rows]
    return [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(float(v))]


def run_gammas(rows_by_run: Mapping[str, Sequence[Mapping[str, Any]]],
               configs: Mapping[str, Mapping[str, Any]]) -> list[RunGamma]:
    """:class:`RunGamma` of every run that logged γ (the others are left out), in the given order."""
    out = []
    for name, rows in rows_by_run.items():
        gammas = logged_gammas(rows)
        if not gammas:
            continue
        loss = (configs.get(name) or {}).get("loss") or {}
        margin, weight = loss.get("margin"), loss.get("koleo_weight")
        out.append(RunGamma(name, sum(gammas) / len(gammas), len(gammas),
                            float(margin) if margin is not None else None,
                            float(weight) if weight is not None else None))
    return out


def gamma_vs_margin(points: Sequence[RunGamma]) -> bytes:
    """γ̄ against β, one line per λ (runs without a known β are left out), as PNG bytes (Fig 4)."""
    by_weight: dict[float | None, list[tuple[float, float]]] = {}
    for p in points:
        if p.margin is not None:
            by_weight.setdefault(p.koleo_weight, []).append((p.margin, p.mean_gamma))
    fig = Figure(figsize=(6.0, 3.6), dpi=_DPI, facecolor="white", layout="constrained")
    ax = fig.subplots()
    for i, (weight, pts) in enumerate(sorted(by_weight.items(), key=lambda kv: (kv[0] is None, kv[0] or 0.0))):
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], color=_VARIANT_COLOURS[i % len(_VARIANT_COLOURS)],
                lw=1.8, marker="o", ms=4, label=f"λ = {weight:g}" if weight is not None else "λ unknown")
    ax.set_title("gradient noise γ vs margin β (Fig 4)")
    ax.set_xlabel("margin β (loss.margin)")
    ax.set_ylabel("mean γ = ‖Cov(ĝ)‖_*")
    ax.grid(alpha=0.3)
    if by_weight:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no run with a known margin", ha="center", va="center", transform=ax.transAxes)
    return _to_png(fig)
