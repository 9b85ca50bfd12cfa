"""``vitrieval demo`` (moved to :mod:`vitrieval.demo.run`; split into modules next)."""

from __future__ import annotations

from vitrieval.demo.run import VARIANTS, _fresh_dir, folder_table, format_table, run_demo

__all__ = ["VARIANTS", "_fresh_dir", "folder_table", "format_table", "run_demo"]
