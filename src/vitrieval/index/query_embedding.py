"""How an :class:`~vitrieval.index.Index` embeds its queries: the model it was built with, run by a runtime.

Mixed into :class:`~vitrieval.index.Index`. The runtime (:mod:`vitrieval.runtime`) is ``torch`` (the
:class:`~vitrieval.model.Encoder`, multi-scale when the index is) or ``onnx`` (onnxruntime on
``<model>/model.onnx`` from ``vitrieval export``; no torch is imported). Either way the model is checked against
the index's fingerprint and dimension when it is first used, and a query goes through the same two steps, which
the service's batcher (:mod:`vitrieval.serve.batching`) calls separately: :meth:`QueryEmbedding.prepare` (decoded
image -> the model's input array, per request) and :meth:`QueryEmbedding.embed_prepared` (a list of them -> one
forward pass).

Decoding follows the index's ``preprocessing.fast_decode`` (:mod:`vitrieval.index.build`): a query path or file's
bytes is decoded by :func:`~vitrieval.data.images.load_image` with the eval transform's ``min_side``
(:attr:`QueryEmbedding.decode_min_side`), so a JPEG of the collection gives the pixels, hence the descriptor, it
got in the build; an index without the key (built before it was recorded) decodes queries at full size, as then.
A query already decoded (a PIL image, e.g. the service's uploads) is used as it is.

Query precision (:meth:`QueryEmbedding.use_query_amp`, ``vitrieval serve --query-amp``): queries are embedded under
the autocast mode the index's descriptors were made with, unless told otherwise. ``bf16`` on a CPU with native bf16
(AVX512-BF16 / AMX) about doubles the model's speed (DeiT-S 224 px, batch 8, 2 cores of an AMD EPYC: 32.7 vs
16.6-18.8 images/s) for descriptors within about 5e-5 in cosine of the float32 ones; on other CPUs bf16 is
emulated and slower (:mod:`vitrieval.amp`). What is stored (``add``, the service's ``POST /images``) keeps the
index's own mode (:meth:`QueryEmbedding.embed_prepared` with ``stored=True``), so the index's vectors stay alike.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from vitrieval.amp import AMP_MODES, amp_mode, emulated_bf16, resolve_device
from vitrieval.data.images import load_image
from vitrieval.data.preprocessing import Preprocessing
from vitrieval.index.store import ModelMismatchError
from vitrieval.runtime.embedder import Embedder, check_runtime, embed_images, torch_missing

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from vitrieval.index.manifest import Manifest
    from vitrieval.model import Encoder

ImageLike = str | Path | bytes | Image.Image


def as_rgb(image: ImageLike, min_side: int | None = None) -> Image.Image:
    """A query as an RGB PIL image (paths and bytes decoded, with ``min_side`` as :func:`load_image`'s; an
    unreadable one raises ``ImageDecodeError``)."""
    return image.convert("RGB") if isinstance(image, Image.Image) else load_image(image, min_side=min_side)


class QueryEmbedding:
    """The query side of an index: its model (:attr:`encoder`), what runs it (:attr:`embedder`) and the embedding
    steps. Reads the ``manifest`` (``checkpoint``, ``fingerprint``, ``descriptor_dim``, ``data_config``,
    ``preprocessing``) and ``device``."""

    manifest: Manifest
    device: str
    _lock: threading.RLock

    def _init_query_embedding(self, runtime: str, threads: int) -> None:
        self.runtime = check_runtime(runtime)
        self.threads = threads
        self._encoder: Encoder | None = None
        self._make_encoder: tuple[Callable[[], Encoder], str] | None = None  # use_encoder_from's, until first use
        self._embedder: Embedder | None = None
        self.query_amp: str | None = None  # None: the mode the index's descriptors were made with
        self._stored_embedder: Embedder | None = None  # that mode, when query_amp differs (writes)
        self._multi_scale: Any = None  # the encoder's MultiScaleEncoder at the index's scales, made once

    @property
    def model_dir(self) -> Path:
        """The model folder ``info["checkpoint"]`` names (a relative one lies inside the index folder: ``vitrieval
        index --model`` writes it there)."""
        path = Path(self.manifest.checkpoint)
        directory = getattr(self, "directory", None)
        return directory / path if not path.is_absolute() and directory is not None else path

    @property
    def fingerprint(self) -> str:
        """Fingerprint of the model that embedded the collection."""
        return self.manifest.fingerprint

    @property
    def descriptor_dim(self) -> int:
        return self.manifest.descriptor_dim

    @property
    def scales(self) -> tuple[float, ...]:
        """The input scales of the index's descriptors (``(1.0,)``: single-scale); queries are embedded at them."""
        return tuple(float(s) for s in self.manifest.preprocessing.get("scales", (1.0,)))

    @property
    def fast_decode(self) -> bool:
        """Whether the index's images were fast-decoded (``preprocessing.fast_decode``; missing: an older build,
        full decodes)."""
        return self.preprocessing.fast_decode

    @property
    def preprocessing(self) -> Preprocessing:
        """The pre-processing the index recorded (``data_config`` + ``preprocessing``): queries, adds and uploads
        follow it."""
        return Preprocessing.from_record(self.manifest.data_config, self.manifest.preprocessing)

    @property
    def decode_min_side(self) -> int | None:
        """The ``min_side`` queries are decoded with: the eval transform's with :attr:`fast_decode`, else
        ``None`` (full size)."""
        return self.preprocessing.min_side

    # -- the model --------------------------------------------------------------------------------------------
    @property
    def encoder(self) -> Encoder:
        """The model that embeds queries, loaded on first use; refuses a checkpoint whose weights changed."""
        if self._encoder is None:
            with self._lock:
                if self._encoder is None:
                    self._encoder = self._load_encoder()
        return self._encoder

    def _load_encoder(self) -> Encoder:
        from vitrieval.model import load

        if self._make_encoder is not None:
            make, name = self._make_encoder
            encoder = make()
            self._refuse_another_model(encoder, name)
            return encoder
        checkpoint = self.model_dir
        if not checkpoint.exists():
            raise FileNotFoundError(f"the index's model {checkpoint} is gone; pass checkpoint= to Index.load "
                                    f"(--checkpoint) with the folder of the model that built it")
        encoder = load(checkpoint, device=resolve_device(self.device))
        found = encoder.fingerprint()
        if found != self.fingerprint:
            raise ModelMismatchError(
                f"the model at {checkpoint} changed since the index was built (fingerprint {found}, index built "
                f"with {self.fingerprint}): its descriptors are not comparable; rebuild the index or point to the "
                f"original model")
        if encoder.descriptor_dim != self.descriptor_dim:
            raise ModelMismatchError(f"the model at {checkpoint} gives {encoder.descriptor_dim}-d descriptors, "
                                     f"the index holds {self.descriptor_dim}-d ones")
        return encoder

    def use_encoder(self, encoder: Encoder) -> None:
        """Embed with ``encoder`` instead of loading the index's model folder; refused unless it is the index's
        model (fingerprint and dimension)."""
        self._refuse_another_model(encoder, None)
        with self._lock:
            self._encoder, self._make_encoder, self._embedder, self._stored_embedder = encoder, None, None, None

    def use_encoder_from(self, make: Callable[[], Encoder], name: str) -> None:
        """Embed with the model ``make()`` returns (``name``, e.g. ``--model NAME --pretrained-file F`` made
        again) instead of the index's model folder. Like that folder it is made on first use (:attr:`encoder`; a
        service takes its folder's write lock before), and refused then, naming ``name``, unless it is the
        index's model."""
        with self._lock:
            self._encoder, self._make_encoder, self._embedder, self._stored_embedder = None, (make, name), None, None

    def _refuse_another_model(self, encoder: Encoder, name: str | None) -> None:
        if encoder.fingerprint() != self.fingerprint or encoder.descriptor_dim != self.descriptor_dim:
            raise ModelMismatchError(f"{f'{name}: ' if name else ''}this model (fingerprint {encoder.fingerprint()}, "
                                     f"{encoder.descriptor_dim}-d) is not the one the index was built with "
                                     f"({self.fingerprint}, {self.descriptor_dim}-d): its descriptors are not "
                                     "comparable")

    def _amp(self, encoder: Encoder) -> str:
        """The mixed precision the index's descriptors were made with (see :func:`vitrieval.amp.amp_mode`)."""
        mode = self.manifest.preprocessing.get("amp")
        return amp_mode(next(encoder.parameters()).device, mode, for_index=True)

    def _embedding_model(self, encoder: Encoder) -> Any:
        """``encoder``, or (multi-scale index) a :class:`~vitrieval.multiscale.MultiScaleEncoder` of it, kept so
        that queries and adds share its resized copies."""
        if self.scales == (1.0,):
            return encoder
        if self._multi_scale is None or self._multi_scale.encoder is not encoder:
            from vitrieval.multiscale import MultiScaleEncoder

            self._multi_scale = MultiScaleEncoder(encoder, self.scales)
        return self._multi_scale

    # -- the runtime ------------------------------------------------------------------------------------------
    @property
    def embedder(self) -> Embedder:
        """What embeds queries (:attr:`runtime`), made on first use; refuses a model other than the index's."""
        if self._embedder is None:
            with self._lock:
                if self._embedder is None:
                    self._embedder = self._load_embedder()
        return self._embedder

    def use_runtime(self, runtime: str, threads: int | None = None) -> None:
        """Embed queries with ``runtime`` from now on (the embedder is made again on next use when it changes)."""
        if check_runtime(runtime) == "onnx" and self.query_amp not in (None, "off"):
            raise ValueError(f"the onnx runtime runs the exported graph in float32: drop query amp "
                             f"{self.query_amp!r} first (use_query_amp(None))")
        with self._lock:
            if check_runtime(runtime) != self.runtime or (threads is not None and threads != self.threads):
                self.runtime, self._embedder = runtime, None
                self.threads = self.threads if threads is None else threads

    def use_query_amp(self, mode: str | None) -> None:
        """Embed search queries under the autocast ``mode`` (``auto``, ``bf16``, ``fp16``, ``off``: the table of
        :mod:`vitrieval.amp`) rather than the index's own (``None``: back to it). Only the torch runtime has one
        (the exported graph runs in float32); stored images keep the index's mode (module docstring)."""
        if mode is not None and mode not in AMP_MODES:
            raise ValueError(f"query amp must be one of {', '.join(AMP_MODES)}, got {mode!r}")
        if mode not in (None, "off") and self.runtime == "onnx":
            raise ValueError(f"query amp {mode!r} needs the torch runtime: the onnx runtime runs the exported graph "
                             "in float32")
        if emulated_bf16(self.device, mode):
            log.warning("queries under bf16 autocast: this CPU has no native bf16 kernels (AVX512-BF16 / AMX), so "
                        "bf16 is emulated and queries run 2-3x slower than in float32; use query amp auto or off "
                        "(serve --query-amp auto)")
        with self._lock:
            if mode != self.query_amp:
                self.query_amp, self._embedder, self._stored_embedder = mode, None, None

    @property
    def index_amp(self) -> str:
        """The autocast mode recorded for the index's descriptors (``preprocessing.amp``)."""
        return str(self.manifest.preprocessing.get("amp", "off"))

    @property
    def query_amp_differs(self) -> bool:
        """Whether queries are embedded under another mode than the index's descriptors (:meth:`use_query_amp`)."""
        return self.query_amp is not None and self.query_amp != self.index_amp

    def _load_embedder(self, stored: bool = False) -> Embedder:
        if self.runtime == "onnx":
            from vitrieval.runtime.onnx_embedder import OnnxEmbedder
            from vitrieval.runtime.onnx_file import OnnxModelError, check_same_model, default_onnx_path

            if self.scales != (1.0,):
                raise OnnxModelError(f"this index holds multi-scale descriptors (scales {self.scales}); the exported "
                                     "graph runs one scale: query it with runtime torch")
            if self._make_encoder is not None:  # a model named to stand in for the folder's: refused if another
                _ = self.encoder
            embedder = OnnxEmbedder(default_onnx_path(self.model_dir), resize=self.preprocessing.resize,
                                    threads=self.threads)
            check_same_model(embedder.info, embedder.path, self.fingerprint, self.descriptor_dim)
            return embedder
        from vitrieval.runtime.torch_embedder import TorchEmbedder

        try:
            encoder = self.encoder
        except ImportError as exc:
            raise (torch_missing(exc) or exc) from None
        amp = self._amp(encoder) if stored or self.query_amp is None else self.query_amp
        return TorchEmbedder(self._embedding_model(encoder), self.preprocessing, amp)

    # -- embedding ---------------------------------------------------------------------------------------------
    def prepare(self, image: ImageLike) -> Any:
        """One query image (path, file bytes or PIL image) as the model's input ``(3, H, W)`` (a torch tensor or a
        numpy array, by runtime): the index's eval preprocessing. An unreadable image raises
        :class:`vitrieval.data.images.ImageDecodeError` naming it."""
        return self.embedder.prepare(as_rgb(image, self.decode_min_side))

    def embed_prepared(self, batch: Sequence[Any], stored: bool = False) -> np.ndarray:
        """Descriptors of images made by :meth:`prepare`: one forward pass (the model is used by one thread).
        ``stored``: for images the index will hold, under the index's own mode even when queries use another."""
        embedder = self.embedder
        with self._lock:
            if stored and self.query_amp_differs:
                if self._stored_embedder is None:
                    self._stored_embedder = self._load_embedder(stored=True)
                embedder = self._stored_embedder
            return embedder.embed_prepared(batch)

    def embed(self, images: Sequence[ImageLike], batch_size: int = 32) -> np.ndarray:
        """Descriptors of query images (paths, file bytes or PIL images) with the index's model and preprocessing.

        An unreadable image raises :class:`vitrieval.data.images.ImageDecodeError` naming it.
        """
        min_side = self.decode_min_side
        pil = [as_rgb(im, min_side) for im in images]
        embedder = self.embedder
        with self._lock:
            return embed_images(embedder, pil, batch_size)
