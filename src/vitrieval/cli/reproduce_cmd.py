"""``vitrieval reproduce``: a table of the paper as commands, run resumably, written beside the paper's numbers.

    vitrieval reproduce --list [--json]                    every row of Tables 1-9: command(s), paper numbers
    vitrieval reproduce 5 --data-root sop=/data/SOP --output runs/t5 --dry-run --nproc 8
    vitrieval reproduce 5 --data-root /data/SOP --output runs/t5 [--rows 'DeiT-S*']
    vitrieval reproduce 3 --data-root sop=… cub=… inshop=… sfm120k=… roxford5k=… rparis6k=… --output runs/t3
    vitrieval reproduce cpu --data-root ~/data/orl_faces --output runs/grid --set train.iterations=30

Rows run in order; a finished step (its JSON exists) is skipped and an interrupted training is resumed from its
checkpoint, so the same command continues a table. OUTPUT/table.md, table.json and table.html (ours, the paper's
and the difference per cell; a heat map for Table 5) are rewritten after every row, for the whole table (rows
not run yet, or left out by ``--rows``, show dashes). ``cpu`` is a CPU-sized grid
(cpu-tiny on a folder dataset, β ∈ {0.3, 0.5} × λ ∈ {0, 0.7}) to try the machinery.
"""

from __future__ import annotations

import argparse
import fnmatch

from vitrieval.cli import CLIError, add_set_flag


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``reproduce``."""
    p = subparsers.add_parser("reproduce", help="run a table of the paper, beside the paper's numbers",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("table", nargs="?", help="1-9, or cpu (a CPU-sized grid)")
    p.add_argument("--list", action="store_true", help="list the rows (of TABLE, or of Tables 1-9) and exit")
    p.add_argument("--json", action="store_true", help="with --list: as JSON")
    p.add_argument("--data-root", nargs="+", default=[], metavar="[NAME=]DIR",
                   help="data root per dataset (sop=DIR cub=DIR ...); a bare DIR when the table needs one dataset")
    p.add_argument("--output", "-o", help="output folder: runs/, table.md, table.json, table.html")
    p.add_argument("--rows", action="append", default=[], metavar="ROW",
                   help="only these rows: a name, a glob ('DeiT-S*') or a 1-based number (repeatable)")
    p.add_argument("--dry-run", action="store_true", help="print the exact commands and exit")
    p.add_argument("--skip-missing", action="store_true",
                   help="run the rows whose presets ship and leave the others as dashes (default: refuse)")
    p.add_argument("--nproc", type=int, help="processes per node: commands as `torchrun --nproc_per_node N -m "
                                             "vitrieval ...`")
    add_set_flag(p, "added to every training command, e.g. --set train.iterations=100 train.lr=1e-4 (repeatable)")
    return p


def _select(rows: list, wanted: list[str]) -> list:
    if not wanted:
        return rows
    chosen: dict[int, None] = {}
    for pattern in wanted:
        hits = [i for i, r in enumerate(rows) if pattern.isdigit() and int(pattern) == i + 1
                or r.row == pattern or fnmatch.fnmatchcase(r.row.lower(), pattern.lower())]
        if not hits:
            raise CLIError(f"--rows {pattern!r} matches no row of this table; rows: "
                           + ", ".join(f"{i + 1} {r.row!r}" for i, r in enumerate(rows)))
        chosen.update(dict.fromkeys(hits))
    return [rows[i] for i in sorted(chosen)]


def _roots(items: list[str], needed: list[str]) -> dict[str, str]:
    roots: dict[str, str] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if sep:
            roots[name] = path
        elif len(needed) == 1:
            roots[needed[0]] = item
        else:
            raise CLIError(f"--data-root {item}: this table needs {', '.join(needed) or 'no data root'}; "
                           "name it: NAME=DIR")
    return roots


def _listing(rows: list) -> list[dict]:
    from vitrieval.reproduce.runner import Plan, command_text, row_status, step_argv

    plan = Plan(out="{out}")  # the placeholder stays in the printed commands
    out = []
    for row in rows:
        commands = [command_text(step_argv(s, plan)) for s in row.steps]
        entry = {"table": row.table, "row": row.row, "command": " && ".join(commands), "commands": commands,
                 "paper": dict(row.paper), "status": row_status(row)}
        if row.note:
            entry["note"] = row.note
        out.append(entry)
    return out


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from vitrieval.reproduce import rows as spec
    from vitrieval.reproduce.runner import Plan, StepFailed, dry_run_lines, placeholders, run_rows
    from vitrieval.reproduce.tables import write_tables

    if args.list:
        rows = spec.table_rows(args.table) if args.table else spec.all_rows()
        listing = _listing(rows)
        if args.json:
            print(json.dumps(listing, indent=2, ensure_ascii=False))
        else:
            for e in listing:
                status = "" if e["status"] == "ready" else f"  [{e['status']}]"
                print(f"table {e['table']} | {e['row']}{status}")
                print("    paper: " + ", ".join(f"{k} {v:g}" for k, v in e["paper"].items()))
                for c in e["commands"]:
                    print(f"    {c}")
        return 0
    if not args.table:
        raise CLIError("name a table (1-9 or cpu), or pass --list")
    if args.nproc is not None and args.nproc < 1:
        raise CLIError(f"--nproc must be >= 1, got {args.nproc}")
    table = int(args.table) if args.table.isdigit() else args.table
    whole = spec.table_rows(table)
    rows = _select(whole, args.rows)
    roots = _roots(args.data_root, placeholders(rows))
    if not args.output and not args.dry_run:
        raise CLIError("--output DIR is needed to run a table")
    plan = Plan(out=Path(args.output) if args.output else "{out}", roots=roots,
                nproc=args.nproc, overrides=tuple(args.overrides))
    if args.dry_run:
        print("\n".join(dry_run_lines(rows, plan)))
        return 0
    for name, path in roots.items():
        if not Path(path).expanduser().exists():
            raise CLIError(f"--data-root {name}={path} does not exist")
    runnable = [r for r in rows if not r.reference]
    if args.skip_missing:
        from vitrieval.reproduce.runner import row_status

        skipped = [r for r in runnable if row_status(r) != "ready"]
        for r in skipped:
            print(f"skipped: table {r.table} | {r.row}: {row_status(r)}")
        runnable = [r for r in runnable if r not in skipped]
    out = Path(args.output)
    try:
        ran = run_rows(runnable, plan, after_row=lambda _row: write_tables(table, whole, out))
    except StepFailed as exc:
        write_tables(table, whole, out)
        raise CLIError(str(exc)) from None
    write_tables(table, whole, out)  # the whole table: rows not run (yet) show dashes
    print(f"{ran} step(s) run; table written to {out / 'table.md'}, {out / 'table.json'}, {out / 'table.html'}")
    print((out / "table.md").read_text())
    return 0
