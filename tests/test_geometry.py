"""Exact tests of the geometry engine (memgeo.geometry, memgeo.simcap).

Exact closed forms per T where they exist (points, simplices, segments/balls, nested polygons);
Monte Carlo means checked with a tolerance computed from the sample itself (4 standard errors);
the batched solver against the cvxopt oracle on the same T; center removal on planted structure;
simulated capacity against Cover's count and the mean-field capacity.
"""
import math

import numpy as np
import pytest
import torch

from memgeo import geometry as g
from memgeo import simcap


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    # small batched ops: on a shared 2-core machine intra-op threads thrash; restore afterwards
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _mc_tol(F, k=4.0):
    """k standard errors of 1/mean(F), relative."""
    F = np.asarray(F)
    return k * F.std(ddof=1) / math.sqrt(F.size) / F.mean()


def _ring(m, R, phase=0.0):
    th = phase + 2 * np.pi * np.arange(m) / m
    return np.vstack([R * np.cos(th), R * np.sin(th), np.ones(m)])


# ------------------------------------------------------------------------------------------------
# closed forms
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kappa,expected",
                         [(0.0, 2.0), (0.5, 0.9612), (1.0, 0.5196), (2.0, 0.2002)])
def test_alpha_points_closed_form(kappa, expected):
    assert g.alpha_points(kappa) == pytest.approx(expected, abs=5e-5)


BALL_TABLE = {
    1: [1.7748, 1.2576, 1.0000, 0.8300, 0.6961],
    2: [1.6544, 0.9499, 0.6667, 0.5136, 0.4174],
    5: [1.4502, 0.5765, 0.3333, 0.2344, 0.1883],
    10: [1.2616, 0.3600, 0.1818, 0.1216, 0.0980],
    50: [0.7438, 0.0926, 0.0392, 0.0249, 0.0201],
}


@pytest.mark.parametrize("D", sorted(BALL_TABLE))
def test_alpha_ball_table_and_duality(D):
    for R, ref in zip([0.1, 0.5, 1.0, 2.0, 10.0], BALL_TABLE[D]):
        assert g.alpha_ball(R, D) == pytest.approx(ref, abs=6e-5)
    assert g.alpha_ball(1.0, D) == pytest.approx(2.0 / (D + 1), rel=1e-9)
    for R in (0.3, 2.5):
        assert 1 / g.alpha_ball(R, D) + 1 / g.alpha_ball(1 / R, D) == pytest.approx(D + 1, rel=1e-8)


def test_alpha_ball_limits():
    assert g.alpha_ball(0.0, 3, kappa=0.7) == pytest.approx(g.alpha_points(0.7), rel=1e-9)
    for R in (0.2, 1.0, 5.0):
        assert g.alpha_segment(R) == pytest.approx(g.alpha_ball(R, 1), rel=1e-8)


def test_cover_fraction():
    assert g.cover_fraction(10, 5) == pytest.approx(0.5)
    assert g.cover_fraction(40, 20) == pytest.approx(0.5)
    assert g.cover_fraction(5, 5) == 1.0
    assert g.cover_fraction(3, 1) == pytest.approx(0.25)


# ------------------------------------------------------------------------------------------------
# per-T exactness of the batched solver
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kappa", [0.0, 0.5, 1.0, 2.0])
def test_points_per_t_and_capacity(kappa):
    S = np.array([[0.0], [1.0]])
    T = np.random.default_rng(0).standard_normal((20000, 2))
    r = g.solve_f(S, T, kappa)
    np.testing.assert_allclose(r.F, np.maximum(kappa - T[:, 1], 0.0) ** 2, atol=1e-12, rtol=1e-12)
    assert r.kkt.max() <= 1e-9
    alpha = 1 / r.F.mean()
    assert abs(alpha / g.alpha_points(kappa) - 1) < _mc_tol(r.F)
    assert _mc_tol(r.F, k=1.0) < 0.02   # standard error ~1-2 % at n_t = 20000 (F heavy-tailed)


@pytest.mark.parametrize("m", [2, 3, 10, 50])
@pytest.mark.parametrize("kappa", [0.0, 0.7])
def test_simplex_per_t_exact(m, kappa):
    S = g.simplex_points(m)
    G = S.T @ S
    np.testing.assert_allclose(G, m * np.eye(m), atol=1e-10)      # orthogonal, ||s||^2 = m
    T = np.random.default_rng(m).standard_normal((3000, m))
    r = g.solve_f(S, T, kappa)
    np.testing.assert_allclose(r.F, g.f_simplex(T, m, kappa), atol=1e-9, rtol=1e-10)
    assert r.kkt.max() <= 1e-9
    if kappa == 0:
        # E F = m/2 exactly: capacity 2/m
        assert abs((1 / r.F.mean()) / (2 / m) - 1) < _mc_tol(r.F)


@pytest.mark.parametrize("R", [0.3, 1.0, 4.0])
def test_segment_per_t_exact_and_capacity(R):
    S = np.array([[R, -R], [1.0, 1.0]])
    T = np.random.default_rng(1).standard_normal((20000, 2))
    res = g.capacity_from_points(S, T=T, return_per_t=True)
    F = res["per_t"][0].F
    np.testing.assert_allclose(F, g.f_ball(T, R), atol=1e-9, rtol=1e-9)
    assert abs(res["capacity"][0] / g.alpha_segment(R) - 1) < _mc_tol(F)


