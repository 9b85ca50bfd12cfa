"""vitrieval: train, evaluate and serve image-retrieval descriptors from Vision Transformers (IRT)."""

__version__ = "0.1.0"
