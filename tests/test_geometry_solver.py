"""The per-T solver (memgeo.geometry.solver and its batched stages): exact per T against closed
forms, the cvxopt oracle and the scipy NNLS fallback, verified KKT residuals, every backend."""
import numpy as np
import pytest
from geometry_cases import cloud, mc_tol, one_torch_thread, ring  # noqa: F401

from memgeo.geometry.capacity import sample_t
from memgeo.geometry.preprocess import preprocess
from memgeo.geometry.solver import kkt_residual, solve_f, solve_f_cvxopt, solve_f_nnls
from memgeo.geometry.theory import alpha_points, f_ball, f_simplex, simplex_points


@pytest.mark.parametrize("kappa", [0.0, 0.5, 1.0, 2.0])
def test_points_per_t_and_capacity(kappa):
    S = np.array([[0.0], [1.0]])
    T = np.random.default_rng(0).standard_normal((20000, 2))
    r = solve_f(S, T, kappa)
    np.testing.assert_allclose(r.F, np.maximum(kappa - T[:, 1], 0.0) ** 2, atol=1e-12, rtol=1e-12)
    assert r.kkt.max() <= 1e-9
    alpha = 1 / r.F.mean()
    assert abs(alpha / alpha_points(kappa) - 1) < mc_tol(r.F)
    assert mc_tol(r.F, k=1.0) < 0.02   # standard error ~1-2 % at n_t = 20000 (F heavy-tailed)


@pytest.mark.parametrize("m", [2, 3, 10, 50])
@pytest.mark.parametrize("kappa", [0.0, 0.7])
def test_simplex_per_t_exact(m, kappa):
    S = simplex_points(m)
    T = np.random.default_rng(m).standard_normal((3000, m))
    r = solve_f(S, T, kappa)
    np.testing.assert_allclose(r.F, f_simplex(T, m, kappa), atol=1e-9, rtol=1e-10)
    assert r.kkt.max() <= 1e-9
    if kappa == 0:
        # E F = m/2 exactly: capacity 2/m
        assert abs((1 / r.F.mean()) / (2 / m) - 1) < mc_tol(r.F)


@pytest.mark.parametrize("R", [0.5, 2.0])
def test_nested_polygons_below_disk(R):
    """Polygons inscribed in a disk: F_poly(T) <= F_disk(T) per T; nested polygons are ordered
    per T, and the capacity approaches the disk's."""
    T = np.random.default_rng(5).standard_normal((4000, 3))
    Fd = f_ball(T, R)
    prev = None
    means = []
    for m in (3, 6, 12, 24, 48, 96):
        F = solve_f(ring(m, R), T).F
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
        F = solve_f(ring(m, R, phase=0.3), T).F
        assert np.all(F <= Fd + 1e-9)
        assert np.all(F >= f_ball(T, R * np.cos(np.pi / m)) - 1e-9)


@pytest.mark.parametrize("kappa", [0.0, 0.5, 2.0])
def test_batched_vs_cvxopt(kappa):
    rng = np.random.default_rng(11)
    S_list = [
        cloud(rng, 20, 20, 1.5),                            # full rank
        cloud(rng, 12, 3, 0.8),                             # M > D + 1: rank-deficient G
        np.hstack([cloud(rng, 6, 6, 2.0)] * 2),             # exact duplicate points
        np.array([[0.0], [1.0]]),                           # a single point (M = 1)
        ring(7, 1.3),
    ]
    T_list = [rng.standard_normal((60, s.shape[0])) for s in S_list]
    fast = solve_f(S_list, T_list, kappa)
    for s, t, r in zip(S_list, T_list, fast):
        o = solve_f_cvxopt(s, t, kappa)
        np.testing.assert_allclose(r.F, o.F, atol=1e-8, rtol=1e-8)
        np.testing.assert_allclose(r.V, o.V, atol=1e-6)
        assert r.kkt.max() <= 1e-9
        assert o.kkt.max() <= 1e-6


