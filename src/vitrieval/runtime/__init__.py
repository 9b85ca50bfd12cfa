"""Where a model runs: the torch :class:`~vitrieval.model.Encoder` or onnxruntime on the exported graph.

=====================  =====================================================================================
module                 one idea
=====================  =====================================================================================
``embedder``           the :class:`Embedder` interface (a prepared batch in, ``(n, D)`` float32 out); ``RUNTIMES``
``extraction``         the one batched extraction loop (``collect``), ``Extraction``, the torch-free batch source
``onnx_file``          the exported file: default place, its metadata (fingerprint, pre-processing), checks
``onnx_embedder``      :class:`OnnxEmbedder`: onnxruntime session + numpy pre-processing (no torch)
``torch_embedder``     :class:`TorchEmbedder`: the one torch forward of an encoder (or its multi-scale wrapper)
=====================  =====================================================================================

Nothing here imports torch at module level; ``torch_embedder`` imports it when used. The pre-processing is
:class:`vitrieval.data.preprocessing.Preprocessing` (re-exported here).
"""

from vitrieval.data.preprocessing import Preprocessing
from vitrieval.runtime.embedder import RUNTIMES, Embedder, RuntimeUnavailableError, check_runtime
from vitrieval.runtime.onnx_file import ONNX_FILE, OnnxModelError, OnnxModelInfo, default_onnx_path

__all__ = ["ONNX_FILE", "RUNTIMES", "Embedder", "Preprocessing", "OnnxModelError", "OnnxModelInfo",
           "RuntimeUnavailableError", "check_runtime", "default_onnx_path"]
