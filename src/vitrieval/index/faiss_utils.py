"""Pure faiss helpers: the factory choice, making and training an index, and its search parameters.

Every index is a faiss factory string on inner product (cosine on unit vectors) wrapped in ``IndexIDMap2`` (ids =
metadata ids). Search parameters are set with :class:`faiss.ParameterSpace`, which reaches the IVF / HNSW / Refine
layer through the IDMap, a Refine and a PreTransform; faiss has no getter, so their values are read from the layer
itself (:func:`_layers`). Nothing here knows about models, images or folders.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import faiss

log = logging.getLogger(__name__)

AUTO_EXACT_LIMIT = 100_000
"""``factory="auto"``: exact (Flat) search below this many vectors, :data:`APPROXIMATE_FACTORY` from there on."""

APPROXIMATE_FACTORY = "IVF4096,PQ32x4fs,RFlat"
"""The recommended approximate index (``benchmarks/search.py``, 1M x 128: recall@10 >= 0.95 at >= 10x the
queries per second of exact search): inverted lists + 4-bit fast-scan PQ, re-ranked with the exact vectors."""

APPROXIMATE_SEARCH_PARAMS: dict[str, int] = {"nprobe": 32, "k_factor": 8}
"""Search parameters that go with :data:`APPROXIMATE_FACTORY`."""

DEFAULT_EF_SEARCH = 128
"""HNSW efSearch when a factory string with HNSW is given without one (faiss' own default of 16 is too low)."""

DEFAULT_NPROBE_FRACTION = 1 / 128
"""IVF nprobe when not given: this fraction of the lists, at least 8 (faiss' own default of 1 is too low)."""

DEFAULT_K_FACTOR = 4
"""Refine (RFlat) when not given: re-rank 4 k approximate candidates with the exact vectors."""

MAX_TRAIN_POINTS_PER_CENTROID = 64
"""IVF training sample: at most this many vectors per list (faiss warns below 39; its own cap is 256, which makes
k-means on 4096 lists four times slower for no measurable recall in ``benchmarks/search.py``)."""

SEARCH_PARAMS = {"nprobe": "IVF", "ef_search": "HNSW", "k_factor": "refined (RFlat)"}
"""Our search parameters and the kind of index each applies to."""

_FAISS_NAMES = {"nprobe": "nprobe", "ef_search": "efSearch", "k_factor": "k_factor_rf"}
"""Their names for :meth:`faiss.ParameterSpace.set_index_parameter`."""


def normalized(x: np.ndarray) -> np.ndarray:
    """A float32 C-contiguous copy of ``x`` with unit rows, :math:`x_i / \\lVert x_i \\rVert_2` (zero rows stay 0)."""
    x = np.array(x, dtype=np.float32, copy=True, order="C")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    np.divide(x, norms, out=x, where=norms > 0)
    return x


def resolve_factory(factory: str, count: int) -> str:
    """``"auto"`` -> ``"Flat"`` below :data:`AUTO_EXACT_LIMIT` vectors, else :data:`APPROXIMATE_FACTORY`."""
    if factory == "auto":
        return "Flat" if count < AUTO_EXACT_LIMIT else APPROXIMATE_FACTORY
    return factory


def make_faiss_index(factory: str, dim: int) -> faiss.IndexIDMap2:
    """An untrained faiss index for ``factory`` on inner product, wrapped in IndexIDMap2 (ids = metadata ids)."""
    import faiss

    if factory.startswith("IDMap"):
        raise ValueError(f"factory {factory!r}: leave out IDMap, every index is wrapped in IndexIDMap2 already")
    try:
        inner = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        last = str(exc).strip().splitlines()[-1]
        reason = re.sub(r"^Error in .* at \S+:\d+: ", "", last)[:200]  # faiss' C++ function and source line
        raise ValueError(f"faiss cannot build index {factory!r} for {dim}-d descriptors: {reason} (e.g. Flat, "
                         f"HNSW32, IVF1024,PQ32x4fs,RFlat, or auto)") from None
    return faiss.IndexIDMap2(inner)


def parse_training_needs(factory: str) -> tuple[int, str]:
    """Fewest training vectors ``factory`` needs (IVF lists, PQ/SQ codebook sizes) and what needs them.

    ``IVFn`` needs :math:`n` vectors (one per list); ``PQm[xb]`` / ``OPQm[xb]`` need :math:`2^b` (one per
    centroid of a sub-quantizer, :math:`b = 8` when not given).
    """
    need, why = 0, ""
    for m in re.finditer(r"IVF(\d+)", factory):
        if int(m.group(1)) > need:
            need, why = int(m.group(1)), f"IVF{m.group(1)} has {m.group(1)} lists"
    for m in re.finditer(r"(?<![A-Za-z])(?:PQ|OPQ)(\d+)(?:x(\d+))?", factory):
        bits = int(m.group(2)) if m.group(2) else 8
        if 2 ** bits > need:
            need, why = 2 ** bits, f"{m.group(0)} has {2 ** bits} centroids per sub-quantizer"
    return need, why


def check_training_count(factory: str, count: int, what: str = "descriptors") -> None:
    """Refuse ``factory`` when ``count`` descriptors (or images, before they are embedded) are too few to train it
    (:func:`parse_training_needs`)."""
    need, why = parse_training_needs(factory)
    if count < max(need, 1):
        suggestion = max(1, count // 39)
        raise ValueError(f"index {factory!r} needs at least {need} descriptors to train ({why}), the collection "
                         f"has {count}{'' if what == 'descriptors' else f' {what}'}; use fewer lists (e.g. "
                         f"IVF{suggestion}), fewer PQ bits, or 'Flat'")


def check_factory(factory: str, dim: int, count: int) -> str:
    """``factory`` resolved for ``count`` vectors, checked before any embedding: faiss can build it for ``dim``-d
    descriptors and ``count`` are enough to train it (a ``ValueError`` naming the fix otherwise)."""
    resolved = resolve_factory(factory, count)
    if not make_faiss_index(resolved, dim).is_trained:
        check_training_count(resolved, count, "images")
    return resolved


def train_faiss_index(faiss_index: faiss.Index, factory: str, chunks: Sequence[np.ndarray], seed: int = 0) -> None:
    """Train IVF / PQ on (a sample of) the descriptor chunks; too few of them for ``factory`` is a clear error.

    At most :data:`MAX_TRAIN_POINTS_PER_CENTROID` vectors per IVF list (and at least 256 x that) are drawn,
    uniformly, with a fixed seed.
    """
    count = sum(len(c) for c in chunks)
    check_training_count(factory, count)
    nlist = max((int(m.group(1)) for m in re.finditer(r"IVF(\d+)", factory)), default=256)
    limit = max(nlist, 256) * MAX_TRAIN_POINTS_PER_CENTROID
    if count > limit:
        rows = np.sort(np.random.default_rng(seed).choice(count, limit, replace=False))
        picked, offset = [], 0
        for c in chunks:
            local = rows[(rows >= offset) & (rows < offset + len(c))] - offset
            if len(local):
                picked.append(np.asarray(c[local]))
            offset += len(c)
        data = np.concatenate(picked)
    else:
        data = np.concatenate([np.asarray(c) for c in chunks if len(c)])
    log.info("training %s on %d descriptors", factory, len(data))
    try:
        faiss_index.train(normalized(data))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1][:200]
        raise ValueError(f"training index {factory!r} on {len(data)} descriptors failed: {first}") from None


# ----------------------------------------------------------------------------------------------------------------
# search parameters


def _layers(index: faiss.Index) -> list[faiss.Index]:
    """The chain of (downcast) faiss indexes below ``index``: IDMap -> Refine -> PreTransform -> IVF/HNSW.

    The layers :class:`faiss.ParameterSpace` passes through; only used to read values, which it cannot.
    """
    import faiss

    chain = []
    current = faiss.downcast_index(index)
    while current is not None:
        chain.append(current)
        if isinstance(current, (faiss.IndexIDMap, faiss.IndexIDMap2, faiss.IndexPreTransform)):
            current = faiss.downcast_index(current.index)
        elif isinstance(current, faiss.IndexRefine):
            current = faiss.downcast_index(current.base_index)
        else:
            current = None
    return chain


def _part(index: faiss.Index, name: str) -> faiss.Index | None:
    """The IVF / HNSW / Refine layer of ``index`` that the search parameter ``name`` applies to, or ``None``."""
    import faiss

    kind = {"nprobe": faiss.IndexIVF, "ef_search": faiss.IndexHNSW, "k_factor": faiss.IndexRefine}[name]
    return next((part for part in _layers(index) if isinstance(part, kind)), None)


def get_search_params(index: faiss.Index) -> dict[str, int]:
    """The search parameters (nprobe, ef_search, k_factor) that apply to the faiss ``index``, with their values."""
    out = {}
    for name in SEARCH_PARAMS:
        part = _part(index, name)
        if part is not None:
            value = {"nprobe": lambda p: p.nprobe, "ef_search": lambda p: p.hnsw.efSearch,
                     "k_factor": lambda p: p.k_factor}[name](part)
            out[name] = int(value)
    return out


def set_search_params(index: faiss.Index, **params: int | None) -> dict[str, int]:
    """Set ``nprobe`` (IVF, clipped to nlist), ``ef_search`` (HNSW), ``k_factor`` (RFlat) on a faiss index.

    ``None`` values are ignored; a parameter the index has no layer for raises ``AttributeError``.
    Returns the values now in effect.
    """
    import faiss

    space = faiss.ParameterSpace()
    for name, value in params.items():
        if value is None:
            continue
        if name not in SEARCH_PARAMS:
            raise ValueError(f"unknown search parameter {name!r}; known: {', '.join(SEARCH_PARAMS)}")
        part = _part(index, name)
        if part is None:
            raise AttributeError(f"{name} applies to {SEARCH_PARAMS[name]} indexes only")
        if int(value) < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
        setting = float(value) if name == "k_factor" else float(int(value))
        if name == "nprobe":
            setting = float(min(int(value), int(part.nlist)))
        space.set_index_parameter(index, _FAISS_NAMES[name], setting)
    return get_search_params(index)


def _selector_params(layer: faiss.Index, sel: faiss.IDSelector, keep: list) -> faiss.SearchParameters:
    """Search parameters for ``layer`` carrying the ID selector ``sel`` and the layer's own settings (nprobe,
    efSearch, k_factor: a parameters object replaces them for the call), down through Refine and PreTransform."""
    import faiss

    layer = faiss.downcast_index(layer)
    if isinstance(layer, faiss.IndexRefine):
        base = _selector_params(layer.base_index, sel, keep)
        keep.append(base)
        return faiss.IndexRefineSearchParameters(k_factor=layer.k_factor, base_index_params=base)
    if isinstance(layer, faiss.IndexPreTransform):
        return _selector_params(layer.index, sel, keep)
    if isinstance(layer, faiss.IndexIVF):
        return faiss.SearchParametersIVF(sel=sel, nprobe=layer.nprobe)
    if isinstance(layer, faiss.IndexHNSW):
        return faiss.SearchParametersHNSW(sel=sel, efSearch=layer.hnsw.efSearch)
    return faiss.SearchParameters(sel=sel)


def search_with_exclusions(index: faiss.Index, x: np.ndarray, k: int,
                           excluded: set[int]) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` (scores, ids) of ``x`` in the ``IndexIDMap2`` ``index`` among the ids not in ``excluded``, filtered
    inside faiss (``IDSelectorNot(IDSelectorBatch)`` in the search parameters; no over-fetching). Rows with fewer
    results are padded with id ``-1``."""
    import faiss

    if not excluded:
        return index.search(x, k)
    dead = np.fromiter(excluded, dtype=np.int64, count=len(excluded))
    batch = faiss.IDSelectorBatch(dead)
    sel = faiss.IDSelectorNot(batch)
    keep: list = [batch, sel]
    inner = faiss.downcast_index(index.index)
    if isinstance(inner, faiss.IndexRefine):  # its base searches positions: translate the selector ourselves
        translated = faiss.IDSelectorTranslated(index.id_map, sel)
        keep.append(translated)
        params = _selector_params(inner, translated, keep)
        params.sel = sel  # the id map translates the outer one for the refine step
    else:
        params = _selector_params(inner, sel, keep)
    scores, ids = index.search(np.ascontiguousarray(x, dtype=np.float32), k, params=params)
    scores[ids < 0] = -np.inf
    return scores, ids


def default_search_params(index: faiss.Index, factory: str) -> dict[str, int]:
    """Search parameters a new index starts with (faiss' own defaults, nprobe=1 and efSearch=16, are too low).

    :data:`APPROXIMATE_SEARCH_PARAMS` for :data:`APPROXIMATE_FACTORY`; otherwise nprobe
    :math:`= \\max(8, \\lfloor n_{list} \\cdot` :data:`DEFAULT_NPROBE_FRACTION` :math:`\\rfloor)`,
    :data:`DEFAULT_EF_SEARCH` and :data:`DEFAULT_K_FACTOR`, each only where the index has the layer.
    """
    params = dict(APPROXIMATE_SEARCH_PARAMS) if factory == APPROXIMATE_FACTORY else {}
    for name in SEARCH_PARAMS:
        part = _part(index, name)
        if part is None or name in params:
            continue
        if name == "nprobe":
            params[name] = max(8, int(part.nlist * DEFAULT_NPROBE_FRACTION))
        elif name == "ef_search":
            params[name] = DEFAULT_EF_SEARCH
        else:
            params[name] = DEFAULT_K_FACTOR
    return {k: v for k, v in params.items() if _part(index, k) is not None}
