"""The paper's table layout of a :func:`vitrieval.evaluate.evaluate_model` result (what ``vitrieval evaluate``
prints): one line of the headline metrics as percentages with one decimal, then a details line."""

from __future__ import annotations

from typing import Any

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
        details.append(f"PCA {pca['dim']}{' whitened' if pca['whiten'] else ''} fitted on {pca['fitted_on']}")
    details.append(f"model {result['model']}")
    return line + "\n  " + ", ".join(details)
