"""Query embedding with onnxruntime on the exported graph, with Pillow + numpy pre-processing: no torch.

The graph (``vitrieval export``) is the whole encoder: backbone, pooling, projection, PCA, L2. The pixels it gets
are :class:`~vitrieval.data.preprocessing.Preprocessing`'s, identical to the torch eval transform's.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from vitrieval.data.preprocessing import Preprocessing
from vitrieval.runtime.onnx_file import INPUT_NAME, OnnxModelError, OnnxModelInfo


def inference_session(path: Path, threads: int = 0) -> Any:
    """An onnxruntime CPU session on ``path`` (``threads`` intra-op threads; 0: onnxruntime's choice)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(os.fspath(path), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own unrelated classes; message kept
        detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise OnnxModelError(f"{path} is not a readable ONNX model ({detail}); export it again") from None


class OnnxEmbedder:
    """:class:`~vitrieval.runtime.embedder.Embedder` over an exported file, with its recorded pre-processing.

    ``resize`` (the index's mode) overrides the one recorded at export; ``threads`` sets onnxruntime's intra-op
    threads (0: its default, one per core).
    """

    runtime = "onnx"

    def __init__(self, path: str | Path, resize: str | None = None, threads: int = 0) -> None:
        self.path = Path(path).expanduser()
        if not self.path.is_file():
            raise OnnxModelError(f"{self.path} not found: export the model first "
                                 f"(vitrieval export --checkpoint {self.path.parent} --format onnx)")
        self.session = inference_session(self.path, threads)
        self.info = OnnxModelInfo.from_metadata(self.session.get_modelmeta().custom_metadata_map, self.path)
        self.descriptor_dim = self.info.descriptor_dim
        self.preprocess = Preprocessing.from_data_config(self.info.data_config, resize or self.info.resize)

    @property
    def fingerprint(self) -> str:
        return self.info.fingerprint

    def run(self, pixels: np.ndarray) -> np.ndarray:
        """The graph on pre-processed pixels ``(B, 3, S, S)`` float32 -> ``(B, D)`` float32."""
        return np.asarray(self.session.run(None, {INPUT_NAME: np.ascontiguousarray(pixels, np.float32)})[0],
                          dtype=np.float32)

    def prepare(self, image: Image.Image) -> np.ndarray:
        return self.preprocess(image)

    def embed_prepared(self, inputs: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
        if not len(inputs):
            return np.zeros((0, self.descriptor_dim), dtype=np.float32)
        return self.run(inputs if isinstance(inputs, np.ndarray) else np.stack(list(inputs)))
