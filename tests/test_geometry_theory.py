"""Closed forms of memgeo.geometry.theory against published values and their own identities."""
import math

import numpy as np
import pytest

from memgeo.geometry.theory import (alpha_ball, alpha_points, alpha_segment, cover_fraction,
                                    f_ball, f_simplex, simplex_points)


@pytest.mark.parametrize("kappa,expected",
                         [(0.0, 2.0), (0.5, 0.9612), (1.0, 0.5196), (2.0, 0.2002)])
def test_alpha_points_closed_form(kappa, expected):
    assert alpha_points(kappa) == pytest.approx(expected, abs=5e-5)


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
        assert alpha_ball(R, D) == pytest.approx(ref, abs=6e-5)
    assert alpha_ball(1.0, D) == pytest.approx(2.0 / (D + 1), rel=1e-9)
    for R in (0.3, 2.5):
        assert 1 / alpha_ball(R, D) + 1 / alpha_ball(1 / R, D) == pytest.approx(D + 1, rel=1e-8)


def test_alpha_ball_limits():
    assert alpha_ball(0.0, 3, kappa=0.7) == pytest.approx(alpha_points(0.7), rel=1e-9)
    for R in (0.2, 1.0, 5.0):
        assert alpha_segment(R) == pytest.approx(alpha_ball(R, 1), rel=1e-8)


def test_alpha_ball_is_the_mean_of_f_ball():
    # the quadrature and the per-T closed form describe the same F: a Monte Carlo mean of
    # f_ball agrees with 1 / alpha_ball within 4 standard errors
    T = np.random.default_rng(0).standard_normal((200_000, 4))
    for R, kappa in ((0.5, 0.0), (2.0, 0.6)):
        F = f_ball(T, R, kappa)
        se = F.std(ddof=1) / math.sqrt(F.size)
        assert abs(F.mean() - 1 / alpha_ball(R, 3, kappa)) < 4 * se


def test_simplex_points_and_f_simplex():
    for m in (2, 5, 9):
        S = simplex_points(m)
        assert S.shape == (m, m)
        np.testing.assert_allclose(S.T @ S, m * np.eye(m), atol=1e-10)     # orthogonal
        np.testing.assert_allclose(S[-1], 1.0)                               # center coordinate
        np.testing.assert_allclose(S[:-1].sum(axis=1), 0.0, atol=1e-12)      # centered
        # E F = m / 2 (each of the m orthogonal constraints contributes E [-z]_+^2 = 1/2)
        T = np.random.default_rng(m).standard_normal((100_000, m))
        F = f_simplex(T, m)
        assert F.mean() == pytest.approx(m / 2, abs=4 * F.std() / math.sqrt(F.size))


def test_cover_fraction():
    assert cover_fraction(10, 5) == pytest.approx(0.5)
    assert cover_fraction(40, 20) == pytest.approx(0.5)
    assert cover_fraction(5, 5) == 1.0
    assert cover_fraction(3, 1) == pytest.approx(0.25)
