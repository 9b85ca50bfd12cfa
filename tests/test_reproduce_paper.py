"""The paper's numbers as data (vitrieval.reproduce.paper) and every row of Tables 1-9 (vitrieval.reproduce.rows)."""

from __future__ import annotations

import pytest

from vitrieval.reproduce import paper, rows
from vitrieval.reproduce.runner import missing_presets, row_status


def test_cell_counts_per_table() -> None:
    # Table 1: 6 backbones x 3; Table 2: 12 + 12 + 3; Table 3: 3 x 7; Table 4: 6; Table 5: 2 backbones x 5 margins
    # x 5 lambdas; Table 6: 6 lambdas x 4; Table 7: (6 + 3) models x 2 sizes x 4; Table 8: 7 rows x (4 + GFLOPs);
    # Table 9: 4 poolings x 7.
    assert {t: paper.cell_count(t) for t in range(1, 10)} == {1: 18, 2: 27, 3: 21, 4: 6, 5: 50, 6: 24, 7: 72,
                                                              8: 35, 9: 28}
    assert {t: len(rows.table_rows(t)) for t in range(1, 10)} == {1: 6, 2: 3, 3: 3, 4: 6, 5: 50, 6: 6, 7: 18, 8: 7,
                                                                  9: 4}


@pytest.mark.parametrize(("table", "row", "metric", "value"), [
    (1, "R101", "GFLOPs", 15.7), (1, "DeiT-B†", "top-1", 83.9),
    (2, "IRT_R DeiT-S 384", "SOP R@1000", 99.1), (2, "IRT_R DeiT-S .128", "CUB R@2", 81.9),
    (2, "IRT_R DeiT-S† 384", "In-Shop R@1", 91.9),
    (3, "IRT_O", "In-Shop R@1", 31.3), (3, "IRT_R", "RPar H", 40.2), (3, "IRT_L", "ROxf M", 32.7),
    (4, "SNCA DeiT-S-384", "SOP R@1", 81.1),
    (5, "R50 β=0.9 λ=1", "SOP R@1", 9.1), (5, "DeiT-S β=0.9 λ=0.3", "SOP R@1", 84.4),
    (5, "DeiT-S β=0.1 λ=0.5", "SOP R@1", 71.4), (5, "R50 β=0.5 λ=0", "SOP R@1", 79.8),
    (6, "λ=3", "RPar H", 40.1), (6, "λ=5", "ROxf M", 32.3),
    (7, "R101-R-MAC 224 .128", "ROxf H", 7.4), (7, "DeiT-B†-CLS 224 768", "RPar H", 43.6),
    (7, "R101-GeM 384 2048", "RPar M", 69.4),
    (8, "IRT_R 768", "ROxf H", 28.3), (8, "Revaud et al. GeM 2048", "RPar H", 60.5),
    (9, "GeM", "CUB R@1", 69.1), (9, "avg", "RPar H", 36.0), (9, "CLS", "In-Shop R@1", 90.4),
])
def test_cells_as_the_paper_prints_them(table: int, row: str, metric: str, value: float) -> None:
    assert paper.PAPER[table][row][metric] == value


def test_table5_sweep_is_flags_on_one_base_preset_per_backbone() -> None:
    t5 = rows.table_rows(5)
    assert {r.presets[0] for r in t5} == {"sop-irt-l-r50", "sop-irt-l-deit-s"}
    cell = next(r for r in t5 if r.row == "DeiT-S β=0.3 λ=0.7")
    train = cell.steps[0].argv
    assert train[:3] == ("train", "--preset", "sop-irt-l-deit-s")
    assert ("--set", "loss.margin=0.3") == train[3:5] and ("--set", "loss.koleo_weight=0.7") == train[5:7]
    assert cell.paper == {"SOP R@1": 83.1} and cell.grid == ("DeiT-S", 0.3, 0.7)
    assert len({r.jobs[0].key for r in t5}) == 50  # one run folder per cell


def test_every_row_has_a_source_for_its_retrieval_cells() -> None:
    for row in rows.all_rows():
        if row.reference:
            assert row.table == 8 and not row.steps
            continue
        missing = set(row.paper) - set(row.sources)
        assert missing <= {"top-1"}, (row.table, row.row, missing)  # ImageNet top-1 is the paper's only
        assert row.steps