def test_segment_anchors_radius():
    # segment anchors: end points in the touching regime, mixtures in the embedded one
    R = 2.0
    S = np.array([[R, -R], [1.0, 1.0]])
    res = g.capacity_from_points(S, n_t=5000, seed=3, return_per_t=True, estimator="textbook")
    a = res["per_t"][0].anchors
    np.testing.assert_allclose(a[:, 1], 1.0)
    assert np.all(np.abs(a[:, 0]) <= R + 1e-9)
    assert 0 < res["radius"][0] <= R + 1e-12
    # D = 1: s_hat = +-1 for every anchor, so the textbook dimension is mean t^2 exactly
    T = res["per_t"][0].T
    assert res["dimension"][0] == pytest.approx(np.mean(T[:, 0] ** 2), rel=1e-9)


@pytest.mark.parametrize("R", [0.5, 2.0])
def test_nested_polygons_below_disk(R):
    """Polygons inscribed in a disk: F_poly(T) <= F_disk(T) per T; nested polygons are ordered
    per T, and the capacity approaches the disk's."""
    T = np.random.default_rng(5).standard_normal((4000, 3))
    Fd = g.f_ball(T, R)
    prev = None
    means = []
    for m in (3, 6, 12, 24, 48, 96):
        F = g.solve_f(_ring(m, R), T).F
        assert np.all(F <= Fd + 1e-9)
        if prev is not None:
            assert np.all(prev <= F + 1e-9)          # 3 < 6 < 12 ... share vertices
        prev = F
        means.append(F.mean())
    assert np.all(np.diff(means) > 0)
    assert means[-1] / Fd.mean() > 0.995
    assert (1 / means[-1]) >= 1 / Fd.mean()
    # two-sided per T: the polygon contains its incircle (radius R cos(pi/m))
    for m in (5, 64, 1024):
        F = g.solve_f(_ring(m, R, phase=0.3), T).F
        assert np.all(F <= Fd + 1e-9)
        assert np.all(F >= g.f_ball(T, R * np.cos(np.pi / m)) - 1e-9)


def _cloud(rng, M, D, R=1.0):
    x = rng.standard_normal((D, M))
    x -= x.mean(axis=1, keepdims=True)
    x *= R / np.sqrt((x ** 2).sum(0).mean())
    return np.vstack([x, np.ones((1, M))])


@pytest.mark.parametrize("kappa", [0.0, 0.5, 2.0])
def test_batched_vs_cvxopt(kappa):
    rng = np.random.default_rng(11)
    S_list = [
        _cloud(rng, 20, 20, 1.5),                           # full rank
        _cloud(rng, 12, 3, 0.8),                             # M > D + 1: rank-deficient G
        np.hstack([_cloud(rng, 6, 6, 2.0)] * 2),             # exact duplicate points
        np.array([[0.0], [1.0]]),                            # a single point (M = 1)
        _ring(7, 1.3),
    ]
    T_list = [rng.standard_normal((60, s.shape[0])) for s in S_list]
    fast = g.solve_f(S_list, T_list, kappa)
    for s, t, r in zip(S_list, T_list, fast):
        o = g.solve_f_cvxopt(s, t, kappa)
        np.testing.assert_allclose(r.F, o.F, atol=1e-8, rtol=1e-8)
        np.testing.assert_allclose(r.V, o.V, atol=1e-6)
        assert r.kkt.max() <= 1e-9
        assert o.kkt.max() <= 1e-6


def test_solver_stages_and_kkt():
    rng = np.random.default_rng(2)
    S = _cloud(rng, 15, 4, 1.0)                              # degenerate: 15 points in 5 dims
    T = rng.standard_normal((300, S.shape[0]))
    ref = g.solve_f_cvxopt(S, T, 0.3)
    for kw in ({}, {"max_iter": 2, "check_every": 1}):      # second: forces the active-set polish
        r = g.solve_f(S, T, 0.3, **kw)
        np.testing.assert_allclose(r.F, ref.F, atol=1e-8)
        assert r.kkt.max() <= 1e-9
    assert np.any(r.stage >= 2)
    V, lam = g.solve_f_nnls(S, T, 0.3)                       # the exact fallback on its own
    np.testing.assert_allclose(np.sum((V - T) ** 2, 1), ref.F, atol=1e-8)
    assert g.kkt_residual(S, T, V, lam, 0.3).max() <= 1e-9
    # the KKT check does catch a wrong solution
    assert g.kkt_residual(S, T, V * 1.01, lam, 0.3).max() > 1e-4
    assert g.kkt_residual(S, T, V, lam * 1.01, 0.3).max() > 1e-4


@pytest.mark.parametrize("kappa", [0.0, 0.7])
def test_mixed_precision_stage_is_verified(kappa):
    # the CPU iterative stage runs in float32 with float64 refinement; its T must still pass
    # the float64 KKT check (tol 1e-12) and agree with cvxopt, padding included
    rng = np.random.default_rng(5)
    ms = [rng.standard_normal((M, 500)) for M in (20, 15, 18, 20)]   # near-simplices: stage 1
    S_list = list(g.preprocess(ms, center_removal=False).S)
    T_list = [rng.standard_normal((80, s.shape[0])) for s in S_list]
    fast = g.solve_f(S_list, T_list, kappa)
    for s, t, r in zip(S_list, T_list, fast):
        assert np.all(r.stage == 1)
        assert r.kkt.max() <= 1e-12
        np.testing.assert_allclose(r.kkt, g.kkt_residual(s, t, r.V, r.lam, kappa), atol=1e-13)
        o = g.solve_f_cvxopt(s, t, kappa)
        np.testing.assert_allclose(r.F, o.F, atol=1e-8, rtol=1e-8)


