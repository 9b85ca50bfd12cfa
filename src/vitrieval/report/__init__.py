"""Figures (PNG bytes, matplotlib Agg) and a self-contained single-file HTML report."""

from vitrieval.report.figures import (
    explained_energy,
    metric_curves,
    pair_similarities,
    pca_energy,
    retrieval_grid,
    similarity_histograms,
    training_curves,
)
from vitrieval.report.html import png_data_uri, recall_table_html, render_report, write_report

__all__ = [
    "explained_energy",
    "metric_curves",
    "pair_similarities",
    "pca_energy",
    "png_data_uri",
    "recall_table_html",
    "render_report",
    "retrieval_grid",
    "similarity_histograms",
    "training_curves",
    "write_report",
]
