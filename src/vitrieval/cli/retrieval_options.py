"""The landmark-retrieval flags several commands share: ``--scales``, ``--rerank`` / ``--rerank-n`` /
``--rerank-alpha`` (``evaluate``, ``search``), ``--dba N[,ALPHA]`` (``index``) and ``--full-decode``
(``evaluate``, ``index``); one parse of each.

Cheap to import (no torch): the parsers of :mod:`vitrieval.multiscale` are imported when a flag is parsed.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from vitrieval.cli import CLIError
from vitrieval.rerank import DEFAULT_ALPHA, DEFAULT_N, RerankOptions, parse_methods

__all__ = ["add_device_argument", "add_full_decode_argument", "add_rerank_arguments", "add_scales_argument",
           "dba_arg", "methods_arg", "rerank_from_args", "scales_arg"]


def scales_arg(text: str) -> tuple[float, ...]:
    """argparse type of ``--scales``: ``1,0.707,0.5`` -> distinct positive scales (:func:`~vitrieval.multiscale.
    parse_scales`)."""
    from vitrieval.multiscale import parse_scales

    try:
        return parse_scales(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def methods_arg(text: str) -> tuple[str, ...]:
    """argparse type of ``--rerank``: ``aqe[,dba]`` -> the methods (:func:`vitrieval.rerank.parse_methods`)."""
    try:
        return parse_methods(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def dba_arg(text: str) -> tuple[int, float]:
    """argparse type of ``--dba``: ``N`` or ``N,ALPHA`` -> ``(n, alpha)`` (alpha defaults to :data:`DEFAULT_ALPHA`)."""
    parts = [p.strip() for p in text.split(",")]
    try:
        n = int(parts[0])
        alpha = float(parts[1]) if len(parts) > 1 else DEFAULT_ALPHA
        RerankOptions(("dba",), n, alpha)
    except (ValueError, IndexError) as exc:
        raise argparse.ArgumentTypeError(f"expected N or N,ALPHA (N >= 1 neighbours, ALPHA >= 0), got {text!r}"
                                         f"{'' if isinstance(exc, IndexError) else f' ({exc})'}") from None
    if len(parts) > 2:
        raise argparse.ArgumentTypeError(f"expected N or N,ALPHA, got {text!r}")
    return n, alpha


def add_scales_argument(parser: argparse.ArgumentParser, extra_help: str = "") -> None:
    """``--scales S1,S2,..``: multi-scale descriptors."""
    parser.add_argument("--scales", type=scales_arg, metavar="S1,S2,..",
                        help="multi-scale descriptors: the L2-normalised mean over these input scales, e.g. "
                             f"1,0.707,0.5 (cirtorch's; default: one scale){extra_help}")


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    """``--device`` (every command that runs a model): checked once for all of them by :func:`vitrieval.cli.main`
    through :func:`vitrieval.amp.check_device` (one line, exit 2, naming the choices)."""
    parser.add_argument("--device", default="auto",
                        help="where the model runs: auto (cuda when available, else cpu), cpu, cuda, cuda:N "
                             "(mps where torch has it)")


def add_full_decode_argument(parser: argparse.ArgumentParser, extra_help: str = "") -> None:
    """``--full-decode``: no fast decoding (``args.full_decode``; the extraction's ``fast_decode`` is its
    negation)."""
    parser.add_argument("--full-decode", action="store_true",
                        help="decode every JPEG at full resolution (default: large JPEGs at a reduced DCT scale that "
                             f"still covers the model's first resize, data.fast_decode){extra_help}")


def add_rerank_arguments(parser: argparse.ArgumentParser, methods: str = "aqe[,dba]", what: str = "") -> None:
    """``--rerank METHODS``, ``--rerank-n N``, ``--rerank-alpha A`` (the defaults said in the help)."""
    parser.add_argument("--rerank", type=methods_arg, metavar=methods, help=what)
    parser.add_argument("--rerank-n", type=int, metavar="N",
                        help=f"neighbours aggregated by aQE / DBA (default {DEFAULT_N})")
    parser.add_argument("--rerank-alpha", type=float, metavar="A",
                        help=f"similarity exponent of aQE / DBA (default {DEFAULT_ALPHA:g}, Radenovic et al. 2018; "
                             "0 = plain average)")


def rerank_from_args(args: argparse.Namespace, allowed: Sequence[str] = ("aqe", "dba"),
                     hint: str = "") -> RerankOptions:
    """The :class:`~vitrieval.rerank.RerankOptions` of ``--rerank`` / ``--rerank-n`` / ``--rerank-alpha``
    (``methods`` empty without ``--rerank``); the values are checked, a method outside ``allowed`` refused (the
    message ends with ``hint``)."""
    if (args.rerank_n is not None or args.rerank_alpha is not None) and not args.rerank:
        raise CLIError(f"--rerank-n / --rerank-alpha go with --rerank {','.join(allowed)}")
    n = DEFAULT_N if args.rerank_n is None else args.rerank_n
    alpha = DEFAULT_ALPHA if args.rerank_alpha is None else args.rerank_alpha
    if n < 1 or not alpha >= 0:
        raise CLIError(f"--rerank-n must be >= 1 and --rerank-alpha >= 0, got {n} and {alpha}")
    refused = [m for m in (args.rerank or ()) if m not in allowed]
    if refused:
        raise CLIError(f"--rerank {','.join(refused)} is not available here (choose among {', '.join(allowed)})"
                       f"{hint}")
    return RerankOptions(args.rerank or (), n, alpha)
