"""vitrieval.evaluation.format: the paper's table layout of an evaluation result."""

from __future__ import annotations

from vitrieval.evaluation.format import format_results


def test_format_results_uses_the_paper_layout() -> None:
    sop = {"dataset": "sop", "model": "runs/sop", "descriptor_dim": 128, "image_size": 224, "num_queries": 60502,
           "num_gallery": 60502, "protocol": "leave-one-out",
           "recall_at_k": {"1": 0.84, "10": 0.936, "100": 0.972, "1000": 0.991}, "map_at_r": 0.4567,
           "pca": {"dim": 128, "whiten": False, "fitted_on": "sop/train"}}
    lines = format_results(sop).splitlines()
    assert lines[0] == "SOP  R@1 84.0  R@10 93.6  R@100 97.2  R@1000 99.1"
    assert "MAP@R 45.7" in lines[1] and "PCA 128 fitted on sop/train" in lines[1] and "128-d" in lines[1]
    rox = {"dataset": "roxford5k", "model": "m", "descriptor_dim": 384, "image_size": 224, "num_queries": 70,
           "num_gallery": 4993, "protocol": "revisited", "map": {"easy": 0.55, "medium": 0.34, "hard": 0.115},
           "mp_at_k": {"easy": {"1": 1.0, "5": 0.9, "10": 0.8}, "medium": {"1": 0.9, "5": 0.8, "10": 0.7},
                       "hard": {"1": 0.5, "5": 0.4, "10": 0.3}}, "pca": None}
    assert format_results(rox).splitlines()[0] == \
        "ROxf  mAP M 34.0 H 11.5  (E 55.0)  mP@1/5/10 M 90.0/80.0/70.0 H 50.0/40.0/30.0"
    assert format_results({**sop, "map_at_r": None, "pca": None}).splitlines()[1].startswith("  MAP@R n/a")


def test_the_rerank_table_has_a_row_per_variant() -> None:
    def lm(m: float, h: float) -> dict:
        return {"map": {"easy": 0.5, "medium": m, "hard": h},
                "mp_at_k": {p: {"1": 1.0, "5": 0.9, "10": 0.8} for p in ("easy", "medium", "hard")}}

    rox = {"dataset": "roxford5k", "model": "m", "descriptor_dim": 384, "image_size": 224, "num_queries": 70,
           "num_gallery": 4993, "protocol": "revisited", **lm(0.34, 0.115), "pca": None, "scales": [1.0, 0.707],
           "rerank": {"methods": ["aqe", "dba"], "n": 2, "alpha": 3.0,
                      "results": {"aqe": lm(0.362, 0.13), "aqe+dba": lm(0.381, 0.149)}}}
    lines = format_results(rox).splitlines()
    assert "scales 1,0.707" in lines[1]
    assert lines[2].split() == ["ROxf", "mAP", "M", "H"]
    assert [ln.split() for ln in lines[3:6]] == [["plain", "34.0", "11.5"], ["+αQE", "36.2", "13.0"],
                                                 ["+αQE+DBA", "38.1", "14.9"]]
    assert lines[6].strip() == "(re-ranking: n = 2, α = 3)"
    sop = {"dataset": "sop", "model": "m", "descriptor_dim": 128, "image_size": 224, "num_queries": 10,
           "num_gallery": 10, "protocol": "leave-one-out", "recall_at_k": {"1": 0.5, "10": 0.9}, "map_at_r": 0.2,
           "pca": None, "rerank": {"methods": ["dba"], "n": 1, "alpha": 0.0,
                                   "results": {"dba": {"recall_at_k": {"1": 0.6, "10": 0.95}, "map_at_r": None}}}}
    lines = format_results(sop).splitlines()
    assert lines[2].split() == ["SOP", "R@1", "R@10", "MAP@R"]
    assert lines[3].split() == ["plain", "50.0", "90.0", "20.0"] and lines[4].split() == ["+DBA", "60.0", "95.0",
                                                                                            "n/a"]


def test_the_distractor_line_names_r1m() -> None:
    maps = {"easy": 0.5, "medium": 0.3, "hard": 0.1}
    mp = {p: {"1": 1.0, "5": 0.9, "10": 0.8} for p in maps}
    rox = {"dataset": "rparis6k", "model": "m", "descriptor_dim": 8, "image_size": 224, "num_queries": 70,
           "num_gallery": 6322, "protocol": "revisited", "map": maps, "mp_at_k": mp, "pca": None,
           "distractors": {"count": 1_000_000, "map": {"easy": 0.4, "medium": 0.2, "hard": 0.05}, "mp_at_k": mp}}
    assert format_results(rox).splitlines()[-1] == "RPar+R1M  mAP M 20.0 H 5.0  (E 40.0)  with 1,000,000 distractors"
