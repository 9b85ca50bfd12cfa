"""Running a table's rows in order, resumably: a finished step is not run again, an interrupted training resumes.

A step is finished when the file it writes last exists (:class:`~vitrieval.reproduce.rows.Step.done`): the
trainer's ``eval.json`` (written at the run's tail, after the model), an evaluation's JSON, ``cost.json``. A
training whose run folder already holds ``checkpoints/last.pt`` but no ``eval.json`` was interrupted: it is run
with ``--resume`` and continues from that checkpoint.

Commands run in this process through :func:`vitrieval.cli.main` (its one error path prints the failing command's
error line and returns a non-zero code, which stops the table with :class:`StepFailed`); with ``nproc`` they run as
``torchrun --nproc_per_node N -m vitrieval ...`` sub-processes (training and evaluation; cost measurements stay
single-process).
"""

from __future__ import annotations

import re
import shlex
import subprocess
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from vitrieval.reproduce.rows import PENDING_PRESETS, Row, Step

Executor = Callable[[list[str]], int]
_PLACEHOLDER = re.compile(r"\{([a-z0-9_]+)\}")


class StepFailed(RuntimeError):
    """A step's command returned a non-zero code (or did not write its output); names the row and the command."""


@dataclass(frozen=True)
class Plan:
    """How to run: the output folder, one data root per dataset, torchrun processes, ``--set`` for every training."""

    out: Path | str  # "{out}" in a listing
    roots: Mapping[str, str] = field(default_factory=dict)
    nproc: int | None = None
    overrides: tuple[str, ...] = ()

    def values(self) -> dict[str, str]:
        return {"out": str(self.out), **{k: str(v) for k, v in self.roots.items()}}


def placeholders(rows: Iterable[Row]) -> list[str]:
    """The data-root placeholders (``sop``, ``roxford5k``, ...) the steps of ``rows`` use, in first-use order."""
    seen: dict[str, None] = {}
    for row in rows:
        for step in row.steps:
            for arg in step.argv:
                for name in _PLACEHOLDER.findall(arg):
                    if name != "out":
                        seen.setdefault(name)
    return list(seen)


def render(template: str, values: Mapping[str, str]) -> str:
    """``template`` with each ``{name}`` that ``values`` has replaced (others are left as they are)."""
    return _PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), template)


def step_argv(step: Step, plan: Plan, resume: bool = False) -> list[str]:
    """The full command line of ``step`` (starting with ``vitrieval`` or ``torchrun``)."""
    values = plan.values()
    argv = [render(a, values) for a in step.argv]
    if step.kind == "train":
        for override in plan.overrides:
            argv += ["--set", override]
        if resume:
            argv.append("--resume")
    if plan.nproc and step.kind in ("train", "evaluate"):
        return ["torchrun", "--nproc_per_node", str(plan.nproc), "-m", "vitrieval", *argv]
    return ["vitrieval", *argv]


def command_text(argv: Sequence[str]) -> str:
    return shlex.join(argv)


def missing_presets(row: Row) -> list[str]:
    """Presets ``row`` uses that this installation does not ship."""
    from vitrieval.presets import preset_dir

    return [p for p in row.presets if not (preset_dir() / f"{p}.yaml").is_file()]


def row_status(row: Row) -> str:
    """``ready``, ``reference`` (nothing to run) or ``preset missing: a, b (pending: where from)``."""
    if row.reference:
        return "reference"
    missing = missing_presets(row)
    if not missing:
        return "ready"
    why = sorted({PENDING_PRESETS.get(p, "not known") for p in missing})
    return f"preset missing: {', '.join(missing)} (pending: {'; '.join(why)})"


def in_process(argv: list[str]) -> int:
    """Run a ``vitrieval ...`` command line in this process; torchrun lines as a sub-process. Returns its code."""
    if argv[0] == "vitrieval":
        from vitrieval.cli import main

        return main(argv[1:])
    return subprocess.run(argv, check=False).returncode


def check_plan(rows: Sequence[Row], plan: Plan) -> None:
    """Refuse before running anything: a missing data root or a preset this installation does not have."""
    needed = [p for p in placeholders(rows) if p not in plan.roots]
    if needed:
        raise ValueError(f"missing data root(s) for {', '.join(needed)}: pass --data-root "
                         + " ".join(f"{n}=DIR" for n in needed))
    absent = sorted({p for row in rows for p in missing_presets(row)})
    if absent:
        raise ValueError(f"preset(s) not shipped with this installation: {', '.join(absent)} "
                         "(see `vitrieval reproduce --list`)")


def run_rows(rows: Sequence[Row], plan: Plan, executor: Executor = in_process,
             after_row: Callable[[Row], None] | None = None, echo: Callable[[str], None] = print) -> int:
    """Run every unfinished step of ``rows`` in order; returns the number of steps run.

    ``after_row`` is called once each row is complete (the tables are rewritten then). Raises
    :class:`StepFailed` at the first step that fails, after calling ``after_row`` for nothing further.
    """
    check_plan(rows, plan)
    values = plan.values()
    ran = 0
    for row in rows:
        for step in row.steps:
            done = Path(render(step.done, values))
            if done.is_file():
                continue
            resume = step.kind == "train" and (done.parent / "checkpoints" / "last.pt").is_file()
            argv = step_argv(step, plan, resume)
            echo(f"[table {row.table} | {row.row}] {command_text(argv)}")
            try:
                code = executor(argv)
            except Exception as exc:  # any failure of a command stops the table, naming the row
                raise StepFailed(f"table {row.table}, row {row.row!r}: {command_text(argv)} raised "
                                 f"{type(exc).__name__}: {exc}") from exc
            if code:
                raise StepFailed(f"table {row.table}, row {row.row!r}: {command_text(argv)} exited with {code}")
            if not done.is_file():
                raise StepFailed(f"table {row.table}, row {row.row!r}: {command_text(argv)} did not write {done}")
            ran += 1
        if after_row is not None:
            after_row(row)
    return ran


def dry_run_lines(rows: Sequence[Row], plan: Plan) -> list[str]:
    """The exact command lines of every step, in order, with a comment line per row (finished steps included:
    a dry run lists the whole table, e.g. for a cluster scheduler)."""
    lines = []
    needed = [p for p in placeholders(rows) if p not in plan.roots]
    if needed:
        lines.append("# fill in the data roots: " + ", ".join(f"{{{n}}}" for n in needed)
                     + " (or pass --data-root " + " ".join(f"{n}=DIR" for n in needed) + ")")
    for row in rows:
        status = row_status(row)
        lines.append(f"# table {row.table} | {row.row}" + ("" if status == "ready" else f"  [{status}]"))
        lines += [command_text(step_argv(step, plan)) for step in row.steps]
    return lines
