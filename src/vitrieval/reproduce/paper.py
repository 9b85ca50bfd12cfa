"""The paper's numbers as data: every cell of Tables 1-9 of El-Nouby et al. (2021) that reports IRT or a convnet
baseline, transcribed from the paper (``PAPER.md`` §5-6 lists them).

``PAPER[table][row][metric]`` is the published value. Retrieval metrics are percentages (Recall@K, revisited mAP):

- category level: ``"SOP R@K"``, ``"CUB R@K"``, ``"In-Shop R@K"`` (K as the paper reports it);
- landmarks (revisited protocol): ``"ROxf M"``, ``"ROxf H"``, ``"RPar M"``, ``"RPar H"`` (mAP, Medium / Hard);
- Table 1: ``"params (M)"``, ``"GFLOPs"``, ``"top-1"`` (ImageNet-1k accuracy, %); Table 8 also ``"GFLOPs"``.

Row names are the paper's (``†`` = distilled DeiT; ``.128`` = PCA to 128 dimensions). Table 8's last three rows
are results of other work (cirtorch's R101-GeM at 1024 px, Revaud et al.'s GeM): they are numbers to compare with,
not runs of this toolkit (:data:`REFERENCE_ROWS`).
"""

from __future__ import annotations

Cells = dict[str, float]

_LANDMARK = ("ROxf M", "ROxf H", "RPar M", "RPar H")
_SOP = ("SOP R@1", "SOP R@10", "SOP R@100", "SOP R@1000")
_CUB = ("CUB R@1", "CUB R@2", "CUB R@4", "CUB R@8")
_INSHOP = ("In-Shop R@1", "In-Shop R@10", "In-Shop R@20", "In-Shop R@30")
_TABLE3 = ("SOP R@1", "CUB R@1", "In-Shop R@1", *_LANDMARK)

#: Table 5's grid: the margins (columns) and the KoLeo weights (rows) of the paper.
TABLE5_MARGINS: tuple[float, ...] = (0.1, 0.3, 0.5, 0.7, 0.9)
TABLE5_LAMBDAS: tuple[float, ...] = (0.0, 0.3, 0.5, 0.7, 1.0)
#: Table 6's KoLeo weights (landmarks, DeiT-S).
TABLE6_LAMBDAS: tuple[float, ...] = (0.0, 1.0, 2.0, 3.0, 4.0, 5.0)
#: Table 9's poolings, in the paper's column order.
TABLE9_POOLINGS: tuple[str, ...] = ("avg", "max", "GeM", "CLS")


def _cells(metrics: tuple[str, ...], values: tuple[float, ...]) -> Cells:
    if len(metrics) != len(values):
        raise ValueError(f"{len(metrics)} metrics but {len(values)} values")
    return dict(zip(metrics, values))


def lambda_label(value: float) -> str:
    """``0`` -> ``"0"``, ``0.3`` -> ``"0.3"``, ``4.0`` -> ``"4"``: the paper's way of writing a weight."""
    return f"{value:g}"


def table5_row(backbone: str, margin: float, weight: float) -> str:
    """Row name of a Table 5 cell, e.g. ``"DeiT-S β=0.5 λ=0.7"``."""
    return f"{backbone} β={lambda_label(margin)} λ={lambda_label(weight)}"


# Table 5 as printed: rows λ, columns β (SOP R@1).
_TABLE5 = {
    "R50": ((78.9, 79.3, 79.8, 79.3, 79.1), (79.2, 81.3, 80.7, 80.5, 80.0), (79.1, 81.7, 81.0, 81.2, 31.4),
            (78.8, 81.7, 81.2, 81.1, 13.4), (78.8, 81.7, 81.3, 78.5, 9.1)),
    "DeiT-S": ((70.3, 82.5, 83.0, 82.9, 82.6), (70.7, 83.0, 83.5, 83.8, 84.4), (71.4, 83.0, 83.6, 84.1, 80.6),
               (70.1, 83.1, 84.0, 84.2, 71.2), (71.1, 83.1, 84.0, 83.8, 41.5)),
}

