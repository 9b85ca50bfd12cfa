"""The ``vitrieval`` command: one sub-command per module in this package.

Each sub-command module defines ``add_parser(subparsers) -> argparse.ArgumentParser`` (cheap: no heavy imports)
and ``run(args) -> int`` (the exit code). Heavy imports (torch, timm, faiss) happen inside ``run``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from vitrieval import __version__

COMMANDS: tuple[str, ...] = ("train", "evaluate", "presets", "datasets", "index", "search", "serve", "export", "demo",
                             "report", "reproduce", "analyze")


class CLIError(Exception):
    """A user error: printed as one line (no traceback), exit code 2."""


USER_ERRORS: tuple[type[Exception], ...] = (CLIError, FileNotFoundError, ValueError, KeyError)
"""What a command reports as a one-line error (:func:`report_error`) instead of a traceback."""
LAZY_USER_ERRORS: tuple[tuple[str, str], ...] = (("vitrieval.model", "PretrainedWeightsError"),)
"""User errors of heavy modules, as ``(module, class)``: checked only once the module is imported (it raised)."""


def num_workers_arg(text: str) -> int | str:
    """argparse type of the decode-worker flags: ``auto`` (:mod:`vitrieval.data.loading`'s rule) or an integer >= 0."""
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected auto or an integer >= 0, got {text!r}")
    return value


def assignment_arg(text: str) -> str:
    """argparse type of ``--set``: one ``KEY=VALUE`` (a word without ``=`` is refused, so a positional argument
    written after ``--set a=1`` is not taken for an assignment)."""
    key, sep, _ = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r} (positional arguments go before --set)")
    return text


def add_set_flag(parser: argparse.ArgumentParser, help_text: str) -> None:
    """``--set KEY=VALUE [KEY=VALUE ...]`` into ``args.overrides``: several assignments after one flag, the flag
    repeatable, all of them in order in one flat list."""
    parser.add_argument("--set", dest="overrides", action="extend", nargs="+", type=assignment_arg, default=[],
                        metavar="KEY=VALUE", help=help_text)


def is_user_error(exc: BaseException) -> bool:
    """Whether ``exc`` is reported as one line (:data:`USER_ERRORS`, :data:`LAZY_USER_ERRORS`, and a write the
    machine refused: a full disk, a read-only file system, a folder not this user's,
    :func:`vitrieval.disk_errors.is_disk_error`)."""
    from vitrieval.disk_errors import is_disk_error

    if isinstance(exc, USER_ERRORS) or is_disk_error(exc):
        return True
    for module_name, class_name in LAZY_USER_ERRORS:
        module = sys.modules.get(module_name)
        if module is not None and isinstance(exc, getattr(module, class_name)):
            return True
    return False


def check_output_file(path: str, option: str, example: str) -> None:
    """Refuse, before any work, an output file ``path`` (given as ``option``) that cannot be written as a file."""
    from pathlib import Path

    target = Path(path).expanduser()
    if target.is_dir():
        raise CLIError(f"{option} {path} is a folder; give a file name (e.g. {target / example})")
    for parent in target.parents:
        if parent.exists():
            if not parent.is_dir():
                raise CLIError(f"{option} {path}: {parent} is a file, not a folder")
            break


def report_error(command: str, exc: BaseException) -> int:
    """Print ``vitrieval COMMAND: error: MESSAGE`` (one line, on stderr) and return the exit code, 2.

    The one error path of the CLI: :func:`main` uses it, and so does rank 0 under torchrun for an error raised on
    every rank (``vitrieval index``), so both print the same line.
    """
    from vitrieval.disk_errors import describe, is_disk_error

    msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
    if is_disk_error(exc):
        assert isinstance(exc, OSError)
        msg = describe(exc)  # the path: the error's own, or the one a command named (disk_errors.naming)
    print(f"vitrieval {command}: error: {msg}", file=sys.stderr, flush=True)
    return 2


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(verbose: bool) -> None:
    """The one logging set-up of the command line: logs for people.

    vitrieval's own loggers at INFO (DEBUG with ``-v``); every other library's (onnx, onnxscript, onnx_ir, timm,
    faiss, torch, httpx...) at WARNING unless ``-v``: the root logger's level, which their loggers inherit.
    """
    logging.basicConfig(format=LOG_FORMAT, datefmt="%H:%M:%S")
    logging.getLogger().setLevel(logging.DEBUG if verbose else logging.WARNING)
    logging.getLogger("vitrieval").setLevel(logging.DEBUG if verbose else logging.INFO)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vitrieval",
        description="Train, evaluate, index, search and serve image-retrieval descriptors from Vision Transformers.",
    )
    parser.add_argument("--version", action="version", version=f"vitrieval {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"vitrieval.cli.{name}_cmd")
        p = module.add_parser(sub)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    try:  # a file name that is not UTF-8 prints as its own bytes, whatever the locale's error handler
        sys.stdout.reconfigure(errors="surrogateescape")  # type: ignore[union-attr]
    except (AttributeError, ValueError):  # not a TextIOWrapper (a test's capture), or a closed stream
        pass
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt as exc:  # a command may say how to continue: KeyboardInterrupt("the hint")
        hint = f"; {exc.args[0]}" if exc.args else ""
        print(f"vitrieval {args.command}: interrupted{hint}", file=sys.stderr)
        return 130
    except Exception as exc:
        if args.verbose or not is_user_error(exc):
            raise
        return report_error(args.command, exc)


if __name__ == "__main__":
    sys.exit(main())
