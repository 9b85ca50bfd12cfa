"""Device selection and mixed precision: the one AMP policy of training, extraction and indexing.

A mode is ``auto``, ``bf16``, ``fp16`` or ``off`` (``None`` means ``auto``). :func:`amp_mode` is the policy: it
turns what a caller asked for into the mode it runs (and, for an index, records); :func:`amp_dtype` gives that
mode's autocast dtype on a device; :func:`autocast_context` applies both and is what training, ``embed.extract``
and ``Encoder.embed`` run under.

=========  ======================  ======================  ==============  ====================
mode       CUDA                    CPU, native bf16        other CPU       index (``for_index``)
=========  ======================  ======================  ==============  ====================
``auto``   bf16 (fp16 without)     bf16                    float32         CPU: ``off``
``bf16``   bf16                    bf16                    bf16 (slow)     as asked
``fp16``   fp16                    error                   error           as asked
``off``    float32                 float32                 float32         as asked
=========  ======================  ======================  ==============  ====================

``auto`` on a CPU: bf16 only with native bf16 kernels (AVX512-BF16 / AMX, as oneDNN reports); elsewhere it is
emulated and several times slower than float32 (measured: DeiT-Tiny training step 5x slower on an AVX2-only CPU,
7.0 s vs 2.7 s to embed 64 images with the tiny test model).

Index builds (``for_index=True``) record ``off`` for ``auto`` on a CPU, whatever the CPU: an index keeps its
descriptors and embeds its queries with the mode it recorded, so a CPU-built index gives the same float32
descriptors on every CPU that queries it (bf16 and float32 differ by ~1e-3 in cosine), and index folders and
shard caches written before keep matching. On a GPU the index records ``auto`` and this table decides.
"""

from __future__ import annotations

import contextlib
from contextlib import AbstractContextManager

from vitrieval.lazy import LazyModule

torch = LazyModule("torch")

AMP_MODES = ("auto", "bf16", "fp16", "off")
"""Every mode of the table above."""


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` -> ``cuda`` when available (``cuda:LOCAL_RANK`` under torchrun), else ``cpu``."""
    import os

    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available")
    return device


def amp_mode(device: torch.device | str, mode: str | None = "auto", *, for_index: bool = False) -> str:
    """The mode to run for ``mode`` on ``device`` (the policy of the module docstring); ``None`` is ``auto``.

    ``for_index``: the mode an index records for its descriptors and queries, ``off`` for ``auto`` on a CPU.
    Anything else is returned as asked (``auto`` is decided per device by :func:`amp_dtype`).
    """
    mode = mode or "auto"
    if for_index and mode == "auto" and torch.device(device).type == "cpu":
        return "off"
    return mode


def amp_dtype(device: torch.device, mode: str = "auto") -> torch.dtype | None:
    """The autocast dtype for ``mode`` (auto | bf16 | fp16 | off) on ``device``; None = full precision."""
    if mode == "off":
        return None
    if mode == "bf16":
        return torch.bfloat16
    if mode == "fp16":
        if device.type != "cuda":
            raise ValueError("fp16 autocast needs a CUDA device; use bf16 on CPU")
        return torch.float16
    if mode != "auto":
        raise ValueError(f"amp must be auto, bf16, fp16 or off; got {mode!r}")
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_has_native_bf16() else None


def cpu_has_native_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def emulated_bf16(device: torch.device | str, mode: str | None) -> bool:
    """Whether ``mode`` asks for bf16 on ``device`` (a name such as ``auto``, resolved here) when it is a CPU
    without native bf16 kernels: emulated there, and slower than float32 (2-3x for queries), so the caller warns.
    Any other mode is answered without importing torch."""
    if mode != "bf16":
        return False
    resolved = resolve_device(device) if isinstance(device, str) else torch.device(device)
    return resolved.type == "cpu" and not cpu_has_native_bf16()


def autocast_context(device: torch.device, mode: str | None = "auto") -> AbstractContextManager:
    """Autocast for ``mode`` on ``device`` (a no-op context for full precision)."""
    dtype = amp_dtype(torch.device(device), amp_mode(device, mode))
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)