# ------------------------------------------------------------------------------------------------
# full analysis
# ------------------------------------------------------------------------------------------------
def _gauss_manifolds(P, M, N, seed=0, center_scale=1.0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((M, N)) + center_scale * rng.standard_normal(N) for _ in range(P)]


@pytest.mark.parametrize("kappa", [0.0, 1.0])
def test_analyze_single_points_give_alpha0(kappa):
    rng = np.random.default_rng(4)
    pts = [rng.standard_normal((1, 60)) for _ in range(40)]
    res = g.analyze(pts, kappa=kappa, n_t=500, seed=1, return_per_t=True)
    F = np.concatenate([p.F for p in res.per_t])
    assert abs(res.capacity / g.alpha_points(kappa) - 1) < _mc_tol(F)
    np.testing.assert_array_equal(res.per_manifold.radius, 0.0)
    np.testing.assert_array_equal(res.per_manifold.dimension, 0.0)
    assert list(res.per_manifold.D) == [1] * 40


def test_analyze_gaussian_clouds_near_simplex():
    # M i.i.d. Gaussian points in N >> M dims are close to a regular simplex: alpha ~ 2/M
    # (the points sit at radius ~ sqrt((M-1) P/(P-1)) around centers of unit norm)
    ms = _gauss_manifolds(30, 20, 2000, seed=0, center_scale=0.0)
    res = g.analyze(ms, n_t=200, seed=0)
    assert res.capacity == pytest.approx(2 / 20, rel=0.06)
    d = res.as_dict()
    assert set(d) >= {"capacity", "radius", "dimension", "center_correlation", "K"}
    assert isinstance(d["K"], int) and d["P"] == 30
    assert res.per_manifold.capacity.shape == (30,)
    assert 1 / np.mean(1 / res.per_manifold.capacity) == pytest.approx(res.capacity)
    assert res.radius == pytest.approx(res.per_manifold.radius.mean())
    assert res.dimension == pytest.approx(res.per_manifold.dimension.mean())


@pytest.mark.parametrize("kappa", [0.0, 0.5])
def test_analyze_batched_matches_cvxopt_oracle(kappa):
    ms = _gauss_manifolds(4, 12, 300, seed=3) + [np.random.default_rng(9).standard_normal((1, 300))]
    a = g.analyze(ms, kappa=kappa, n_t=40, seed=2, return_per_t=True)
    b = g.analyze(ms, kappa=kappa, n_t=40, seed=2, return_per_t=True, solver="cvxopt")
    for pa, pb in zip(a.per_t, b.per_t):
        np.testing.assert_array_equal(pa.T, pb.T)
        np.testing.assert_allclose(pa.F, pb.F, atol=1e-8, rtol=1e-8)
        np.testing.assert_allclose(pa.anchors, pb.anchors, atol=1e-5)
    assert a.capacity == pytest.approx(b.capacity, rel=1e-8)
    assert a.radius == pytest.approx(b.radius, rel=1e-5)
    assert a.dimension == pytest.approx(b.dimension, rel=1e-5)
    assert a.K == b.K and a.center_correlation == b.center_correlation


def test_gram_and_qr_bases_are_rotations():
    ms = _gauss_manifolds(5, 15, 200, seed=6)
    pg = g.preprocess(ms, basis="gram", seed=0)
    pq = g.preprocess(ms, basis="qr", seed=0)
    T = np.random.default_rng(0).standard_normal((200, 16))
    for Sg, Sq in zip(pg.S, pq.S):
        np.testing.assert_allclose(Sg.T @ Sg, Sq.T @ Sq, atol=1e-9)      # same geometry
        # F is invariant under the rotation W that maps one basis to the other
        W = np.linalg.lstsq(Sq[:-1].T, Sg[:-1].T, rcond=None)[0].T        # Sg_D = W Sq_D
        U, _, Vt = np.linalg.svd(W)
        W = U @ Vt
        Tq = T.copy()
        Tq[:, :-1] = T[:, :-1] @ W                                        # t_q = W^T t_g
        np.testing.assert_allclose(g.solve_f(Sg, T).F, g.solve_f(Sq, Tq).F, atol=1e-8)


def test_gram_coordinates_cholesky_and_eigen_paths(monkeypatch):
    rng = np.random.default_rng(11)
    eig_calls = []
    real = g._gram_eigen_coordinates
    monkeypatch.setattr(g, "_gram_eigen_coordinates",
                        lambda G, D: eig_calls.append(len(G)) or real(G, D))

    def centered_gram(Z):
        Zc = Z - Z.mean(0)
        return Zc @ Zc.T

    generic = [centered_gram(rng.standard_normal((12, 40))) for _ in range(3)]
    dup = rng.standard_normal((12, 40))
    dup[5] = dup[2]                                          # a duplicate point: B is singular
    flat = rng.standard_normal((12, 3)) @ rng.standard_normal((3, 40))     # 3-dim points
    G = np.stack(generic + [centered_gram(dup), centered_gram(flat)])
    S = g._gram_coordinates(G, 12)
    assert eig_calls == [2]                                  # only the two singular ones
    for Sk, Gk in zip(S, G):
        np.testing.assert_allclose(Sk.T @ Sk, Gk, atol=1e-12 * np.abs(Gk).max())
    assert np.all(S[:3, -1] == 0.0)                          # the null direction 1
    assert np.linalg.matrix_rank(S[4]) == 3
    # continuous in the data (no pivoting): a tiny change moves the coordinates a little
    S2 = g._gram_coordinates(G[:3] * (1 + 1e-9) + 1e-12 * np.eye(12)[None] - 1e-12 / 12, 12)
    np.testing.assert_allclose(S2, S[:3], atol=1e-7)
    # fewer features than points: D = N coordinates from the eigendecomposition
    Z = rng.standard_normal((12, 5))
    Sn = g._gram_coordinates(centered_gram(Z)[None], 5)[0]
    assert Sn.shape == (5, 12)
    np.testing.assert_allclose(Sn.T @ Sn, centered_gram(Z), atol=1e-12)


