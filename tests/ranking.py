"""Comparing two rankings of the same index computed by two runtimes (torch and onnxruntime, float32 and bf16).

Two runtimes give descriptors that agree within a tolerance, not to the bit, so their scores agree within some
``score_tol`` and two hits whose scores are closer than ``2 · score_tol`` may come out in either order, and a hit
scoring within that of the k-th may fall just inside or outside the top k. Anything else is a real difference.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def _pairs(hits: Sequence[Any]) -> list[tuple[int, float]]:
    return [(h["id"], h["score"]) if isinstance(h, dict) else (h.id, h.score) for h in hits]


def assert_same_ranking(got: Sequence[Any], want: Sequence[Any], score_tol: float) -> None:
    """``got`` and ``want`` (``Hit`` objects or the HTTP answer's dicts, best first) are the same top-k up to
    near-ties: the i-th scores within ``score_tol``; an id in only one list scores within ``2 · score_tol`` of that
    list's last score; two ids in both lists come in the same order unless their scores are within ``2 · score_tol``.
    """
    a, b = _pairs(got), _pairs(want)
    assert len(a) == len(b), (a, b)
    for (_, sa), (_, sb) in zip(a, b):
        assert abs(sa - sb) <= score_tol, (a, b)
    score_a, score_b = dict(a), dict(b)
    for own, other, last in ((score_a, score_b, a[-1][1]), (score_b, score_a, b[-1][1])):
        for hit_id, score in own.items():
            if hit_id not in other:
                assert score - last <= 2 * score_tol, f"id {hit_id} ({score}) is not a near-tie at the boundary"
    common = [i for i, _ in b if i in score_a]
    rank_a = {i: r for r, (i, _) in enumerate(a)}
    for x, y in zip(common, common[1:]):  # b's order; a must agree unless the two are a near-tie
        if rank_a[x] > rank_a[y]:
            assert abs(score_b[x] - score_b[y]) <= 2 * score_tol, f"ids {x}, {y} swapped beyond a near-tie"
