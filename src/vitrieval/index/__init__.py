"""A searchable collection (see :mod:`vitrieval.index.index`)."""

from vitrieval.index.index import *  # noqa: F403 - the package's public names, split into modules next
from vitrieval.index.index import INFO_FILE, Index, IndexFormatError, ModelMismatchError  # noqa: F401