def test_solver_stages_and_kkt():
    rng = np.random.default_rng(2)
    S = cloud(rng, 15, 4, 1.0)                              # degenerate: 15 points in 5 dims
    T = rng.standard_normal((300, S.shape[0]))
    ref = solve_f_cvxopt(S, T, 0.3)
    for kw in ({}, {"max_iter": 2, "check_every": 1}):      # second: forces the active-set polish
        r = solve_f(S, T, 0.3, **kw)
        np.testing.assert_allclose(r.F, ref.F, atol=1e-8)
        assert r.kkt.max() <= 1e-9
    assert np.any(r.stage >= 2)
    V, lam = solve_f_nnls(S, T, 0.3)                         # the exact fallback on its own
    np.testing.assert_allclose(np.sum((V - T) ** 2, 1), ref.F, atol=1e-8)
    assert kkt_residual(S, T, V, lam, 0.3).max() <= 1e-9
    # the KKT check does catch a wrong solution
    assert kkt_residual(S, T, V * 1.01, lam, 0.3).max() > 1e-4
    assert kkt_residual(S, T, V, lam * 1.01, 0.3).max() > 1e-4


@pytest.mark.parametrize("kappa", [0.0, 0.7])
def test_mixed_precision_stage_is_verified(kappa):
    # the CPU iterative stage runs in float32 with float64 refinement; its T must still pass
    # the float64 KKT check (tol 1e-12) and agree with cvxopt, padding included
    rng = np.random.default_rng(5)
    ms = [rng.standard_normal((M, 500)) for M in (20, 15, 18, 20)]   # near-simplices: stage 1
    S_list = list(preprocess(ms, center_removal=False).S)
    T_list = [rng.standard_normal((80, s.shape[0])) for s in S_list]
    fast = solve_f(S_list, T_list, kappa)
    for s, t, r in zip(S_list, T_list, fast):
        assert np.all(r.stage == 1)
        assert r.kkt.max() <= 1e-12
        np.testing.assert_allclose(r.kkt, kkt_residual(s, t, r.V, r.lam, kappa), atol=1e-13)
        o = solve_f_cvxopt(s, t, kappa)
        np.testing.assert_allclose(r.F, o.F, atol=1e-8, rtol=1e-8)


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_backends_give_the_same_solutions(backend):
    # "numpy": the numpy twin of the compiled float32 update; "torch": the torch code of stage
    # 1 and the checks, which runs on GPUs (CI has none, so it runs here on CPU tensors)
    rng = np.random.default_rng(5)
    S = [cloud(rng, 12, 20, 1.5), cloud(rng, 30, 40, 0.7), cloud(rng, 15, 4, 1.0)]
    T = [rng.standard_normal((150, s.shape[0])) for s in S]
    for kappa in (0.0, 0.4):
        ref = solve_f(S, T, kappa)
        got = solve_f(S, T, kappa, backend=backend)
        for a, b in zip(ref, got):
            np.testing.assert_allclose(b.F, a.F, rtol=1e-9, atol=1e-12)
            assert b.kkt.max() <= 1e-12
    pre = preprocess([rng.standard_normal((12, 80)) + rng.standard_normal(80) for _ in range(6)])
    T = sample_t([s.shape[0] for s in pre.S], 300, 0)
    for a, b in zip(solve_f(list(pre.S), T), solve_f(list(pre.S), T, backend=backend)):
        np.testing.assert_allclose(b.F, a.F, rtol=1e-12, atol=1e-14)


def test_negative_kappa_is_defined():
    S = np.array([[0.0], [1.0]])
    T = np.random.default_rng(0).standard_normal((20000, 2))
    r = solve_f(S, T, -1.0)
    np.testing.assert_allclose(r.F, np.maximum(-1.0 - T[:, 1], 0) ** 2, atol=1e-12)
    assert abs(1 / r.F.mean() / alpha_points(-1.0) - 1) < mc_tol(r.F)


def test_duplicate_points_do_not_change_f():
    rng = np.random.default_rng(3)
    S = cloud(rng, 9, 12, 1.2)
    T = rng.standard_normal((200, S.shape[0]))
    np.testing.assert_allclose(solve_f(S, T).F, solve_f(np.hstack([S, S[:, :4]]), T).F,
                               atol=1e-9)


def test_bad_problems():
    with pytest.raises(ValueError, match="non-finite"):
        solve_f(np.array([[np.nan], [1.0]]), np.zeros((1, 2)))
    with pytest.raises(ValueError, match="both must be D\\+1"):
        solve_f(np.ones((3, 2)), np.zeros((1, 2)))
    with pytest.raises(ValueError, match="same length"):
        solve_f([np.ones((2, 1))] * 2, [np.zeros((1, 2))])
    with pytest.raises(ValueError, match="backend"):
        solve_f(np.ones((2, 1)), np.zeros((1, 2)), backend="cuda")