def test_estimators_public_and_textbook():
    S = g.simplex_points(6)
    pub = g.capacity_from_points(S, n_t=4000, seed=0)
    txt = g.capacity_from_points(S, n_t=4000, seed=0, estimator="textbook")
    assert pub["capacity"][0] == txt["capacity"][0]
    # symmetric manifold: the mean anchor is ~0, so the two radii nearly agree
    assert pub["radius"][0] == pytest.approx(txt["radius"][0], rel=0.03)
    assert 0 < pub["dimension"][0] <= 5 and 0 < txt["dimension"][0] <= 5
    with pytest.raises(ValueError, match="estimator"):
        g.capacity_from_points(S, estimator="bogus")


def test_deterministic_given_seed():
    ms = _gauss_manifolds(6, 10, 100, seed=1)
    a = g.analyze(ms, n_t=50, seed=7)
    b = g.analyze([torch.from_numpy(m) for m in ms], n_t=50, seed=7)
    assert a.as_dict() == b.as_dict()
    for f in ("capacity", "radius", "dimension"):
        np.testing.assert_array_equal(getattr(a.per_manifold, f), getattr(b.per_manifold, f))
    c = g.analyze(ms, n_t=50, seed=8)
    assert c.capacity != a.capacity


def test_mixed_sizes_float32_and_duplicates():
    rng = np.random.default_rng(2)
    ms = [rng.standard_normal((M, 80)).astype(np.float32) + rng.standard_normal(80)
          for M in (1, 5, 30, 12)]
    res = g.analyze(ms, n_t=64, seed=0)
    assert np.all(np.isfinite(res.per_manifold.capacity))
    assert list(res.per_manifold.n_points) == [1, 5, 30, 12]
    # duplicated points: same convex hull, same center -> the same per-T problem
    X = ms[2].astype(np.float64)
    dup = ms[:2] + [np.vstack([X, X[:7]])] + ms[3:]
    rd = g.preprocess(dup, seed=0, center_removal=False)
    assert rd.n_unique[2] == 30 and rd.n_points[2] == 37
    S = rd.S[2]
    T = rng.standard_normal((100, S.shape[0]))
    np.testing.assert_allclose(g.solve_f(S, T).F,
                               g.solve_f(np.hstack([S, S[:, :7]]), T).F, atol=1e-9)


# ------------------------------------------------------------------------------------------------
# center correlation and low-rank removal
# ------------------------------------------------------------------------------------------------
def _planted(P, K0, N=400, M=8, seed=0, amp=1.0):
    rng = np.random.default_rng(seed)
    U = rng.standard_normal((K0, N))
    A = rng.standard_normal((P, K0))
    centers = amp * A @ U + 0.5 * rng.standard_normal((P, N))
    return [c + 0.3 * rng.standard_normal((M, N)) for c in centers]


@pytest.mark.parametrize("P,K0", [(10, 1), (10, 2), (20, 3), (5, 1)])
def test_center_removal_finds_planted_rank(P, K0):
    ms = _planted(P, K0, seed=P + K0)
    res = g.analyze(ms, n_t=20, seed=0)
    assert res.K == K0
    assert res.residual_correlation < 0.6 * res.center_correlation
    # the removed subspace is (nearly) the planted one: residual centers lose little
    assert res.diagnostics["residual_by_K"][K0 - 1] == pytest.approx(res.residual_correlation)


def test_center_removal_small_P():
    r2 = g.analyze(_planted(2, 1, seed=1), n_t=20)
    assert r2.K == 0 and r2.center_correlation == pytest.approx(1.0)   # two centers: c, -c
    r3 = g.analyze(_planted(3, 1, seed=1), n_t=20)
    assert r3.K == 1 and r3.residual_correlation == pytest.approx(1.0)  # 1-D residual
    r3b = g.analyze(_planted(3, 1, seed=1), n_t=20, min_rank=0)
    assert r3b.K == 0
    r5 = g.analyze(_planted(5, 1, seed=2), n_t=20)
    assert r5.K >= 1 and np.isfinite(r5.capacity)


def test_center_correlation_floor_random_centers():
    rng = np.random.default_rng(0)
    for P, floor in ((10, 1 / 9), (100, 1 / 99)):
        rho = g.center_correlation(rng.standard_normal((P, 20000)))
        assert rho == pytest.approx(floor, rel=0.15)


def test_stiefel_gradient():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((7, 6))
    V = g._qr_retract(rng.standard_normal((1, 6, 2)))
    XXt = X @ X.T
    f, G = g._corr_cost_grad(V, X, XXt, np.diag(XXt).copy())
    E = rng.standard_normal(V.shape)
    h = 1e-6
    fp = g._corr_cost_grad(V + h * E, X, XXt, np.diag(XXt).copy())[0]
    fm = g._corr_cost_grad(V - h * E, X, XXt, np.diag(XXt).copy())[0]
    assert (fp - fm)[0] / (2 * h) == pytest.approx(np.sum(G * E), rel=1e-6)


