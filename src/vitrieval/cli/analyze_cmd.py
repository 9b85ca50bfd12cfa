"""``vitrieval analyze`` (placeholder while it is written)."""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    return subparsers.add_parser("analyze", help="descriptor analysis (Figs 2, 3, 5) and backbone cost (Table 1)")


def run(args: argparse.Namespace) -> int:
    return 2
