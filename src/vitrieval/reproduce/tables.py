"""A reproduced table beside the paper's: ``table.json``, ``table.md`` and a self-contained ``table.html``.

For every cell: ours (read from the step's JSON, in percent for retrieval metrics), the paper's, and the
difference ``ours − paper`` (``None`` where either is missing). Sweep tables (Table 5, the CPU grid) also get a
heat map per backbone (λ rows × β columns: ours, the paper's, the difference), embedded as a PNG data URI.
"""

from __future__ import annotations

import html
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vitrieval.io_utils import atomic_write_json, atomic_write_text
from vitrieval.reproduce.paper import CAPTIONS
from vitrieval.reproduce.rows import Row, Source
from vitrieval.reproduce.runner import render


def read_ours(source: Source, out: str | Path) -> float | None:
    """Our number for one cell: ``source.keys`` in the step's JSON times ``source.scale``; ``None`` if not there."""
    path = Path(render(source.step.done, {"out": str(out)}))
    if not path.is_file():
        return None
    value: Any = json.loads(path.read_text())
    for key in source.keys:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    if value is None or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return round(float(value) * source.scale, 4)


def collect(table: int | str, rows: Sequence[Row], out: str | Path) -> dict[str, Any]:
    """The table as JSON-ready data: per row, ``paper``, ``ours`` and ``diff`` (metric -> value or None)."""
    out_rows = []
    for row in rows:
        metrics = list(dict.fromkeys([*row.paper, *row.sources]))
        ours = {m: read_ours(row.sources[m], out) if m in row.sources else None for m in metrics}
        paper = {m: row.paper.get(m) for m in metrics}
        diff = {m: None if ours[m] is None or paper[m] is None else round(ours[m] - paper[m], 4) for m in metrics}
        entry: dict[str, Any] = {"table": row.table, "row": row.row, "paper": paper, "ours": ours, "diff": diff}
        if row.note:
            entry["note"] = row.note
        if row.grid:
            entry["grid"] = {"backbone": row.grid[0], "margin": row.grid[1], "koleo_weight": row.grid[2]}
        out_rows.append(entry)
    caption = CAPTIONS.get(table, "CPU grid: cpu-tiny on a folder dataset (paper: Table 5's DeiT-S cells)")
    return {"table": table, "caption": caption, "rows": out_rows}


