"""``vitrieval presets``: list the shipped presets, or print one as YAML."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("presets", help="list the training presets (paper recipes and CPU runs)",
                       description="List the presets, or print one (`vitrieval presets NAME`) to copy and edit.")
    p.add_argument("name", nargs="?", help="print this preset as YAML")
    return p


def run(args: argparse.Namespace) -> int:
    import yaml

    from vitrieval.presets import list_presets, load_preset

    if args.name:
        print(yaml.safe_dump(load_preset(args.name).to_dict(), sort_keys=False), end="")
        return 0
    presets = list_presets()
    width = max(len(n) for n in presets)
    for name, desc in presets.items():
        print(f"{name:<{width}}  {desc}")
    return 0
