"""Progress bars only on a terminal: the one rule every tqdm bar of vitrieval follows.

Redirected to a file or a pipe, a tqdm bar is a stream of ``\\r``-separated fragments; there the training logs' one
summary line per ``train.log_every`` steps says the same. :func:`tqdm` is ``tqdm.auto.tqdm`` with the bar disabled
unless :func:`bars_on` (the caller's own ``disable=`` still applies), so callers swap only their import.
"""

from __future__ import annotations

import sys
from typing import IO, Any


def bars_on(stream: IO[str] | None = None) -> bool:
    """Whether progress bars are drawn: ``stream`` (default: ``sys.stderr``, where tqdm writes) is a terminal."""
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


def tqdm(*args: Any, disable: bool | None = False, **kwargs: Any) -> Any:
    """``tqdm.auto.tqdm(*args, **kwargs)``, disabled when asked (``disable``) or when its output stream
    (``file=``, default stderr) is not a terminal (:func:`bars_on`)."""
    from tqdm.auto import tqdm as _tqdm

    return _tqdm(*args, disable=bool(disable) or not bars_on(kwargs.get("file")), **kwargs)
