"""Where a model runs: the torch :class:`~vitrieval.model.Encoder` or onnxruntime on the exported graph.

=====================  =====================================================================================
module                 one idea
=====================  =====================================================================================
``embedder``           the :class:`Embedder` interface an index embeds queries through; ``RUNTIMES``
``preprocess``         the eval pre-processing in Pillow + numpy, identical in pixels to the torch transform
``onnx_file``          the exported file: default place, its metadata (fingerprint, pre-processing), checks
``onnx_embedder``      :class:`OnnxEmbedder`: onnxruntime session + numpy pre-processing (no torch)
``torch_embedder``     :class:`TorchEmbedder`: the encoder and the torch eval transform
``table_embed``        a table's images through an embedder (``vitrieval index --runtime onnx``)
=====================  =====================================================================================

Nothing here imports torch at module level; ``torch_embedder`` imports it when used.
"""

from vitrieval.data.preprocessing import Preprocessing
from vitrieval.runtime.embedder import RUNTIMES, Embedder, RuntimeUnavailableError, check_runtime
from vitrieval.runtime.onnx_file import ONNX_FILE, OnnxModelError, OnnxModelInfo, default_onnx_path

__all__ = ["ONNX_FILE", "RUNTIMES", "Embedder", "Preprocessing", "OnnxModelError", "OnnxModelInfo",
           "RuntimeUnavailableError", "check_runtime", "default_onnx_path"]
