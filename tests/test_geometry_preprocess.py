"""Steps 1-3 (memgeo.geometry.preprocess): coordinates from Gram matrices or QR, duplicates,
degenerate centers, extreme magnitudes."""
import numpy as np
import pytest
from geometry_cases import centered_gram, gauss_manifolds, one_torch_thread  # noqa: F401

from memgeo.geometry.preprocess import (gram_coordinates, gram_eigen_coordinates, preprocess,
                                        project_out, unique_point_indices)
from memgeo.geometry.solver import solve_f


def test_gram_and_qr_bases_are_rotations():
    ms = gauss_manifolds(5, 15, 200, seed=6)
    pg = preprocess(ms, basis="gram", seed=0)
    pq = preprocess(ms, basis="qr", seed=0)
    T = np.random.default_rng(0).standard_normal((200, 16))
    for Sg, Sq in zip(pg.S, pq.S):
        np.testing.assert_allclose(Sg.T @ Sg, Sq.T @ Sq, atol=1e-9)      # same geometry
        # F is invariant under the rotation W that maps one basis to the other
        W = np.linalg.lstsq(Sq[:-1].T, Sg[:-1].T, rcond=None)[0].T        # Sg_D = W Sq_D
        U, _, Vt = np.linalg.svd(W)
        W = U @ Vt
        Tq = T.copy()
        Tq[:, :-1] = T[:, :-1] @ W                                        # t_q = W^T t_g
        np.testing.assert_allclose(solve_f(Sg, T).F, solve_f(Sq, Tq).F, atol=1e-8)
    with pytest.raises(ValueError, match="basis"):
        preprocess(ms, basis="svd")


def test_gram_coordinates_cholesky_and_eigen_paths():
    rng = np.random.default_rng(11)
    generic = [centered_gram(rng.standard_normal((12, 40))) for _ in range(3)]
    dup = rng.standard_normal((12, 40))
    dup[5] = dup[2]                                          # a duplicate point: B is singular
    flat = rng.standard_normal((12, 3)) @ rng.standard_normal((3, 40))     # 3-dim points
    G = np.stack(generic + [centered_gram(dup), centered_gram(flat)])
    S = gram_coordinates(G, 12)
    for Sk, Gk in zip(S, G):
        np.testing.assert_allclose(Sk.T @ Sk, Gk, atol=1e-12 * np.abs(Gk).max())
    # the singular ones come from the eigendecomposition, the others from the deflated
    # Cholesky factor: S = [L^T H_(2:M); 0], so S H_(2:M)^T is upper triangular
    np.testing.assert_array_equal(S[3:], gram_eigen_coordinates(G[3:], 12))
    w = np.full(12, 1 / np.sqrt(12))
    w[0] -= 1.0
    H = np.eye(12) - 2.0 / (w @ w) * np.outer(w, w)
    for k in range(3):
        assert not np.allclose(S[k], gram_eigen_coordinates(G[k:k + 1], 12)[0], atol=1e-3)
        Lt = S[k, :11] @ H[1:].T
        np.testing.assert_allclose(np.tril(Lt, -1), 0.0, atol=1e-12 * np.abs(Lt).max())
    assert np.all(S[:3, -1] == 0.0)                          # the null direction 1
    assert np.linalg.matrix_rank(S[4]) == 3
    # continuous in the data (no pivoting): a tiny change moves the coordinates a little
    S2 = gram_coordinates(G[:3] * (1 + 1e-9) + 1e-12 * np.eye(12)[None] - 1e-12 / 12, 12)
    np.testing.assert_allclose(S2, S[:3], atol=1e-7)
    # fewer features than points: D = N coordinates from the eigendecomposition
    Z = rng.standard_normal((12, 5))
    Sn = gram_coordinates(centered_gram(Z)[None], 5)[0]
    assert Sn.shape == (5, 12)
    np.testing.assert_allclose(Sn.T @ Sn, centered_gram(Z), atol=1e-12)


def test_unique_point_indices_and_project_out():
    rng = np.random.default_rng(1)
    X = rng.standard_normal((6, 9))
    X[4] = X[1]
    X[5] = X[1] * (1 + 1e-15)                                # near, but not exactly, equal
    assert unique_point_indices(X, centered_gram(X)).tolist() == [0, 1, 2, 3, 5]
    B = np.linalg.qr(rng.standard_normal((9, 2)))[0]
    Z = project_out(X, B)
    np.testing.assert_allclose(Z @ B, 0.0, atol=1e-12)
    np.testing.assert_allclose(Z + (X @ B) @ B.T, X, atol=1e-12)
    assert project_out(X, np.zeros((9, 0))) is X


def test_float32_input_gives_the_float64_numbers_of_the_same_values():
    # float32 features are used exactly (centers and Gram products in float64): the point
    # sets equal those of the same values given in float64, and duplicates are dropped
    rng = np.random.default_rng(2)
    ms = [rng.standard_normal((M, 80)).astype(np.float32) + rng.standard_normal(80).astype(
        np.float32) for M in (1, 5, 30, 12)]
    p32 = preprocess(ms, seed=0)
    p64 = preprocess([m.astype(np.float64) for m in ms], seed=0)
    for a, b in zip(p32.S, p64.S):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(p32.center_norm, p64.center_norm)
    assert list(p32.n_points) == [1, 5, 30, 12]
    X = ms[2]
    dup = ms[:2] + [np.vstack([X, X[:7]])] + ms[3:]
    rd = preprocess(dup, seed=0, center_removal=False)
    assert rd.n_unique[2] == 30 and rd.n_points[2] == 37 and rd.D[2] == 37
    S = rd.S[2]
    T = rng.standard_normal((100, S.shape[0]))
    np.testing.assert_allclose(solve_f(S, T).F, solve_f(np.hstack([S, S[:, :7]]), T).F,
                               atol=1e-9)


@pytest.mark.parametrize("basis", ["gram", "qr"])
def test_overflowing_squared_norms_name_the_manifold(basis):
    # Points of +-1e200 cancel in the center (no rescaling triggers), so the Gram product
    # overflows; with the default basis that happens in the worker thread and must still
    # surface as the same clear error.
    rng = np.random.default_rng(0)
    ms = [rng.standard_normal((6, 20)) + 3 * i for i in range(4)]
    bad = rng.standard_normal((6, 20))
    bad[2], bad[3] = 1e200, -1e200
    ms[2] = bad
    with pytest.raises(ValueError, match="manifold 2: feature values too large"):
        preprocess(ms, basis=basis)
    # two bad manifolds handled by different threads: the lower index is reported
    ms[3] = bad + 1.0
    for n in (1, 2, 4):
        with pytest.raises(ValueError, match="manifold 2: feature values too large"):
            preprocess(ms, basis=basis, num_workers=n)


def test_preprocess_does_not_depend_on_the_thread_count():
    ms = [np.random.default_rng(i).standard_normal((8 + i % 5, 60)) + 0.3 * i for i in range(9)]
    ref = preprocess(ms, seed=3, num_workers=1)
    for n in (2, 3, 9, 16):
        for a, b in zip(preprocess(ms, seed=3, num_workers=n).S, ref.S):
            assert np.array_equal(a, b)
    with pytest.raises(ValueError, match="num_workers must be >= 1"):
        preprocess(ms, num_workers=0)
