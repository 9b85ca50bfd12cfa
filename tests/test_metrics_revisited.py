"""Revisited Oxford / Paris protocol against the golden outputs of the authors' reference code."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from vitrieval.metrics import revisited_map, revisited_map_from_descriptors
from vitrieval.metrics.revisited import compute_ap

GOLDEN = Path(__file__).resolve().parents[1].parent / "shared" / "golden" / "revisited_map"
CASES = ("tiny", "medium", "oxford_sized")
PROTOCOLS = ("easy", "medium", "hard")


def load_case(name: str) -> tuple[dict[str, np.ndarray], dict]:
    npz, js = GOLDEN / f"{name}.npz", GOLDEN / f"{name}.json"
    if not (npz.is_file() and js.is_file()):
        pytest.skip(f"golden fixture {name} not found under {GOLDEN} (expected ../shared/golden beside the checkout)")
    with np.load(npz) as data:
        arrays = {key: data[key] for key in data.files}
    return arrays, json.loads(js.read_text())


def assert_matches_golden(result: dict, expected: dict, n_queries: int) -> None:
    assert set(result) == set(PROTOCOLS)
    for protocol in PROTOCOLS:
        got, exp = result[protocol], expected[protocol]
        assert got["map"] == pytest.approx(exp["map"], abs=1e-9, rel=0), protocol
        assert len(got["aps"]) == n_queries == len(exp["aps"])
        for i, (a, b) in enumerate(zip(got["aps"], exp["aps"])):
            if b is None:
                assert a is None, f"{protocol} query {i}: expected no positives"
            else:
                assert a == pytest.approx(b, abs=1e-9, rel=0), f"{protocol} query {i}"
        assert got["mp_at_k"] == pytest.approx({int(k): v for k, v in exp["mp_at_k"].items()}, abs=1e-9, rel=0)
        assert list(got["mp_at_k"]) == [int(k) for k in exp["mp_at_k"]]


@pytest.mark.parametrize("name", CASES)
def test_golden_from_ranks(name: str) -> None:
    data, case = load_case(name)
    result = revisited_map(data["ranks"], case["gnd"], case["kappas"])
    assert_matches_golden(result, case["expected"], len(case["gnd"]))


@pytest.mark.parametrize("name", CASES)
def test_golden_from_descriptors(name: str) -> None:
    data, case = load_case(name)
    result = revisited_map_from_descriptors(data["database"], data["queries"], case["gnd"], case["kappas"])
    assert_matches_golden(result, case["expected"], len(case["gnd"]))


def test_golden_tiny_by_hand() -> None:
    # Query 1 of `tiny`: easy = [8], hard = [1], no junk. Read the positions off its ranking and recompute the
    # medium-protocol AP with the trapezoid rule by hand.
    data, case = load_case("tiny")
    column = list(data["ranks"][:, 1])
    p_easy, p_hard = column.index(8), column.index(1)
    r0, r1 = sorted([p_easy, p_hard])
    ap = ((1.0 if r0 == 0 else 0.0 / r0) + 1.0 / (r0 + 1)) / 2 / 2 + (1.0 / r1 + 2.0 / (r1 + 1)) / 2 / 2
    assert ap == pytest.approx(case["expected"]["medium"]["aps"][1], abs=1e-12)
    assert revisited_map(data["ranks"], case["gnd"])["medium"]["aps"][1] == pytest.approx(ap, abs=1e-12)


def test_compute_ap_by_hand() -> None:
    # Positives at ranks 0 and 2 of 2: ((1 + 1) / 2 + (1/2 + 2/3) / 2) / 2
    assert compute_ap([0, 2], 2) == pytest.approx((1.0 + (0.5 + 2 / 3) / 2) / 2)
    # One positive at rank 3, two in the ground truth (the other never retrieved): (0 + 1/4) / 2 / 2
    assert compute_ap([3], 2) == pytest.approx(1 / 16)
    assert compute_ap([], 3) == 0.0
    assert compute_ap([0, 1, 2], 3) == pytest.approx(1.0)


def reference_compute_map(ranks: np.ndarray, gnd: list[dict], kappas: list[int]) -> tuple:
    """Straight port of revisitop's compute_map (per-query isin + junk loop), for random cross-checks."""
    n_q = len(gnd)
    aps, prs = np.full(n_q, np.nan), np.full((n_q, len(kappas)), np.nan)
    for i in range(n_q):
        ok, junk_list = np.asarray(gnd[i]["ok"]), np.asarray(gnd[i]["junk"])
        if ok.size == 0:
            continue
        pos = np.arange(ranks.shape[0])[np.isin(ranks[:, i], ok)]
        junk = np.arange(ranks.shape[0])[np.isin(ranks[:, i], junk_list)]
        k, ij = 0, 0
        for ip in range(len(pos)):
            while ij < len(junk) and pos[ip] > junk[ij]:
                k += 1
                ij += 1
            pos[ip] -= k
        aps[i] = compute_ap(pos, len(ok))
        pos = pos + 1
        for j, kappa in enumerate(kappas):
            kq = min(max(pos), kappa)
            prs[i, j] = (pos <= kq).sum() / kq
    valid = ~np.isnan(aps)
    return aps[valid].mean(), aps, prs[valid].mean(axis=0)


