"""The paper's table layout of a :func:`~vitrieval.evaluation.protocol.evaluate_model` result (what
``vitrieval evaluate`` prints): one line of the headline metrics as percentages with one decimal, then a details
line; with re-ranking, then the field's table (landmarks: mAP Medium / Hard for plain, +αQE, +αQE+DBA;
category-level: R@K and MAP@R)."""

from __future__ import annotations

from typing import Any

#: Row names of the re-ranking table.
VARIANT_NAMES: dict[str, str] = {"aqe": "+αQE", "aqe+dba": "+αQE+DBA", "dba": "+DBA"}
#: Names as the paper's tables print them.
DISPLAY_NAMES: dict[str, str] = {"sop": "SOP", "cub": "CUB", "inshop": "In-Shop", "roxford5k": "ROxf",
                                 "rparis6k": "RPar"}


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


def format_results(result: dict[str, Any]) -> str:
    """The paper's layout, e.g. ``SOP  R@1 84.0  R@10 93.6  R@100 97.2  R@1000 99.1`` or
    ``ROxf  mAP M 34.0 H 11.5  (E 55.0)  mP@1/5/10 M 90.0/80.0/70.0 H 50.0/40.0/30.0``, then a details line."""
    name = DISPLAY_NAMES.get(result["dataset"], result["dataset"])
    if "map" in result:
        mp = result["mp_at_k"]
        ks = list(mp["medium"])
        mp_text = " ".join(f"{p[0].upper()} " + "/".join(_pct(mp[p][k]) for k in ks) for p in ("medium", "hard"))
        line = (f"{name}  mAP M {_pct(result['map']['medium'])} H {_pct(result['map']['hard'])}  "
                f"(E {_pct(result['map']['easy'])})  mP@{'/'.join(ks)} {mp_text}")
        details = [f"{result['num_queries']} queries vs {result['num_gallery']} database images"]
    else:
        line = f"{name}  " + "  ".join(f"R@{k} {_pct(v)}" for k, v in result["recall_at_k"].items())
        if result["protocol"] == "leave-one-out":
            details = [f"MAP@R {_pct(result.get('map_at_r'))}",
                       f"leave-one-out over {result['num_queries']} test images"]
        else:
            details = [f"MAP@R {_pct(result.get('map_at_r'))}",
                       f"{result['num_queries']} queries vs {result['num_gallery']} gallery images"]
    details += [f"{result['descriptor_dim']}-d", f"{result['image_size']} px"]
    pca = result.get("pca")
    if pca:
        if pca.get("method") == "learned":
            details.append(f"learned whitening {pca['dim']}-d fitted on {pca['fitted_on']} pairs")
        else:
            details.append(f"PCA {pca['dim']}{' whitened' if pca['whiten'] else ''} fitted on {pca['fitted_on']}")
    if result.get("scales"):
        details.append("scales " + ",".join(f"{s:g}" for s in result["scales"]))
    details.append(f"model {result['model']}")
    text = line + "\n  " + ", ".join(details)
    if result.get("rerank"):
        text += "\n" + format_rerank_table(result)
    if result.get("distractors"):
        dx = result["distractors"]
        text += (f"\n{name}+{_count(dx['count'])}  mAP M {_pct(dx['map']['medium'])} H {_pct(dx['map']['hard'])}  "
                 f"(E {_pct(dx['map']['easy'])})  with {dx['count']:,} distractors")
    return text


def _count(n: int) -> str:
    """``1000000`` -> ``R1M`` (revisitop's name for its distractor set), ``5000`` -> ``5k``."""
    if n >= 1_000_000 and n % 1_000_000 == 0:
        return f"R{n // 1_000_000}M"
    return f"{n / 1000:g}k" if n >= 1000 else str(n)


def format_rerank_table(result: dict[str, Any]) -> str:
    """The re-ranking table, e.g. for ROxf::

        ROxf              mAP M    H
          plain                34.0  11.5
          +αQE                 36.2  13.0
          +αQE+DBA             38.1  14.9
          (αQE / DBA: n = 2, α = 3)

    category-level: the R@K columns and MAP@R instead."""
    name = DISPLAY_NAMES.get(result["dataset"], result["dataset"])
    rr = result["rerank"]
    rows = [("plain", result)] + [(VARIANT_NAMES.get(k, k), v) for k, v in rr["results"].items()]
    if "map" in result:
        header = f"{name:<18}{'mAP M':>7}{'H':>6}"
        lines = [f"  {label:<16}{_pct(r['map']['medium']):>7}{_pct(r['map']['hard']):>6}" for label, r in rows]
    else:
        ks = list(result["recall_at_k"])
        header = f"{name:<18}" + "".join(f"{'R@' + k:>8}" for k in ks) + f"{'MAP@R':>8}"
        lines = [f"  {label:<16}" + "".join(f"{_pct(r['recall_at_k'][k]):>8}" for k in ks)
                 + f"{_pct(r.get('map_at_r')):>8}" for label, r in rows]
    return "\n".join([header, *lines, f"  (re-ranking: n = {rr['n']}, α = {rr['alpha']:g})"])
