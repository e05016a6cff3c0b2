"""Steps 4-5 on given point sets (memgeo.geometry.capacity) and the statistics of the anchors
(memgeo.geometry.statistics)."""
import numpy as np
import pytest
from geometry_cases import mc_tol, one_torch_thread  # noqa: F401

from memgeo.geometry.capacity import capacity_from_points, sample_t
from memgeo.geometry.solver import solve_f
from memgeo.geometry.statistics import harmonic_capacity, manifold_statistics
from memgeo.geometry.theory import alpha_segment, f_ball, simplex_points


@pytest.mark.parametrize("R", [0.3, 1.0, 4.0])
def test_segment_per_t_exact_and_capacity(R):
    S = np.array([[R, -R], [1.0, 1.0]])
    T = np.random.default_rng(1).standard_normal((20000, 2))
    res = capacity_from_points(S, T=T, return_per_t=True)
    F = res["per_t"][0].F
    np.testing.assert_allclose(F, f_ball(T, R), atol=1e-9, rtol=1e-9)
    assert abs(res["capacity"][0] / alpha_segment(R) - 1) < mc_tol(F)


def test_segment_anchors_radius():
    # segment anchors: end points in the touching regime, mixtures in the embedded one
    R = 2.0
    S = np.array([[R, -R], [1.0, 1.0]])
    res = capacity_from_points(S, n_t=5000, seed=3, return_per_t=True, estimator="textbook")
    a = res["per_t"][0].anchors
    np.testing.assert_allclose(a[:, 1], 1.0)
    assert np.all(np.abs(a[:, 0]) <= R + 1e-9)
    assert 0 < res["radius"][0] <= R + 1e-12
    # D = 1: s_hat = +-1 for every anchor, so the textbook dimension is mean t^2 exactly
    T = res["per_t"][0].T
    assert res["dimension"][0] == pytest.approx(np.mean(T[:, 0] ** 2), rel=1e-9)


def test_estimators_public_and_textbook():
    S = simplex_points(6)
    pub = capacity_from_points(S, n_t=4000, seed=0)
    txt = capacity_from_points(S, n_t=4000, seed=0, estimator="textbook")
    assert pub["capacity"][0] == txt["capacity"][0]
    # symmetric manifold: the mean anchor is ~0, so the two radii nearly agree
    assert pub["radius"][0] == pytest.approx(txt["radius"][0], rel=0.03)
    assert 0 < pub["dimension"][0] <= 5 and 0 < txt["dimension"][0] <= 5
    with pytest.raises(ValueError, match="estimator"):
        capacity_from_points(S, estimator="bogus")
    with pytest.raises(ValueError, match="solver"):
        capacity_from_points(S, solver="magic")


def test_manifold_statistics_by_hand():
    # a segment of half-length 1 and one T per regime: embedded (V* = 0, the anchor is -T
    # scaled to center coordinate 1), interior (the point with the smallest T.s), touching (an
    # end point); F and the estimators then follow from the anchors by their formulas
    S = np.array([[1.0, -1.0], [1.0, 1.0]])
    T = np.array([[0.5, -3.0], [-0.5, -3.0], [0.3, 2.0], [2.0, 0.5]])
    V = solve_f(S, T).V
    st = manifold_statistics(S, T, V)
    np.testing.assert_allclose(st["anchors"], [[-1 / 6, 1], [1 / 6, 1], [-1, 1], [-1, 1]],
                               atol=1e-12)
    np.testing.assert_array_equal(st["interior"], [False, False, True, False])
    np.testing.assert_allclose(st["F"], f_ball(T, 1.0), atol=1e-12)
    assert st["capacity"] == pytest.approx(1 / f_ball(T, 1.0).mean(), rel=1e-12)
    s = st["anchors"][:, 0]
    assert st["radius"] == pytest.approx(np.sqrt(np.mean((s - s.mean()) ** 2)), rel=1e-12)
    cos = T[:, 0] * s / (np.abs(T[:, 0]) * np.sqrt(s * s + 1e-12))
    assert st["dimension"] == pytest.approx(np.mean(cos) ** 2, rel=1e-9)
    txt = manifold_statistics(S, T, V, estimator="textbook")
    assert txt["radius"] == pytest.approx(np.sqrt(np.mean(s * s)), rel=1e-12)


def test_capacity_from_points_matches_its_parts():
    # steps 4-5 on a list of point sets = sample_t + solve_f + manifold_statistics per set
    rng = np.random.default_rng(4)
    S = [simplex_points(4), np.array([[0.0], [1.0]]), np.vstack([rng.standard_normal((3, 7)),
                                                               np.ones((1, 7))])]
    res = capacity_from_points(S, n_t=300, seed=5, kappa=0.2, return_per_t=True)
    T = sample_t([s.shape[0] for s in S], 300, 5)
    for i, (s, t) in enumerate(zip(S, T)):
        st = manifold_statistics(s, t, solve_f(s, t, 0.2).V, 0.2)
        np.testing.assert_array_equal(res["per_t"][i].T, t)
        assert res["capacity"][i] == pytest.approx(st["capacity"], rel=1e-12)
        assert res["radius"][i] == pytest.approx(st["radius"], rel=1e-12)
        assert res["dimension"][i] == pytest.approx(st["dimension"], rel=1e-12)
    assert res["capacity_total"] == pytest.approx(harmonic_capacity(res["capacity"]))


def test_harmonic_capacity():
    assert harmonic_capacity(np.array([1.0, 3.0])) == pytest.approx(1.5)
    assert harmonic_capacity(np.array([2.0, np.inf])) == pytest.approx(4.0)
    assert harmonic_capacity(np.array([np.inf, np.inf])) == np.inf


def test_sample_t_is_per_manifold():
    a = sample_t([3, 5, 2], 10, seed=4)
    b = sample_t([5], 10, seed=4)
    assert [t.shape for t in a] == [(10, 3), (10, 5), (10, 2)]
    assert not np.array_equal(a[1], b[0])           # manifold 1 draws from (seed, 1)
    np.testing.assert_array_equal(sample_t([7, 5], 10, seed=4)[1], a[1])
    for bad in (0, 2.5):
        with pytest.raises(ValueError, match="n_t"):
            sample_t([3], bad)
