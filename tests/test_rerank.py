"""αQE and DBA against plain numpy brute force: full score matrix, stable argsort, explicit weighted sums."""

from __future__ import annotations

import numpy as np
import pytest

from vitrieval.rerank import DEFAULT_ALPHA, DEFAULT_N, alpha_query_expansion, database_side_augmentation, parse_methods


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def reference(vectors: np.ndarray, database: np.ndarray, n: int, alpha: float, exclude_self: bool) -> np.ndarray:
    """The formula row by row: top-n by decreasing score (ties: lower index), weights max(s, 0)^alpha."""
    v64, db64 = vectors.astype(np.float64), database.astype(np.float64)
    out = np.empty_like(v64)
    for i, v in enumerate(v64):
        s = db64 @ v
        order = [j for j in np.argsort(-s, kind="stable") if not (exclude_self and j == i)]
        agg = v.copy()
        for j in order[:n]:
            agg += max(s[j], 0.0) ** alpha * db64[j]
        out[i] = agg / np.linalg.norm(agg)
    return out


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    return unit(rng.standard_normal((40, 8))), unit(rng.standard_normal((150, 8)))


@pytest.mark.parametrize("n, alpha", [(1, 3.0), (2, 3.0), (5, 1.0), (10, 0.5)])
def test_aqe_equals_the_brute_force_formula(data, n, alpha):
    q, db = data
    got = alpha_query_expansion(q, db, n, alpha, chunk_size=7)
    assert got.dtype == np.float32 and got.shape == q.shape
    np.testing.assert_allclose(got, reference(q, db, n, alpha, False), atol=2e-6)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)


@pytest.mark.parametrize("n, alpha", [(1, 3.0), (3, 3.0), (7, 2.0)])
def test_dba_equals_the_brute_force_formula_and_never_uses_the_row_itself(data, n, alpha):
    _, db = data
    got = database_side_augmentation(db, n, alpha, chunk_size=13)
    np.testing.assert_allclose(got, reference(db, db, n, alpha, True), atol=2e-6)


def test_dba_counts_a_duplicate_at_another_row_as_a_neighbour():
    """Row 0 and row 3 are the same vector: each is the other's first neighbour (score 1, weight 1), so with
    n = 1 both become L2(d + d) = d; row 1's only neighbour is row 2 (not itself)."""
    a, b, c = unit(np.array([[1.0, 0.2, 0.0], [0.0, 1.0, 0.1], [0.3, 0.9, 0.0]]))
    db = np.stack([a, b, c, a])
    got = database_side_augmentation(db, n=1, alpha=3.0)
    np.testing.assert_allclose(got[0], a, atol=1e-6)
    np.testing.assert_allclose(got[3], a, atol=1e-6)
    s = float(b @ c)
    np.testing.assert_allclose(got[1], unit((b + s ** 3 * c)[None])[0], atol=1e-6)
    np.testing.assert_allclose(got, reference(db, db, 1, 3.0, True), atol=2e-6)


def test_n_larger_than_the_database_uses_every_vector():
    rng = np.random.default_rng(3)
    q, db = unit(rng.standard_normal((5, 4))), unit(rng.standard_normal((6, 4)))
    np.testing.assert_allclose(alpha_query_expansion(q, db, 50, 3.0), reference(q, db, 6, 3.0, False), atol=2e-6)
    np.testing.assert_allclose(database_side_augmentation(db, 50, 3.0), reference(db, db, 5, 3.0, True), atol=2e-6)
    one = unit(rng.standard_normal((1, 4)))
    np.testing.assert_allclose(database_side_augmentation(one, 2, 3.0), one, atol=1e-7)


def test_alpha_zero_is_the_plain_average_of_query_and_neighbours(data):
    """α = 0: every neighbour weighs 1 (negative similarities too): q' = L2(q + d_1 + ... + d_n)."""
    q, db = data
    n = 4
    top = np.argsort(-(q.astype(np.float64) @ db.T.astype(np.float64)), axis=1, kind="stable")[:, :n]
    expected = unit(q + db[top].sum(axis=1))
    np.testing.assert_allclose(alpha_query_expansion(q, db, n, 0.0), expected, atol=2e-6)


def test_negative_similarities_add_nothing_when_alpha_is_positive():
    q = unit(np.array([[1.0, 0.0]]))
    db = unit(np.array([[-1.0, 0.1], [-0.5, -1.0]]))  # both on the far side of q
    np.testing.assert_allclose(alpha_query_expansion(q, db, 2, 3.0), q, atol=1e-7)


def test_leave_one_out_aqe_leaves_the_query_out_of_its_own_neighbours(data):
    _, db = data
    got = alpha_query_expansion(db, db, 3, 3.0, exclude_self=True)
    np.testing.assert_allclose(got, reference(db, db, 3, 3.0, True), atol=2e-6)


def test_the_chunking_does_not_change_the_result(data):
    q, db = data
    """Same neighbours whatever the chunk; values to the last bits BLAS may round differently per block shape."""
    whole = alpha_query_expansion(q, db, 3, 3.0, chunk_size=1000)
    np.testing.assert_allclose(whole, alpha_query_expansion(q, db, 3, 3.0, memory_budget=4096), atol=1e-6)


def test_defaults_and_argument_checks(data):
    q, db = data
    assert (DEFAULT_N, DEFAULT_ALPHA) == (2, 3.0)
    np.testing.assert_allclose(alpha_query_expansion(q, db), reference(q, db, 2, 3.0, False), atol=2e-6)
    for bad in (dict(n=0), dict(n=1.5), dict(alpha=-1.0), dict(alpha=float("nan"))):
        with pytest.raises(ValueError):
            alpha_query_expansion(q, db, **{"n": 2, "alpha": 3.0, **bad})
    with pytest.raises(ValueError, match="8-d"):
        alpha_query_expansion(q, db[:, :4])
    assert parse_methods("dba, AQE") == ("aqe", "dba")
    with pytest.raises(ValueError):
        parse_methods("aqe,diffusion")


def test_the_memory_budget_default_is_the_knn_one():
    from vitrieval.metrics.knn import DEFAULT_MEMORY_BUDGET as KNN_BUDGET
    from vitrieval.rerank import DEFAULT_MEMORY_BUDGET

    assert DEFAULT_MEMORY_BUDGET == KNN_BUDGET