# Table 7: (row, ROxf M, ROxf H, RPar M, RPar H).
_TABLE7 = (
    ("R50-GeM 224 .128", 25.8, 8.6, 56.7, 31.2), ("R50-R-MAC 224 .128", 23.6, 5.5, 56.0, 30.8),
    ("R101-GeM 224 .128", 27.8, 8.0, 59.0, 32.2), ("R101-R-MAC 224 .128", 27.3, 7.4, 57.9, 31.3),
    ("DeiT-S†-CLS 224 .128", 32.1, 13.3, 63.8, 39.3), ("DeiT-B†-CLS 224 .128", 36.6, 14.8, 64.4, 39.1),
    ("R50-GeM 224 2048", 28.7, 10.9, 61.2, 35.9), ("R50-R-MAC 224 2048", 25.6, 7.3, 60.6, 35.4),
    ("R101-GeM 224 2048", 31.7, 11.1, 63.4, 37.3), ("R101-R-MAC 224 2048", 31.0, 9.3, 62.6, 36.5),
    ("DeiT-S†-CLS 224 384", 34.5, 15.8, 65.8, 42.0), ("DeiT-B†-CLS 224 768", 39.5, 17.4, 67.5, 43.6),
    ("R101-GeM 384 .128", 34.1, 9.5, 62.6, 36.3), ("R101-R-MAC 384 .128", 31.4, 7.4, 61.6, 35.3),
    ("DeiT-B†-CLS 384 .128", 49.0, 21.5, 68.5, 43.8),
    ("R101-GeM 384 2048", 38.1, 12.5, 69.4, 45.8), ("R101-R-MAC 384 2048", 37.1, 10.6, 66.0, 41.4),
    ("DeiT-B†-CLS 384 768", 50.5, 22.7, 70.6, 47.4),
)

# Table 9: metric -> (avg, max, GeM, CLS).
_TABLE9 = {
    "SOP R@1": (83.0, 82.2, 82.6, 83.0), "CUB R@1": (72.8, 69.2, 69.1, 74.4), "In-Shop R@1": (90.2, 90.3, 89.8, 90.4),
    "ROxf M": (28.3, 25.2, 26.5, 32.7), "ROxf H": (8.5, 6.8, 8.5, 11.4),
    "RPar M": (61.9, 60.4, 60.2, 63.6), "RPar H": (36.0, 34.1, 33.7, 37.8),
}

