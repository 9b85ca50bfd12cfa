"""A self-contained single-file HTML report: a Recall@K table and figures embedded as base64 PNG data URIs.

No scripts, no external stylesheets or fonts: the file renders the same offline, in a mail attachment or in a
CI artefact viewer.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from vitrieval.io_utils import atomic_write_text

_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color: #222; background: #fafafa;
       margin: 0; line-height: 1.45; }
main { max-width: 1150px; margin: 0 auto; padding: 24px 32px 48px; background: #fff; }
h1 { font-size: 1.6em; margin: 0.2em 0 0.6em; border-bottom: 2px solid #e4e4e4; padding-bottom: 0.3em; }
h2 { font-size: 1.2em; margin: 1.6em 0 0.5em; color: #333; }
table.recall { border-collapse: collapse; margin: 0.5em 0 1em; font-variant-numeric: tabular-nums; }
table.recall th, table.recall td { padding: 6px 14px; border-bottom: 1px solid #e0e0e0; text-align: right; }
table.recall th { background: #f2f4f7; font-weight: 600; }
table.recall td.variant, table.recall th.variant { text-align: left; }
table.recall td.best { font-weight: 700; color: #0b5d1e; }
table.recall tr:hover td { background: #f7f9fc; }
figure { margin: 0.6em 0 1.4em; }
figure img { max-width: 100%; height: auto; border: 1px solid #e4e4e4; }
figcaption { font-size: 0.92em; color: #555; margin-top: 0.4em; max-width: 60em; }
ul.notes { color: #444; font-size: 0.95em; }
footer { margin-top: 2em; font-size: 0.8em; color: #888; }
"""


def _k_sort_key(k: str) -> tuple[int, float, str]:
    try:
        return (0, float(k), k)
    except ValueError:
        return (1, 0.0, k)


def _as_percent(values: Mapping[str, Mapping[str, float]]) -> bool:
    """True when the recalls look like fractions (all finite values <= 1), so they are shown times 100."""
    vals = [float(v) for row in values.values() for v in row.values() if v is not None and math.isfinite(float(v))]
    return all(v <= 1.0 for v in vals)


def recall_table_html(recall_table: Mapping[str, Mapping[str, float]]) -> str:
    """The ``<table>`` of Recall@K in percent (one decimal), variants as rows, the best per column in bold.

    Values may be fractions in ``[0, 1]`` (the usual case) or already percentages (if any value exceeds 1);
    missing entries are shown as a dash. Ties for the best are all bold.
    """
    ks = sorted({k for row in recall_table.values() for k in row}, key=_k_sort_key)
    scale = 100.0 if _as_percent(recall_table) else 1.0

    def value(row: Mapping[str, float], k: str) -> float | None:
        v = row.get(k)
        if v is None or not math.isfinite(float(v)):
            return None
        return round(float(v) * scale, 1)

    best = {}
    for k in ks:
        vals = [v for row in recall_table.values() if (v := value(row, k)) is not None]
        best[k] = max(vals) if vals else None
    head = "".join(f"<th>R@{html.escape(str(k))}</th>" for k in ks)
    lines = ['<table class="recall">', f'<thead><tr><th class="variant">variant</th>{head}</tr></thead>', "<tbody>"]
    for name, row in recall_table.items():
        cells = []
        for k in ks:
            v = value(row, k)
            if v is None:
                cells.append("<td>&ndash;</td>")
            elif v == best[k]:
                cells.append(f'<td class="best"><b>{v:.1f}</b></td>')
            else:
                cells.append(f"<td>{v:.1f}</td>")
        lines.append(f'<tr><td class="variant">{html.escape(str(name))}</td>{"".join(cells)}</tr>')
    lines += ["</tbody>", "</table>"]
    return "\n".join(lines)


def table_html(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain ``<table>`` (same style as the Recall table): the first column left-aligned, the others right; floats
    shown with one decimal, ``None`` as a dash, everything HTML-escaped."""

    def cell(v: object) -> str:
        if v is None:
            return "&ndash;"
        return f"{v:.1f}" if isinstance(v, float) else html.escape(str(v))

    head = "".join(('<th class="variant">' if i == 0 else "<th>") + f"{html.escape(str(h))}</th>"
                   for i, h in enumerate(header))
    lines = ['<table class="recall">', f"<thead><tr>{head}</tr></thead>", "<tbody>"]
    for row in rows:
        cells = "".join(f'<td class="variant">{cell(v)}</td>' if i == 0 else f"<td>{cell(v)}</td>"
                        for i, v in enumerate(row))
        lines.append(f"<tr>{cells}</tr>")
    lines += ["</tbody>", "</table>"]
    return "\n".join(lines)


def png_data_uri(png: bytes) -> str:
    """``data:image/png;base64,...`` for PNG bytes."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def render_report(title: str, recall_table: Mapping[str, Mapping[str, float]],
                  sections: Sequence[tuple[str, str, bytes]], notes: Sequence[str] | None = None,
                  tables: Sequence[tuple[str, str]] = ()) -> str:
    """The report as an HTML string (see :func:`write_report`)."""
    from vitrieval import __version__

    t = html.escape(title)
    parts = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">', f"<title>{t}</title>",
             f"<style>{_CSS}</style>", "</head>", "<body>", "<main>", f"<h1>{t}</h1>"]
    if recall_table:
        parts += ["<h2>Recall@K (%)</h2>", recall_table_html(recall_table)]
    if notes:
        parts.append('<ul class="notes">')
        parts += [f"<li>{html.escape(n)}</li>" for n in notes]
        parts.append("</ul>")
    for heading, table in tables:
        parts += [f"<h2>{html.escape(heading)}</h2>", table]
    for heading, caption, png in sections:
        if not png.startswith(b"\x89PNG\r\n\x1a\n"):
            raise ValueError(f"section {heading!r}: figure is not PNG data")
        parts += [f"<h2>{html.escape(heading)}</h2>", "<figure>",
                  f'<img src="{png_data_uri(png)}" alt="{html.escape(heading, quote=True)}">',
                  f"<figcaption>{html.escape(caption)}</figcaption>" if caption else "", "</figure>"]
    parts += [f"<footer>Generated by vitrieval {html.escape(__version__)}.</footer>", "</main>", "</body>",
              "</html>", ""]
    return "\n".join(p for p in parts if p)


def write_report(path: str | Path, title: str, recall_table: Mapping[str, Mapping[str, float]],
                 sections: Sequence[tuple[str, str, bytes]], notes: Sequence[str] | None = None,
                 tables: Sequence[tuple[str, str]] = ()) -> Path:
    """Write a self-contained HTML report to ``path`` (atomically) and return the path.

    ``recall_table`` maps variant -> {K (as a string, e.g. ``"1"``): recall}; see :func:`recall_table_html`.
    ``sections`` are ``(heading, caption, png_bytes)``, each shown as a heading, the embedded image and its
    caption; ``notes`` are plain-text bullet points under the table; ``tables`` are ``(heading, table_html)``
    (e.g. from :func:`table_html`) shown after the notes. All text is HTML-escaped.
    """
    path = Path(path)
    atomic_write_text(path, render_report(title, recall_table, sections, notes, tables))
    return path