def test_pca_rows_do_not_store_their_pca_and_landmarks_fit_on_sfm120k() -> None:
    t7 = {r.row: r for r in rows.table_rows(7)}
    argv = [s.argv for s in t7["R50-GeM 224 .128"].steps if s.kind == "evaluate"][0]
    assert "--no-save-pca" not in argv and argv[argv.index("--pca-fit-dataset") + 1] == "sfm120k"
    full = [s.argv for s in t7["R50-GeM 224 2048"].steps if s.kind == "evaluate"][0]
    assert "--pca" not in full and full[full.index("--image-size") + 1] == "224"
    # the 128-d and full-size rows evaluate the same run
    assert t7["R50-GeM 224 .128"].jobs[0].key == t7["R50-GeM 224 2048"].jobs[0].key


def test_every_referenced_preset_exists_or_is_pending() -> None:
    from vitrieval.presets import preset_dir

    used = {p for row in rows.all_rows() for p in row.presets} | {"cpu-tiny"}
    absent = {p for p in used if not (preset_dir() / f"{p}.yaml").is_file()}
    assert absent <= set(rows.PENDING_PRESETS), sorted(absent - set(rows.PENDING_PRESETS))
    assert not set(rows.PENDING_PRESETS) - absent, "a preset listed as pending ships: drop it from PENDING_PRESETS"
    for row in rows.all_rows():
        status = row_status(row)
        assert status.startswith("preset missing") == bool(missing_presets(row))


def _claimed_tables(description: str) -> set[int] | None:
    """The tables a preset description claims to be a paper row of: ``None`` for a description that makes no
    claim; the numbers of its "(Table 7)" / "(Tables 4-5)" / "(Tables 3, 6, 9)" (empty: a claim naming none)."""
    import re

    if not re.match(r"(Paper (recipe|row|backbone)|Pooling ablation)\b", description):
        return None
    found = re.match(r"[^(]*\(Tables? ([^)]*)\)", description)
    tables: set[int] = set()
    for lo, hi in re.findall(r"(\d+)(?:-(\d+))?(?! ?\d)(?! px)", found.group(1) if found else ""):  # not "224 px"
        tables.update(range(int(lo), int(hi or lo) + 1))
    return tables


def test_the_claim_parser() -> None:
    assert _claimed_tables("Paper row (Tables 4-5): IRT_L") == {4, 5}
    assert _claimed_tables("Paper recipe (Tables 3, 6, 9): x") == {3, 6, 9}
    assert _claimed_tables("Paper backbone (Table 1, 224 px): x") == {1}
    assert _claimed_tables("Paper recipe: IRT_R on SOP") == set()
    assert _claimed_tables("Extension (not a paper row: Table 2 ...), with the recipe of the paper") is None


def test_every_preset_claiming_a_paper_row_is_a_row_of_the_tables_it_names() -> None:
    """A description starting "Paper recipe / row / backbone" (or "Pooling ablation") is used by a row of
    reproduce's Tables 1-9, and of every table it names; the DeiT-B category-level presets are extensions."""
    from vitrieval.presets import load_preset, preset_dir

    used: dict[str, set[int]] = {}
    for row in rows.all_rows():
        for p in row.presets:
            used.setdefault(p, set()).add(row.table)
    claims = {f.stem: _claimed_tables(load_preset(f.stem).description) for f in sorted(preset_dir().glob("*.yaml"))}
    wrong = {name: (sorted(tables), sorted(used.get(name, ()))) for name, tables in claims.items()
             if tables is not None and (name not in used or not tables <= used[name])}
    assert not wrong, f"preset: (claimed tables, tables whose rows use it): {wrong}"
    for dataset in ("sop", "cub", "inshop"):
        for method in ("l", "r"):
            assert claims[f"{dataset}-irt-{method}-deit-b"] is None
            assert load_preset(f"{dataset}-irt-{method}-deit-b").description.startswith("Extension (not a paper row")
    assert sum(c is not None for c in claims.values()) >= 38  # every paper row still says so


def test_table7_distilled_presets_at_224_use_the_cls_token_of_the_distilled_deits() -> None:
    from vitrieval.presets import load_preset

    for preset, model in (("sfm120k-irt-l-deit-s-distilled", "deit_small_distilled_patch16_224"),
                          ("sfm120k-irt-l-deit-b-distilled", "deit_base_distilled_patch16_224")):
        cfg = load_preset(preset)
        assert (cfg.model.name, cfg.model.image_size, cfg.model.pooling, cfg.train.sampler) == (model, 224, "cls",
                                                                                               "tuples")
        assert (cfg.train.lr, cfg.loss.margin, cfg.loss.koleo_weight) == (5e-7, 0.85, 0.0)
    t7 = {r.row: r for r in rows.table_rows(7)}
    assert missing_presets(t7["DeiT-S†-CLS 224 .128"]) == [] and missing_presets(t7["DeiT-B†-CLS 224 768"]) == []