def test_low_rank_cost_equals_direct_formula():
    # the centre search evaluates cost and gradient without forming C = XX^T - (XV)(XV)^T
    rng = np.random.default_rng(1)
    X = rng.standard_normal((30, 29)) + 2.0 * rng.standard_normal((30, 1))   # correlated centers
    XXt = X @ X.T
    for K in (1, 3):
        V = g._qr_retract(rng.standard_normal((4, 29, K)))
        f0, G0 = g._corr_cost_grad(V, X, XXt, np.diag(XXt).copy())
        f1, G1, canc = g._corr_cost_grad_lr(np.ascontiguousarray(V.transpose(0, 2, 1)), X,
                                            np.ascontiguousarray(X.T), XXt, XXt * XXt,
                                            np.diag(XXt).copy())
        np.testing.assert_allclose(f1, f0, rtol=1e-12)
        np.testing.assert_allclose(G1.transpose(0, 2, 1), G0, rtol=1e-10,
                                   atol=1e-12 * abs(G0).max())
        assert np.all((canc >= 1.0) & (canc < 1e6))
    # Cholesky-QR retraction = Householder QR with positive R diagonal
    Vt = np.ascontiguousarray(V.transpose(0, 2, 1))
    xi = rng.standard_normal(Vt.shape)
    xi -= np.matmul(np.matmul(xi, V), Vt)                                     # tangent: xi V = 0
    for t in (0.1, 10.0, 1e5):
        Y = Vt - t * xi
        np.testing.assert_allclose(g._retract_t(Y, t * np.sqrt((xi ** 2).sum((1, 2)))),
                                   g._qr_retract(Y.transpose(0, 2, 1)).transpose(0, 2, 1),
                                   atol=1e-12)


@pytest.fixture(params=["compiled", "numpy"])
def search_path(request, monkeypatch):
    """Runs a test with the numba-compiled center search and with its numpy twin."""
    if request.param == "compiled":
        from memgeo import _jit
        assert _jit.available(), "numba is in requirements.txt"
    monkeypatch.setattr(g, "_JIT", request.param == "compiled")
    return request.param


def test_centre_search_reaches_gradient_tolerance(search_path):
    # every start of the fast minimiser ends at |Riemannian gradient| <= gtol, measured with
    # the direct (b, P, P) formula; its returned costs are the direct costs
    ms = _planted(20, 2, seed=4)
    C = np.stack([m.mean(0) for m in ms])
    X, _, _ = g._centers_basis(C - C.mean(0))
    rng = np.random.default_rng(0)
    for K in (1, 3):
        V0 = g._qr_retract(rng.standard_normal((6, X.shape[1], K)))
        V, f = g._stiefel_minimize(V0, X, max_iter=2000, gtol=1e-6)
        np.testing.assert_allclose(np.matmul(V.transpose(0, 2, 1), V),
                                   np.broadcast_to(np.eye(K), (6, K, K)), atol=1e-12)
        XXt = X @ X.T
        f0, G0 = g._corr_cost_grad(V, X, XXt, np.diag(XXt).copy())
        rg = G0 - np.matmul(V, np.matmul(V.transpose(0, 2, 1), G0))
        assert np.sqrt((rg ** 2).sum(axis=(1, 2))).max() <= 1e-6
        np.testing.assert_allclose(f, f0, rtol=1e-12)


def test_compiled_search_matches_numpy_twin(monkeypatch):
    # same algorithm, same starts: on a problem with a well-defined minimum both paths end at
    # the same cost and subspace, and the compiled cost/gradient equals the numpy one
    from memgeo import _jit as jit
    ms = _planted(30, 3, seed=2)
    C = np.stack([m.mean(0) for m in ms])
    X, _, _ = g._centers_basis(C - C.mean(0))
    rng = np.random.default_rng(5)
    XT, G = np.ascontiguousarray(X.T), X @ X.T
    for K in (1, 2, 3, 5):
        V0 = g._qr_retract(rng.standard_normal((5, X.shape[1], K)))
        Vt0 = np.ascontiguousarray(V0.transpose(0, 2, 1))
        f_np, G_np, _ = g._corr_cost_grad_lr(Vt0, X, XT, G, G * G, np.diag(G).copy())
        f_j, G_j = np.empty(5), np.empty_like(Vt0)
        jit._cost_grad_lr(Vt0, np.arange(5), X, XT, 2 * X, G, G * G, np.diag(G).copy(), f_j, G_j,
                          1e6)
        np.testing.assert_allclose(f_j, f_np, rtol=1e-12)
        np.testing.assert_allclose(G_j, G_np, rtol=1e-10, atol=1e-12 * abs(G_np).max())
        # the direct formula (used under cancellation) gives the same numbers
        jit._cost_grad_lr(Vt0, np.arange(5), X, XT, 2 * X, G, G * G, np.diag(G).copy(), f_j, G_j,
                          0.0)
        np.testing.assert_allclose(f_j, f_np, rtol=1e-10)
        np.testing.assert_allclose(G_j, G_np, rtol=1e-8, atol=1e-10 * abs(G_np).max())
        if K > 3:      # above the planted rank the landscape is flat: neither path converges
            continue
        out = {}
        for path in (True, False):
            monkeypatch.setattr(g, "_JIT", path)
            out[path] = g._stiefel_minimize(V0, X, max_iter=2000, gtol=1e-9)
        (V1, f1), (V2, f2) = out[True], out[False]
        np.testing.assert_allclose(f1, f2, rtol=1e-9)
        if K == 3:                                   # the planted rank: a unique subspace
            for a, b in zip(V1, V2):
                np.testing.assert_allclose(a @ a.T, b @ b.T, atol=1e-6)


