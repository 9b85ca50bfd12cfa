"""The flags several commands share, one parse of each: the model (``--checkpoint`` | ``--model NAME
[--pretrained-file F] [--pooling P] [--image-size S]``: ``evaluate``, ``index``, ``search``, ``serve``,
``export``, ``embed``; :func:`encoder_from_args`), ``--device`` (every command that runs a model), ``--scales``,
``--rerank`` / ``--rerank-n`` / ``--rerank-alpha`` (``evaluate``, ``search``), ``--dba N[,ALPHA]`` (``index``) and
``--full-decode`` (``evaluate``, ``index``, ``embed``).

Cheap to import (no torch): the parsers of :mod:`vitrieval.multiscale` are imported when a flag is parsed.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import TYPE_CHECKING

from vitrieval.cli import CLIError
from vitrieval.config import POOLINGS
from vitrieval.rerank import DEFAULT_ALPHA, DEFAULT_N, RerankOptions, parse_methods

if TYPE_CHECKING:
    from vitrieval.model import Encoder

__all__ = ["add_device_argument", "add_full_decode_argument", "add_model_arguments", "add_rerank_arguments",
           "add_scales_argument", "dba_arg", "encoder_from_args", "hub_reachable", "methods_arg", "rerank_from_args",
           "scales_arg"]


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


def add_model_arguments(parser: argparse.ArgumentParser, required: bool = False,
                        checkpoint_help: str = "trained model folder (a run folder or its model/)") -> None:
    """``--checkpoint DIR`` or ``--model NAME`` (one of them; ``required`` or not), ``--pretrained-file F``,
    ``--pooling P`` and ``--image-size S`` (read by :func:`encoder_from_args`)."""
    source = parser.add_mutually_exclusive_group(required=required)
    source.add_argument("--checkpoint", help=checkpoint_help)
    source.add_argument("--model", help="timm model name: its pretrained features as they are (IRT_O), any timm "
                                        "backbone")
    parser.add_argument("--pretrained-file", help="with --model: timm weights file (.pth / .safetensors), offline")
    parser.add_argument("--pooling", choices=POOLINGS,
                        help="with --model: the descriptor's pooling (default cls for a ViT; a convnet needs one of "
                             "mac, spoc, gem, rmac)")
    parser.add_argument("--image-size", type=int,
                        help="input size (224 or 384 in the paper; default: the model's)")


HUB_PROBE_SECONDS = 3.0
"""How long :func:`hub_reachable` waits for the Hugging Face hub before taking the machine to be offline."""


def hub_reachable(timeout: float = HUB_PROBE_SECONDS) -> bool:
    """Whether the Hugging Face hub (``$HF_ENDPOINT``, default huggingface.co) answers a TCP connection within
    ``timeout`` seconds (name resolution included: it runs in a thread that is not waited for beyond that); ``False``
    too when ``HF_HUB_OFFLINE`` is set."""
    import os
    import socket
    import sys
    import threading
    from urllib.parse import urlparse

    constants = sys.modules.get("huggingface_hub.constants")
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on") \
            or getattr(constants, "HF_HUB_OFFLINE", False):
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host, port = url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)
    answered: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            answered.append(True)
        except OSError:
            answered.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(answered and answered[0])


def _go_offline() -> None:
    """Tell the Hugging Face hub client not to try the network (its cache is still read): set before timm asks."""
    import os
    import sys

    os.environ["HF_HUB_OFFLINE"] = "1"
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:  # already imported: it read the variable then
        constants.HF_HUB_OFFLINE = True


def encoder_from_args(args: argparse.Namespace) -> Encoder:
    """The model the flags of :func:`add_model_arguments` name: a trained folder (``--checkpoint``), or a timm
    backbone with its pretrained weights (``--model``; IRT_O), from ``--pretrained-file`` or timm's download.

    Without ``--pretrained-file`` and with no answer from the hub within seconds (:func:`hub_reachable`) the hub
    client is told to stay offline, so a model not in its cache fails at once with one line naming
    ``--pretrained-file`` (instead of a minute of retries); with a network timm downloads as usual.
    """
    from vitrieval.config import ModelConfig
    from vitrieval.model import Encoder, PretrainedWeightsError, load

    if getattr(args, "pretrained_file", None) and not args.model:
        raise CLIError("--pretrained-file goes with --model (a checkpoint carries its own weights)")
    if args.checkpoint:
        if getattr(args, "pooling", None):
            raise CLIError("--pooling goes with --model; a trained model keeps the pooling it was trained with")
        try:
            return load(args.checkpoint)
        except PretrainedWeightsError as exc:
            raise CLIError(str(exc)) from None
    if args.image_size is not None and args.image_size < 1:
        raise CLIError(f"--image-size must be positive, got {args.image_size}")
    cfg = ModelConfig(name=args.model, pretrained=True, pretrained_file=args.pretrained_file,
                      image_size=args.image_size or 224, pooling=args.pooling or "cls")
    offline = not args.pretrained_file and not hub_reachable()
    if offline:
        _go_offline()
    try:
        return Encoder(cfg)
    except PretrainedWeightsError as exc:
        raise CLIError(str(exc)) from None
    except ValueError as exc:  # the pooling of the other backbone family
        raise CLIError(f"{exc} (pass --pooling)") from None
    except Exception as exc:  # noqa: BLE001 - timm / hub failures (offline, unknown name) become one clear line
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        if "Unknown model" in first:
            raise CLIError(f"--model {args.model}: unknown timm model ({first})") from None
        if offline:
            raise CLIError(f"--model {args.model}: no network to download its pretrained weights and none in the "
                           "Hugging Face cache; pass --pretrained-file PATH (timm weights, .pth or .safetensors)") \
                from None
        raise CLIError(f"--model {args.model}: could not get its pretrained weights ({type(exc).__name__}: "
                       f"{first}). Without network access pass --pretrained-file PATH (timm weights, "
                       ".pth or .safetensors)") from None


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