PAPER: dict[int, dict[str, Cells]] = {
    1: {
        "R50": {"params (M)": 23.0, "GFLOPs": 8.3, "top-1": 76.2},
        "DeiT-S": {"params (M)": 22.0, "GFLOPs": 8.4, "top-1": 79.8},
        "DeiT-S†": {"params (M)": 22.0, "GFLOPs": 8.5, "top-1": 81.1},
        "R101": {"params (M)": 46.0, "GFLOPs": 15.7, "top-1": 77.4},
        "DeiT-B": {"params (M)": 87.0, "GFLOPs": 33.7, "top-1": 81.8},
        "DeiT-B†": {"params (M)": 87.0, "GFLOPs": 33.8, "top-1": 83.9},
    },
    2: {
        "IRT_R DeiT-S 384": {**_cells(_SOP, (84.0, 93.6, 97.2, 99.1)), **_cells(_CUB, (74.7, 82.9, 89.3, 93.3)),
                             **_cells(_INSHOP, (91.5, 98.1, 98.7, 99.0))},
        "IRT_R DeiT-S .128": {**_cells(_SOP, (83.4, 93.0, 97.0, 99.0)), **_cells(_CUB, (72.6, 81.9, 88.7, 92.8)),
                              **_cells(_INSHOP, (91.1, 98.1, 98.6, 99.0))},
        "IRT_R DeiT-S† 384": {"SOP R@1": 84.2, "CUB R@1": 76.6, "In-Shop R@1": 91.9},
    },
    3: {
        "IRT_O": _cells(_TABLE3, (52.8, 58.5, 31.3, 20.3, 5.6, 50.2, 26.3)),
        "IRT_L": _cells(_TABLE3, (83.0, 74.2, 90.3, 32.7, 11.4, 63.6, 37.8)),
        "IRT_R": _cells(_TABLE3, (84.0, 74.7, 91.5, 34.0, 11.5, 66.1, 40.2)),
    },
    4: {
        "NSoftmax R50-2048": {"SOP R@1": 79.5}, "NSoftmax DeiT-S-384": {"SOP R@1": 80.8},
        "SNCA R50-2048": {"SOP R@1": 78.0}, "SNCA DeiT-S-384": {"SOP R@1": 81.1},
        "Contrastive R50-2048": {"SOP R@1": 79.8}, "Contrastive DeiT-S-384": {"SOP R@1": 83.0},
    },
    5: {table5_row(backbone, margin, weight): {"SOP R@1": grid[li][mi]}
        for backbone, grid in _TABLE5.items()
        for li, weight in enumerate(TABLE5_LAMBDAS) for mi, margin in enumerate(TABLE5_MARGINS)},
    6: {f"λ={lambda_label(w)}": _cells(_LANDMARK, v) for w, v in zip(TABLE6_LAMBDAS, (
        (32.7, 11.4, 63.6, 37.8), (31.5, 9.3, 64.7, 38.6), (34.5, 11.1, 65.7, 39.8), (34.6, 11.5, 66.1, 40.1),
        (34.0, 11.5, 66.1, 40.2), (32.3, 10.4, 65.6, 39.8)))},
    7: {name: _cells(_LANDMARK, values) for name, *values in _TABLE7},
    8: {
        "IRT_L .128": {**_cells(_LANDMARK, (49.0, 21.5, 68.5, 43.8)), "GFLOPs": 98.8},
        "IRT_R .128": {**_cells(_LANDMARK, (49.1, 21.1, 68.3, 44.1)), "GFLOPs": 98.8},
        "IRT_L 768": {**_cells(_LANDMARK, (50.5, 22.7, 70.6, 47.4)), "GFLOPs": 98.8},
        "IRT_R 768": {**_cells(_LANDMARK, (55.1, 28.3, 72.7, 49.6)), "GFLOPs": 98.8},
        "R101-GeM 1024 .128": {**_cells(_LANDMARK, (53.2, 28.9, 65.4, 36.9)), "GFLOPs": 432.0},
        "R101-GeM 1024 2048": {**_cells(_LANDMARK, (64.7, 38.5, 77.2, 56.3)), "GFLOPs": 432.0},
        "Revaud et al. GeM 2048": {**_cells(_LANDMARK, (67.2, 42.8, 80.1, 60.5)), "GFLOPs": 246.0},
    },
    9: {pool: {metric: values[i] for metric, values in _TABLE9.items()} for i, pool in enumerate(TABLE9_POOLINGS)},
}

#: Rows that report other work's published models (compared with, not trained here), per table.
REFERENCE_ROWS: dict[int, tuple[str, ...]] = {
    8: ("R101-GeM 1024 .128", "R101-GeM 1024 2048", "Revaud et al. GeM 2048"),
}

#: What each table is about (its caption in a few words).
CAPTIONS: dict[int, str] = {
    1: "Backbones at 224 px: parameters, FLOPs, ImageNet top-1",
    2: "IRT_R with DeiT-S (and DeiT-S†) on SOP, CUB-200-2011 and In-Shop, full size and PCA 128",
    3: "Off-the-shelf (IRT_O), contrastive (IRT_L) and with KoLeo (IRT_R), DeiT-S, 384-d, five benchmarks",
    4: "Objectives on SOP (R@1): NSoftmax, SNCA and contrastive, R50 vs DeiT-S",
    5: "SOP R@1 over the margin β and the KoLeo weight λ, R50 and DeiT-S",
    6: "Landmarks by the KoLeo weight λ (DeiT-S, SfM-120k, ROxf / RPar mAP M / H)",
    7: "Landmarks, IRT_L: convnets (GeM, R-MAC) vs DeiT† (CLS), 224 and 384 px, PCA 128 and full size",
    8: "Landmarks at 384 px with DeiT-B†, IRT_L vs IRT_R, beside convnets at 1024 px",
    9: "Pooling of the transformer's tokens (IRT_L, DeiT-S, 384-d): avg, max, GeM, CLS",
}


def cell_count(table: int) -> int:
    """Number of numbers the paper prints for ``table`` (rows x their metrics)."""
    return sum(len(cells) for cells in PAPER[table].values())