def test_random_cases_with_overlaps_match_reference_port() -> None:
    rng = np.random.default_rng(0)
    n_db, n_q = 200, 15
    ranks = np.stack([rng.permutation(n_db) for _ in range(n_q)], axis=1)
    gnd = []
    for i in range(n_q):
        pick = lambda m: list(rng.choice(n_db, size=m, replace=False))  # noqa: E731
        entry = {"easy": pick(rng.integers(0, 8)), "hard": pick(rng.integers(0, 8)), "junk": pick(rng.integers(0, 30))}
        if i == 0:  # an image both easy and junk, and a positive ranked first behind junk
            entry = {"easy": [int(ranks[1, 0]), int(ranks[5, 0])], "hard": [],
                     "junk": [int(ranks[0, 0]), int(ranks[5, 0])]}
        gnd.append(entry)
    result = revisited_map(ranks, gnd, [1, 5, 10])
    for protocol, (ok_keys, junk_keys) in {
        "easy": (["easy"], ["junk", "hard"]),
        "medium": (["easy", "hard"], ["junk"]),
        "hard": (["hard"], ["junk", "easy"]),
    }.items():
        g = [{"ok": sum((e[k] for k in ok_keys), []), "junk": sum((e[k] for k in junk_keys), [])} for e in gnd]
        mean_ap, aps, mp = reference_compute_map(ranks, g, [1, 5, 10])
        assert result[protocol]["map"] == pytest.approx(mean_ap, abs=1e-12)
        got = np.array([np.nan if a is None else a for a in result[protocol]["aps"]])
        np.testing.assert_allclose(got, aps, rtol=0, atol=1e-12)
        np.testing.assert_allclose(list(result[protocol]["mp_at_k"].values()), mp, rtol=0, atol=1e-12)


def test_input_errors() -> None:
    ranks = np.array([[0, 1], [1, 0], [2, 2]])
    gnd = [{"easy": [0], "hard": [], "junk": []}, {"easy": [1], "hard": [2], "junk": [0]}]
    assert revisited_map(ranks, gnd)["medium"]["aps"] == [1.0, 1.0]
    with pytest.raises(ValueError, match="twice"):
        revisited_map(np.array([[0, 1], [0, 0], [2, 2]]), gnd)
    with pytest.raises(ValueError, match="columns"):
        revisited_map(ranks[:, :1], gnd)
    with pytest.raises(ValueError, match="'hard'"):
        revisited_map(ranks, [{"easy": [0], "junk": []}, gnd[1]])
    with pytest.raises(ValueError, match="integer"):
        revisited_map(ranks.astype(np.float64), gnd)
    with pytest.raises(ValueError, match="dimension"):
        revisited_map_from_descriptors(np.zeros((3, 4)), np.zeros((2, 5)), gnd)


def test_from_descriptors_breaks_ties_by_lower_index() -> None:
    # Database images 0, 2 and 3 are identical: equal scores are ranked by index, so for the query below the
    # ranking is 0, 2, 3, 1 whatever the sort does internally. Positive 3 (rank 2) with junk 2 before it: rank 1.
    database = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 0.0]])
    queries = np.array([[1.0, 0.0]])
    gnd = [{"easy": [3], "hard": [], "junk": [2]}]
    result = revisited_map_from_descriptors(database, queries, gnd, kappas=[1, 2])
    expected = revisited_map(np.array([[0], [2], [3], [1]]), gnd, kappas=[1, 2])
    for protocol in ("easy", "medium"):
        assert result[protocol] == expected[protocol]
    assert result["hard"]["aps"] == [None]  # no hard positives
    assert result["easy"]["aps"] == [pytest.approx((0 / 1 + 1 / 2) / 2)]


def test_from_descriptors_many_ties_equals_stable_ranking() -> None:
    # 300 database images drawn from 3 distinct vectors: the plain (introsort) argsort scrambles equal scores,
    # the result must still be that of the stable ranking.
    rng = np.random.default_rng(1)
    basis = np.eye(3)
    database = basis[rng.integers(0, 3, 300)]
    queries = np.array([[1.0, 0.5, 0.0], [0.0, 0.2, 1.0]])
    gnd = [
        {"easy": list(rng.choice(300, 10, replace=False)), "hard": [5, 7], "junk": list(range(20, 40))},
        {"easy": [1, 2, 3], "hard": list(rng.choice(300, 6, replace=False)), "junk": []},
    ]
    stable = np.argsort(-(database @ queries.T), axis=0, kind="stable")
    result = revisited_map_from_descriptors(database, queries, gnd)
    expected = revisited_map(stable, gnd)
    for protocol in PROTOCOLS:
        assert result[protocol] == expected[protocol]
