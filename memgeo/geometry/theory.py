"""Closed forms the engine is checked against (tests, the methods page): capacities of points,
segments, balls and simplices, exact per-T F for balls and simplices, Cover's count."""
from __future__ import annotations

import math

import numpy as np

from .validation import check_kappa


def _Phi(x):
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def _phi(x):
    return math.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)


def alpha_points(kappa: float = 0.0) -> float:
    """Capacity of points (M = 1): alpha_0(k) = 1 / [(1 + k^2) Phi(k) + k phi(k)]."""
    k = check_kappa(kappa)
    return 1.0 / ((1.0 + k * k) * _Phi(k) + k * _phi(k))


def alpha_segment(R: float) -> float:
    """Capacity of segments (D = 1, end points at distance R from the center), kappa = 0:
    alpha = 1 / (1/2 + (2/pi) arctan R)."""
    return 1.0 / (0.5 + (2.0 / math.pi) * math.atan(R))


def f_ball(T, R: float, kappa: float = 0.0) -> np.ndarray:
    """Exact F(T) for a ball of radius R in D dims (T: (n, D+1), center coordinate last).

    The feasible set is the cone v0 >= kappa + R ||v||; with r = ||t||, u = t0 - kappa:
    0 if u >= R r; r^2 + u^2 if u <= -r/R; else (R r - u)^2 / (1 + R^2).
    """
    T = np.atleast_2d(np.asarray(T, dtype=np.float64))
    r = np.linalg.norm(T[:, :-1], axis=1)
    u = T[:, -1] - kappa
    out = (R * r - u) ** 2 / (1.0 + R * R)
    out = np.where(u >= R * r, 0.0, out)
    if R > 0:
        out = np.where(u <= -r / R, r * r + u * u, out)
    return out


def alpha_ball(R: float, D: int, kappa: float = 0.0) -> float:
    """Capacity of D-dim balls of radius R (exact up to quadrature): 1 / E_T[f_ball(T)]."""
    from scipy import integrate, stats
    R = float(R)
    k = check_kappa(kappa)

    def _gauss_moments(a, b):  # int_a^b (1, t, t^2) phi(t) dt
        Pa, Pb = stats.norm.cdf(a), stats.norm.cdf(b)
        pa, pb = stats.norm.pdf(a), stats.norm.pdf(b)
        m0 = Pb - Pa
        m1 = pa - pb
        ta = a * pa if np.isfinite(a) else 0.0
        tb = b * pb if np.isfinite(b) else 0.0
        m2 = m0 + ta - tb
        return m0, m1, m2

    def inner(r):  # E over t0 of F given ||t|| = r; t0 = u + k with u the shifted coordinate
        # region u <= -r/R: r^2 + u^2 ; region -r/R < u < R r: (R r - u)^2 / (1 + R^2)
        total = 0.0
        if R > 0:
            a = -r / R + k  # limit in t0 = u + k
            m0, m1, m2 = _gauss_moments(-np.inf, a)
            # u = t0 - k: r^2 + (t0 - k)^2
            total += r * r * m0 + m2 - 2 * k * m1 + k * k * m0
            lo = a
        else:
            lo = -np.inf
        hi = R * r + k
        m0, m1, m2 = _gauss_moments(lo, hi)
        c = R * r + k  # (R r - u) = (c - t0)
        total += (c * c * m0 - 2 * c * m1 + m2) / (1.0 + R * R)
        return total

    if D == 0:
        return 1.0 / inner(0.0)
    chi = stats.chi(D)
    val, _ = integrate.quad(lambda r: inner(r) * chi.pdf(r), 0.0, np.inf, limit=200,
                            epsabs=1e-13, epsrel=1e-11)
    return 1.0 / val


def f_simplex(T, m: int, kappa: float = 0.0) -> np.ndarray:
    """Exact F(T) for a regular simplex of m points with circumradius sqrt(m-1) around a unit
    center, in the coordinates of :func:`simplex_points` (the s~_j are orthogonal with norm
    sqrt(m), so F(T) = sum_j [kappa/sqrt(m) - s_hat_j . T]_+^2)."""
    S = simplex_points(m)
    T = np.atleast_2d(np.asarray(T, dtype=np.float64))
    proj = T @ (S / math.sqrt(m))
    return np.sum(np.maximum(kappa / math.sqrt(m) - proj, 0.0) ** 2, axis=1)


def simplex_points(m: int) -> np.ndarray:
    """S~ ((D+1) x m, D = m-1) of a regular simplex: m points with circumradius sqrt(m-1) around
    a unit center; pairwise s~_j . s~_k = 0, ||s~_j||^2 = m. capacity = 2/m exactly."""
    E = np.eye(m) - 1.0 / m                       # centered standard basis, rank m-1
    U, s, Vt = np.linalg.svd(E)
    coords = (U[:, : m - 1] * s[: m - 1]).T        # (m-1, m): vertex j is column j
    coords *= math.sqrt(m - 1) / np.linalg.norm(coords[:, 0]) if m > 1 else 1.0
    return np.vstack([coords, np.ones((1, m))])


def cover_fraction(P: int, N: int) -> float:
    """Cover (1965): fraction of the 2^P dichotomies of P points in general position in N dims that
    a hyperplane through the origin separates: 2^(1-P) sum_{k<N} binom(P-1, k)."""
    tot = sum(math.comb(P - 1, k) for k in range(0, min(N, P)))
    return float(tot) / 2.0 ** (P - 1)