def test_compiled_fista_update_matches_numpy():
    # the fused float32 update against the numpy passes it replaces (_fista_mixed_chunk)
    from memgeo import _jit as jit
    rng = np.random.default_rng(9)
    sh = (3, 40, 7)
    u, y, d, r32 = (rng.standard_normal(sh).astype(np.float32) for _ in range(4))
    lo = -np.abs(rng.standard_normal(sh)).astype(np.float32)
    t = (1 + 3 * rng.random(sh[:2])).astype(np.float32)
    beta_c = np.array([[0.5], [0.9], [1.0]], np.float32)
    # numpy reference (the loop body of _fista_mixed_chunk)
    un, yn, dnn = u + r32, y.copy(), np.empty_like(u)
    np.maximum(un + yn, lo, out=dnn)
    yn = dnn - d
    rs = np.vecdot(un, yn) < 0
    tn = 0.5 * (1.0 + np.sqrt(1.0 + 4.0 * t * t))
    beta = np.minimum((t - 1.0) / tn, beta_c)
    beta[rs], tn[rs] = 0.0, 1.0
    yn = yn * beta[..., None] + dnn
    dn = np.empty_like(u)
    jit.fista_update(u, y, d, dn, r32, lo, t, beta_c)
    assert rs.any() and (~rs).any()
    np.testing.assert_array_equal(dn, dnn)
    np.testing.assert_allclose(y, yn, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(t, tn.astype(np.float32))


def test_solver_with_and_without_compiled_kernels(monkeypatch):
    ms = _gauss_manifolds(6, 12, 80, seed=2)
    pre = g.preprocess(ms, seed=0)
    T = g.sample_t([s.shape[0] for s in pre.S], 300, 0)
    out = {}
    for jit in (True, False):
        monkeypatch.setattr(g, "_JIT", jit)
        out[jit] = g.solve_f(list(pre.S), T)
    for a, b in zip(out[True], out[False]):
        np.testing.assert_allclose(a.F, b.F, rtol=1e-12, atol=1e-14)
        assert a.kkt.max() <= 1e-12 and b.kkt.max() <= 1e-12


def test_analyze_without_numba_gives_the_same_geometry(monkeypatch):
    # the numpy twins (used when numba is missing) against the compiled kernels, end to end, on
    # planted centers (a well-defined center subspace). The two searches stop at gradient norm
    # 1e-6 at slightly different points: agreement to ~1e-6, not to rounding
    ms = _planted(12, 2, seed=7)
    ref = g.analyze(ms, n_t=80, seed=2, return_per_t=True)
    monkeypatch.setattr(g, "_JIT", False)
    r = g.analyze(ms, n_t=80, seed=2, return_per_t=True)
    assert r.K == ref.K == 2
    for key, val in ref.as_dict().items():
        assert r.as_dict()[key] == pytest.approx(val, rel=5e-6, abs=1e-12), key
    for a, b in zip(r.per_t, ref.per_t):
        np.testing.assert_allclose(a.F, b.F, rtol=1e-5, atol=1e-6)


def test_compiled_retraction_equals_householder():
    from memgeo import _jit as jit
    rng = np.random.default_rng(8)
    for K in (1, 3):
        V = g._qr_retract(rng.standard_normal((4, 12, K)))
        Vt = np.ascontiguousarray(V.transpose(0, 2, 1))
        xi = rng.standard_normal(Vt.shape)
        xi -= np.matmul(np.matmul(xi, V), Vt)
        for t in (0.1, 10.0, 1e5):                   # one pass, two passes, Householder
            Y = Vt - t * xi
            out = np.empty_like(Y)
            jit._retract(Y, np.arange(4), t * np.sqrt((xi ** 2).sum((1, 2))), out)
            np.testing.assert_allclose(
                out, g._qr_retract(Y.transpose(0, 2, 1)).transpose(0, 2, 1), atol=1e-12)


def test_results_do_not_depend_on_the_thread_count():
    # the per-manifold work is split over threads. The point sets are bitwise the same; the
    # solver batches (and pads) the T of several manifolds together, so a batch of another
    # composition can round differently in the last bit, never more
    same = [np.random.default_rng(i).standard_normal((10, 60)) + 0.3 * i for i in range(6)]
    mixed = [np.random.default_rng(i).standard_normal((8 + i % 5, 60)) + 0.3 * i
             for i in range(9)]
    rtol = 1e-13
    for ms in (same, mixed):
        ref = g.analyze(ms, n_t=40, seed=3, num_threads=1, return_per_t=True)
        for n in (2, 3, 9, 16):
            r = g.analyze(ms, n_t=40, seed=3, num_threads=n, return_per_t=True)
            for key, val in ref.as_dict().items():
                assert r.as_dict()[key] == pytest.approx(val, rel=rtol, abs=1e-15), (n, key)
            for a, b in zip(r.per_t, ref.per_t):
                np.testing.assert_allclose(a.F, b.F, rtol=rtol, atol=1e-14)
                np.testing.assert_allclose(a.anchors, b.anchors, rtol=rtol, atol=1e-14)
            for a, b in zip(g.preprocess(ms, seed=3, num_workers=n).S,
                            g.preprocess(ms, seed=3, num_workers=1).S):
                assert np.array_equal(a, b)
    with pytest.raises(ValueError, match="num_workers must be >= 1"):
        g.preprocess(ms, num_workers=0)


def test_analyze_restores_torch_and_blas_threads():
    # the thread pool limits BLAS and torch to one thread per worker; afterwards both are back
    # (torch's count is OpenMP's: a wrong restore order used to leave torch at 1 thread)
    from threadpoolctl import threadpool_info
    ms = _gauss_manifolds(4, 6, 30, seed=3)
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        g.analyze(ms, n_t=10)                          # loads every BLAS the kernels use
        before = {i["filepath"]: i["num_threads"] for i in threadpool_info()}
        for nt in (None, 1, 2, 3):
            g.analyze(ms, n_t=10, num_threads=nt)
            assert torch.get_num_threads() == 2, nt
            assert {i["filepath"]: i["num_threads"] for i in threadpool_info()} == before, nt
    finally:
        torch.set_num_threads(old)


def test_split_groups_are_contiguous_and_balanced():
    groups = g._split(np.ones(10), 3)
    assert [x.tolist() for x in groups] == [[0, 1, 2], [3, 4, 5, 6], [7, 8, 9]]
    assert [x.tolist() for x in g._split([1.0, 1.0], 5)] == [[0], [1]]   # never an empty group
    assert [x.tolist() for x in g._split([100.0, 1, 1, 1, 1], 2)] == [[0], [1, 2, 3, 4]]
    assert [x.tolist() for x in g._split([1.0, 1, 1, 1, 100], 2)] == [[0, 1, 2, 3], [4]]
    assert [x.tolist() for x in g._split([3.0], 4)] == [[0]]


def test_centers_basis_fast_and_refined_paths():
    rng = np.random.default_rng(3)
    for scales in ([1.0] * 8, [1.0] * 6 + [1e-6, 1e-7]):   # the second needs the refined path
        C = (rng.standard_normal((9, 8)) * scales) @ np.linalg.qr(rng.standard_normal((50, 8)))[0].T
        X, lift, Xb = g._centers_basis(C)
        assert X.shape == (9, 8)
        np.testing.assert_allclose(X @ X.T, Xb @ Xb.T, atol=1e-12)
        V = g._qr_retract(rng.standard_normal((1, 8, 3)))[0]
        B = lift(V)
        np.testing.assert_allclose(B.T @ B, np.eye(3), atol=1e-12)
        A = Xb @ B                                   # = X V up to a rotation of the columns
        np.testing.assert_allclose(A @ A.T, (X @ V) @ (X @ V).T, atol=1e-10)


# ------------------------------------------------------------------------------------------------
# bad input
# ------------------------------------------------------------------------------------------------
def test_bad_inputs():
    rng = np.random.default_rng(0)
    ok = [rng.standard_normal((5, 10)) for _ in range(3)]
    bad = [m.copy() for m in ok]
    bad[1][2, 3] = np.nan
    with pytest.raises(ValueError, match="manifold 1 has 1 NaN or infinite"):
        g.analyze(bad)
    bad[1][2, 3] = np.inf
    with pytest.raises(ValueError, match="NaN or infinite"):
        g.analyze(bad)
    with pytest.raises(ValueError, match="at least 2 manifolds"):
        g.analyze(ok[:1])
    with pytest.raises(ValueError, match="feature dimension"):
        g.analyze([ok[0], rng.standard_normal((5, 11))])
    with pytest.raises(ValueError, match="shape"):
        g.analyze([ok[0], rng.standard_normal(10)])
    with pytest.raises(ValueError, match="no points"):
        g.analyze([ok[0], np.zeros((0, 10))])
    for n_t in (0, -3, 2.5):
        with pytest.raises(ValueError, match="n_t"):
            g.analyze(ok, n_t=n_t)
    for kappa in (np.nan, np.inf, "a"):
        with pytest.raises(ValueError, match="kappa"):
            g.analyze(ok, kappa=kappa)
    with pytest.raises(ValueError, match="solver"):
        g.analyze(ok, solver="magic")
    with pytest.raises(ValueError, match="seed"):
        g.analyze(ok, seed=-1)
    # a class whose center is the global mean has no center-normalised geometry
    c = [rng.standard_normal((4, 10)) for _ in range(2)]
    sym = [c[0] + 5, -(c[0] + 5), c[1] - c[1].mean(0)]
    with pytest.raises(ValueError, match="center coincides with the global mean"):
        g.analyze(sym, center_removal=False)
    with pytest.raises(ValueError, match="non-finite"):
        g.solve_f(np.array([[np.nan], [1.0]]), np.zeros((1, 2)))


def test_scale_invariance_and_extreme_magnitudes():
    ms = _gauss_manifolds(4, 6, 40, seed=5)
    ref = g.analyze(ms, n_t=60, seed=1)
    for f in (2.0 ** 400, 1e150, 1e-150, 3.7):
        r = g.analyze([m * f for m in ms], n_t=60, seed=1, num_threads=1)
        for key, val in ref.as_dict().items():
            assert r.as_dict()[key] == pytest.approx(val, rel=1e-6, abs=1e-12), (f, key)


def test_negative_kappa_is_defined():
    S = np.array([[0.0], [1.0]])
    T = np.random.default_rng(0).standard_normal((20000, 2))
    r = g.solve_f(S, T, -1.0)
    np.testing.assert_allclose(r.F, np.maximum(-1.0 - T[:, 1], 0) ** 2, atol=1e-12)
    assert abs(1 / r.F.mean() / g.alpha_points(-1.0) - 1) < _mc_tol(r.F)


# ------------------------------------------------------------------------------------------------
# random projection
# ------------------------------------------------------------------------------------------------
def test_random_projection():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((7, 9000))
    p1 = g.random_projection(9000, 300, seed=3)
    p2 = g.RandomProjection(9000, 300, seed=3, cache_bytes=0)          # streamed, not cached
    Y1, Y2 = p1(X), p2(X)
    assert Y1.shape == (7, 300)
    np.testing.assert_allclose(Y1, Y2, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(p1(X[:3]), Y1[:3], rtol=1e-5, atol=1e-5)  # batch-independent
    W = p1.matrix()
    np.testing.assert_allclose(np.linalg.norm(W, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(Y1, X @ W.T, rtol=1e-4, atol=1e-4)
    assert not np.allclose(g.random_projection(9000, 300, seed=4)(X), Y1)
    small = rng.standard_normal((4, 50))
    assert g.random_projection(50, 300)(small) is small                  # identity
    with pytest.raises(ValueError):
        p1(rng.standard_normal((2, 10)))


# ------------------------------------------------------------------------------------------------
# simulated capacity
# ------------------------------------------------------------------------------------------------
def test_separability_against_cover():
    rng = np.random.default_rng(0)
    P, S = 20, 300
    pts = [rng.standard_normal((1, 60)) for _ in range(P)]
    for n in (7, 10, 13):
        f, _ = simcap.separable_fraction(pts, n, n_dichotomies=S, seed=n, center=False)
        p = g.cover_fraction(P, n)
        assert abs(f - p) < 4 * math.sqrt(p * (1 - p) / S) + 1e-9


def test_is_separable_certificates():
    X = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]])
    assert simcap.is_separable(X, [1, 1, -1])
    assert not simcap.is_separable(X, [1, 1, 1])          # 0 is in the convex hull
    assert not simcap.is_separable(np.zeros((2, 3)), [1, -1])


def test_simulated_capacity_points_brackets_two():
    rng = np.random.default_rng(1)
    pts = [rng.standard_normal((1, 200)) for _ in range(40)]
    r = simcap.simulated_capacity(pts, n_dichotomies=60, seed=0, center=False)
    assert r.capacity_lo <= 2.0 <= r.capacity_hi
    assert r.capacity == pytest.approx(2.0, rel=0.1)
    assert r.fraction(r.n_c + 6) > 0.5 > r.fraction(r.n_c - 6)


def _segments(P, N, R, rng):
    out = []
    for _ in range(P):
        c = rng.standard_normal(N)
        c /= np.linalg.norm(c)
        u = rng.standard_normal(N)
        u -= (u @ c) * c
        u /= np.linalg.norm(u)
        out.append(np.stack([c + R * u, c - R * u]))
    return out


def _clouds(P, N, M, D, R, rng):
    out = []
    for _ in range(P):
        c = rng.standard_normal(N)
        c /= np.linalg.norm(c)
        B = np.linalg.qr(rng.standard_normal((N, D)))[0]
        x = rng.standard_normal((M, D))
        x -= x.mean(0)
        x *= R / np.sqrt((x ** 2).sum(1).mean())
        out.append(c + x @ B.T)
    return out


@pytest.mark.parametrize("kind", ["segments", "clouds"])
def test_simulated_matches_mean_field(kind):
    rng = np.random.default_rng(1)
    ms = _segments(40, 400, 1.0, rng) if kind == "segments" else _clouds(20, 400, 5, 4, 1.0, rng)
    sim = simcap.simulated_capacity(ms, n_dichotomies=60, seed=0, center=False)
    mf = g.analyze(ms, n_t=2000, center_removal=False, seed=0, return_per_t=True)
    F = np.concatenate([p.F for p in mf.per_t])
    err_mf = _mc_tol(F, k=1.0) * mf.capacity
    z = abs(sim.capacity - mf.capacity) / math.hypot(sim.capacity_err, err_mf)
    assert z < 3.0
    if kind == "segments":                                   # and both near the exact value
        assert mf.capacity == pytest.approx(g.alpha_segment(1.0), rel=0.03)


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
        g.preprocess(ms, basis=basis)
    # two bad manifolds handled by different threads: the lower index is reported
    ms[3] = bad + 1.0
    for n in (1, 2, 4):
        with pytest.raises(ValueError, match="manifold 2: feature values too large"):
            g.preprocess(ms, basis=basis, num_workers=n)


@pytest.mark.parametrize("kappa", [0.0, 0.4])
def test_torch_solver_path_used_on_gpus_matches_the_numpy_one(monkeypatch, kappa):
    # CI has no GPU: run the torch code (stage 1 and the verification) on CPU tensors instead.
    rng = np.random.default_rng(5)
    S = [_cloud(rng, 12, 20, 1.5), _cloud(rng, 30, 40, 0.7)]
    T = [rng.standard_normal((150, s.shape[0])) for s in S]
    ref = g.solve_f(S, T, kappa)
    monkeypatch.setattr(g, "_NUMPY_ON_CPU", False)
    got = g.solve_f(S, T, kappa)
    for a, b in zip(ref, got):
        np.testing.assert_allclose(b.F, a.F, atol=1e-9)
        assert b.kkt.max() <= 1e-9
