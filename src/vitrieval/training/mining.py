"""Hard-negative mining for tuple training (cirtorch's procedure on SfM-120k, the paper's landmark track).

At the start of every epoch:

1. draw ``query_size`` query-positive pairs from the dataset's pairs, and a pool of ``pool_size`` images;
2. embed the queries and the pool with the current model (batched, sharded under torchrun, with progress);
3. give every query the ``negatives`` pool images most similar to it whose cluster (3D model) is not the query's,
   taking at most one image per cluster.

A tuple is then ``(query, positive, n_1, …, n_k)``. The draws depend only on ``(seed, epoch)``, so an interrupted
run mines the same tuples again.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import torch

from vitrieval.data.table import ImageTable
from vitrieval.data.tuples import EpochTuples
from vitrieval.embed import ExtractionOptions, extract

log = logging.getLogger(__name__)


def epoch_rng(seed: int, epoch: int) -> np.random.Generator:
    """The generator of epoch ``epoch``'s draws (pairs and pool)."""
    return np.random.default_rng([seed, epoch, 0x7C1E])


def hardest_negatives(query_desc: np.ndarray, pool_desc: np.ndarray, pool_rows: np.ndarray,
                      clusters: np.ndarray, query_clusters: np.ndarray, k: int,
                      chunk: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """For every query, the ``k`` most similar pool images (inner product) outside its cluster, one per cluster.

    Returns ``(negatives (n, k), distances (n, k))``: table rows ``pool_rows[j]`` of the chosen pool items, in
    decreasing similarity, and their L2 distances to the query. ``clusters[j]`` is the cluster of pool item ``j``.
    Raises ``ValueError`` when the pool has fewer than ``k`` clusters other than a query's.
    """
    n = len(query_desc)
    negatives = np.empty((n, k), dtype=np.int64)
    distances = np.empty((n, k), dtype=np.float32)
    if k == 0 or n == 0:
        return negatives, distances
    pool = torch.from_numpy(np.ascontiguousarray(pool_desc, dtype=np.float32))
    # a query's candidates: enough of the top of its ranking to hold k other clusters in the usual case
    shortlist = min(len(pool_desc), max(8 * k, 64))
    for start in range(0, n, chunk):
        q = torch.from_numpy(np.ascontiguousarray(query_desc[start:start + chunk], dtype=np.float32))
        scores = q @ pool.T
        top = torch.topk(scores, shortlist, dim=1).indices.numpy()
        for i in range(len(q)):
            row = start + i
            picked = _pick(top[i], clusters, query_clusters[row], k)
            if picked is None:  # the shortlist was dominated by a few clusters: scan the whole ranking
                picked = _pick(torch.argsort(scores[i], descending=True).numpy(), clusters, query_clusters[row], k)
            if picked is None:
                others = len(set(clusters.tolist()) - {int(query_clusters[row])})
                raise ValueError(f"the negative pool holds only {others} cluster(s) other than query {row}'s, "
                                 f"{k} are needed: raise tuples.pool_size or lower tuples.negatives")
            negatives[row] = pool_rows[picked]
            diff = pool_desc[picked] - query_desc[row]
            distances[row] = np.sqrt((diff.astype(np.float64) ** 2).sum(axis=1))
    return negatives, distances


def _pick(order: np.ndarray, clusters: np.ndarray, query_cluster: int, k: int) -> np.ndarray | None:
    """The first ``k`` positions of ``order`` whose clusters are new (not the query's, not already taken)."""
    taken = {int(query_cluster)}
    picked: list[int] = []
    for j in order:
        c = int(clusters[j])
        if c not in taken:
            taken.add(c)
            picked.append(int(j))
            if len(picked) == k:
                return np.asarray(picked, dtype=np.int64)
    return None


MINING_EXTRACTION = ExtractionOptions(batch_size=32, resize="square", output="normalized")
"""The extraction settings mining starts from: L2-normalised descriptors before any PCA, whole images."""


def mine_epoch_tuples(encoder: torch.nn.Module, table: ImageTable, pairs: np.ndarray, epoch: int, seed: int, *,
                      query_size: int, pool_size: int, negatives: int,
                      extraction: ExtractionOptions = MINING_EXTRACTION) -> EpochTuples:
    """Draw and mine the tuples of ``epoch`` (see the module docstring); ``pairs`` is ``(m, 2)`` table rows.

    ``extraction`` (:class:`~vitrieval.embed.ExtractionOptions`): how the queries and the pool are embedded (batch
    size, workers, autocast, resize, ``skip_bad``, ``fast_decode``: large JPEGs decoded at a reduced DCT scale, as
    training decodes them); the descriptors are always the normalised ones before any PCA.

    Unreadable images (with ``extraction.skip_bad``) are left out: a query that cannot be read drops its tuple, a
    pool image cannot be chosen. Under torchrun every rank calls this with the same arguments and gets the same tuples.
    The two extractions start their decode workers afresh (once per epoch, not per batch): an epoch embeds
    ``query_size + pool_size`` images (22,000 in cirtorch's recipe), so the start-up is a small share of it.
    """
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    if len(pairs) == 0:
        raise ValueError(f"{table.name}: no query-positive pairs to train on")
    rng = epoch_rng(seed, epoch)
    chosen = pairs[rng.permutation(len(pairs))[:min(query_size, len(pairs))]]
    if negatives == 0:
        return EpochTuples(chosen[:, 0], chosen[:, 1], np.zeros((len(chosen), 0), np.int64))
    pool_rows = rng.permutation(len(table))[:min(pool_size, len(table))].astype(np.int64)
    options = dataclasses.replace(extraction, output="normalized")
    q_table = ImageTable([table[int(i)] for i in chosen[:, 0]], f"{table.name}/epoch-{epoch}-queries")
    p_table = ImageTable([table[int(i)] for i in pool_rows], f"{table.name}/epoch-{epoch}-pool")
    q_ext = extract(encoder, q_table, options, desc=f"epoch {epoch}: embedding {len(q_table)} queries")
    p_ext = extract(encoder, p_table, options, desc=f"epoch {epoch}: embedding a pool of {len(p_table)}")
    chosen = chosen[q_ext.indices]
    pool_rows = pool_rows[p_ext.indices]
    labels = table.labels
    negs, dist = hardest_negatives(q_ext.descriptors, p_ext.descriptors, pool_rows, labels[pool_rows],
                                   labels[chosen[:, 0]], negatives)
    mean_dist = float(dist.mean()) if dist.size else float("nan")
    log.info("epoch %d: %d tuples mined from a pool of %d images (mean query-negative distance %.3f)", epoch,
             len(chosen), len(pool_rows), mean_dist)
    return EpochTuples(chosen[:, 0], chosen[:, 1], negs, mean_dist)