def _fmt(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "–"
    return f"{value:+.1f}" if signed else f"{value:.1f}"


def _metrics(data: dict[str, Any]) -> list[str]:
    return list(dict.fromkeys(m for r in data["rows"] for m in (*r["paper"], *r["ours"])))


def markdown(data: dict[str, Any]) -> str:
    """One line per row; each cell ``ours / paper (Δ)``."""
    metrics = _metrics(data)
    lines = [f"# Table {data['table']}: {data['caption']}", "", "Each cell: ours / paper (ours − paper).", "",
             "| row | " + " | ".join(metrics) + " |", "|---|" + "---:|" * len(metrics)]
    for r in data["rows"]:
        cells = [f"{_fmt(r['ours'].get(m))} / {_fmt(r['paper'].get(m))} ({_fmt(r['diff'].get(m), True)})"
                 if m in r["ours"] else "" for m in metrics]
        lines.append(f"| {r['row']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def heatmap_png(data: dict[str, Any]) -> bytes | None:
    """Heat maps of a sweep (λ rows × β columns; ours, paper, difference per backbone), or ``None`` if no grid."""
    grid_rows = [r for r in data["rows"] if "grid" in r]
    if not grid_rows:
        return None
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    backbones = list(dict.fromkeys(r["grid"]["backbone"] for r in grid_rows))
    fig = Figure(figsize=(12, 3.6 * len(backbones)), dpi=100, facecolor="white", layout="constrained")
    axes = fig.subplots(len(backbones), 3, squeeze=False)
    for bi, backbone in enumerate(backbones):
        cells = [r for r in grid_rows if r["grid"]["backbone"] == backbone]
        margins = sorted({r["grid"]["margin"] for r in cells})
        weights = sorted({r["grid"]["koleo_weight"] for r in cells})
        metric = next(iter(cells[0]["paper"] or cells[0]["ours"]), None)
        grids = {}
        for what in ("ours", "paper", "diff"):
            values = np.full((len(weights), len(margins)), np.nan)
            for r in cells:
                v = r[what].get(metric) if metric else None
                if v is not None:
                    values[weights.index(r["grid"]["koleo_weight"]), margins.index(r["grid"]["margin"])] = v
            grids[what] = values
        shared = np.concatenate([grids["ours"].ravel(), grids["paper"].ravel()])
        shared = shared[np.isfinite(shared)]
        low, high = (float(shared.min()), float(shared.max())) if shared.size else (0.0, 100.0)
        for ci, (what, signed) in enumerate((("ours", False), ("paper", False), ("diff", True))):
            values = grids[what]
            ax = axes[bi][ci]
            finite = values[np.isfinite(values)]
            if signed:
                span = float(np.abs(finite).max()) if finite.size else 1.0
                low_c, high_c = -(span or 1.0), span or 1.0
                image = ax.imshow(values, cmap="RdBu", vmin=low_c, vmax=high_c)
            else:  # ours and the paper's on one colour scale
                low_c, high_c = low, high if high > low else low + 1.0
                image = ax.imshow(values, cmap="viridis", vmin=low_c, vmax=high_c)
            for (i, j), v in np.ndenumerate(values):
                light = np.isfinite(v) and (abs(v) / max(abs(high_c), 1e-9) > 0.6 if signed
                                            else (v - low_c) / max(high_c - low_c, 1e-9) > 0.6)
                ax.text(j, i, "–" if not np.isfinite(v) else (f"{v:+.1f}" if signed else f"{v:.1f}"),
                        ha="center", va="center", fontsize=8,
                        color="grey" if not np.isfinite(v) else
                        (("white" if light else "black") if signed else ("black" if light else "white")))
            ax.set_xticks(range(len(margins)), [f"{m:g}" for m in margins])
            ax.set_yticks(range(len(weights)), [f"{w:g}" for w in weights])
            ax.set_xlabel("margin β")
            ax.set_ylabel("KoLeo weight λ")
            ax.set_title(f"{backbone}: {'ours − paper' if signed else what} ({metric})")
            fig.colorbar(image, ax=ax, shrink=0.8)
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


_CSS = """body{font-family:Helvetica,Arial,sans-serif;color:#222;margin:24px}table{border-collapse:collapse;
font-variant-numeric:tabular-nums}th,td{padding:4px 10px;border-bottom:1px solid #ddd;text-align:right}
th{background:#f2f4f7}td.row,th.row{text-align:left}span.paper{color:#666}span.pos{color:#0b5d1e}
span.neg{color:#a4161a}img{max-width:100%;border:1px solid #ddd}"""


def render_html(data: dict[str, Any]) -> str:
    """The table as one HTML page (no scripts, no external files): ours, paper and Δ per cell, the heat map."""
    from vitrieval.report.html import png_data_uri

    metrics = _metrics(data)
    title = html.escape(f"Table {data['table']}: {data['caption']}")
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">', f"<title>{title}</title>",
             f"<style>{_CSS}</style></head><body>", f"<h1>{title}</h1>",
             "<p>Each cell: <b>ours</b> / <span class='paper'>paper</span> (ours − paper).</p>", "<table>",
             "<thead><tr><th class='row'>row</th>" + "".join(f"<th>{html.escape(m)}</th>" for m in metrics)
             + "</tr></thead><tbody>"]
    for r in data["rows"]:
        cells = []
        for m in metrics:
            if m not in r["ours"]:
                cells.append("<td></td>")
                continue
            d = r["diff"].get(m)
            cls = "" if d is None else (" class='pos'" if d >= 0 else " class='neg'")
            cells.append(f"<td><b>{_fmt(r['ours'].get(m))}</b> / <span class='paper'>{_fmt(r['paper'].get(m))}"
                         f"</span> <span{cls}>({_fmt(d, True)})</span></td>")
        note = f" <small>({html.escape(r['note'])})</small>" if r.get("note") else ""
        parts.append(f"<tr><td class='row'>{html.escape(r['row'])}{note}</td>{''.join(cells)}</tr>")
    parts.append("</tbody></table>")
    png = heatmap_png(data)
    if png is not None:
        parts += ["<h2>Heat map (λ × β)</h2>", f"<img src='{png_data_uri(png)}' alt='heat map'>"]
    parts.append("</body></html>\n")
    return "\n".join(parts)


def write_tables(table: int | str, rows: Sequence[Row], out: str | Path) -> dict[str, Any]:
    """Write ``out/table.json``, ``out/table.md`` and ``out/table.html``; returns the data."""
    out = Path(out)
    data = collect(table, rows, out)
    atomic_write_json(out / "table.json", data)
    atomic_write_text(out / "table.md", markdown(data))
    atomic_write_text(out / "table.html", render_html(data))
    return data
