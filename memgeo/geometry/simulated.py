r"""Simulated manifold capacity (the check of Fig. 1B): exact linear separability of random
dichotomies of P manifolds after a random projection to n features.

For a dichotomy (labels y_i = +-1 drawn per manifold) and a Gaussian projection to n features,
the manifolds are separable by a hyperplane through the origin iff there is w with
y_i w . x > 0 for every point x of every manifold i. With nested projections (the first n columns
of one Gaussian matrix) separability is monotone in n, so each dichotomy has a critical n* (the
smallest n at which it is separable), found by bisection. The fraction of separable dichotomies
at n is the empirical CDF of n*; the simulated capacity is P / n_c with n_c the point where that
fraction crosses 1/2 (linear interpolation between integers). Its sampling error comes from the
order statistics of n* (a binomial confidence interval for the median).

Separability test: the least-distance problem min ||w|| s.t. A w >= 1 (rows a = y x / ||x||),
solved exactly by Lawson-Hanson NNLS (scipy.optimize.nnls): separable iff the NNLS residual is
non-zero; either way a certificate is checked (A w > 0, or a convex combination of the rows at
~0, Gordan's alternative), and ambiguous cases go to an LP (scipy.optimize.linprog, HiGHS).

The points are first written in coordinates of their span (:func:`span_coordinates`): global
mean of all points removed and, optionally, the center subspace of
:func:`~memgeo.geometry.centers.find_center_subspace` projected out
(:func:`~memgeo.geometry.preprocess.project_out`), as the mean-field analysis does.

Synthetic control (:func:`finite_p_control`): does the gap between simulated and mean-field
capacity shrink as the number of manifolds P grows? The replica theory is exact for many manifolds (P, N -> infinity at fixed P / N); CIFAR-10 gives
P = 10. Here P Gaussian point clouds (M points each, the probe's M) are drawn around random unit
centers, each in its own random D-dimensional subspace (D = M by default, like the nearly
full-rank class manifolds of a real layer) with radius R (mean squared distance R^2 from the
center), in N = ``ambient_per_manifold`` x P features, so that N / P is the same at every P.
Each draw is analysed with the same mean-field code (:func:`~memgeo.geometry.analyze`) and the
same simulated-capacity code (:func:`~memgeo.geometry.simulated_capacity`) as the real layers,
both with the global mean and the low-rank center subspace removed. Cost: the simulation needs about n_c = P / alpha features and P M points, and each exact
separability test grows faster than (P / alpha)^2 P M, so P = 100 dominates. At M = 50 a
capacity like a real layer's (~0.05: n_c ~ 2000 features, 5000 points) takes far longer than
the book's budget; R = 1 gives alpha ~ 0.25 (n_c ~ 400 at P = 100), a minute or two on one
core with 2 dichotomies at P = 100 (the crossing sharpens as P grows, so few dichotomies
suffice there; P = 10 gets several draws instead).

Example::

    from memgeo.geometry import simulated_capacity
    res = simulated_capacity(manifolds, n_dichotomies=24, seed=0)
    res.capacity, res.capacity_err, res.fraction(120)
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from .centers import CENTER_SEARCHES, find_center_subspace
from .preprocess import project_out
from .validation import as_array, validate_manifolds

@dataclass(frozen=True)
class SimulatedCapacity:
    """Simulated capacity P / n_c with its sampling error."""
    capacity: float
    capacity_lo: float            # central interval from the order statistics of n* (level `level`)
    capacity_hi: float
    capacity_err: float           # half width of the 1-sigma (68 %) interval
    n_c: float                    # number of features at which half the dichotomies separate
    n_star: np.ndarray            # critical n per dichotomy (inf: not separable at full rank)
    P: int
    rank: int                     # dimension of the span of all points (largest useful n)
    level: float = 0.95

    def fraction(self, n: float) -> float:
        """Fraction of the sampled dichotomies separable with n features."""
        return float(np.mean(self.n_star <= n))

    @property
    def unseparable(self) -> float:
        """Fraction of the sampled dichotomies not separable with any number of features (n* = inf:
        not even at the full rank of the points)."""
        return float(np.mean(np.isinf(self.n_star)))

    @property
    def capacity_separable(self) -> float:
        """P / n_c counting only the dichotomies separable at full rank (n_c: their median n*);
        nan when none is. Equals `capacity` when every dichotomy is separable."""
        finite = np.sort(self.n_star[np.isfinite(self.n_star)])
        if finite.size == 0:
            return math.nan
        n_c = _crossing(finite, 0.5)
        return self.P / n_c if n_c > 0 else math.inf


def _ldp_separable(A: np.ndarray) -> tuple[bool, np.ndarray | None]:
    """Exact test: is there w with A w > 0? (rows of A unit norm). Returns (separable, w)."""
    from scipy.optimize import nnls
    m, n = A.shape
    E = np.vstack([A.T, np.ones((1, m))])
    f = np.zeros(n + 1)
    f[-1] = 1.0
    try:
        u, rn = nnls(E, f, maxiter=max(100, 50 * m))
    except RuntimeError:
        return _lp_separable(A)
    r = E @ u - f
    if rn > 1e-9 and r[-1] < 0:
        w = -r[:n] / r[-1]
        if np.min(A @ w) > 0:
            return True, w
    else:
        s = u.sum()
        if s > 0 and np.linalg.norm(A.T @ u) / s < 1e-7:
            return False, None
    return _lp_separable(A)


def _lp_separable(A: np.ndarray) -> tuple[bool, np.ndarray | None]:
    from scipy.optimize import linprog
    m, n = A.shape
    res = linprog(np.zeros(n), A_ub=-A, b_ub=-np.ones(m), bounds=[(None, None)] * n,
                  method="highs")
    if res.status == 0:
        return True, res.x
    if res.status == 2:
        return False, None
    raise RuntimeError(f"separability LP failed: {res.message}")


def is_separable(X, y) -> bool:
    """Whether the points X (rows) with labels y (+-1 per row) are strictly linearly separable by
    a hyperplane through the origin (exact: NNLS least-distance test with certificates, LP
    fallback). A point at the origin is never strictly separable."""
    X = np.asarray(X, np.float64)
    y = np.asarray(y, np.float64).ravel()
    if X.ndim != 2 or y.shape[0] != X.shape[0]:
        raise ValueError("X must be (n_points, n) and y have one label per row")
    if not np.isfinite(X).all():
        raise ValueError("X has NaN or infinite values")
    nrm = np.linalg.norm(X, axis=1)
    if np.any(nrm == 0):
        return False
    A = (y / nrm)[:, None] * X
    return _ldp_separable(A)[0]


def span_coordinates(manifolds, center: bool, remove_center_subspace: bool, seed: int,
                     backend="auto", n_searches: int = 1):
    """(Y, labels, P): all points (rows of Y, float64) in an orthonormal basis of their span,
    scaled to max |entry| 1, after subtracting the global mean of all points (``center``) and
    projecting out the low-rank center subspace (``remove_center_subspace``, the search of
    :func:`memgeo.geometry.centers.find_center_subspace` with ``seed``, ``backend`` and
    ``n_searches``);
    labels: the manifold of each row. The law of a Gaussian projection of the points depends
    only on Y."""
    ms = [np.asarray(as_array(m), np.float64) for m in validate_manifolds(manifolds)]
    for i, m in enumerate(ms):
        if not np.isfinite(m).all():
            raise ValueError(f"manifold {i} has NaN or infinite feature values")
    labels = np.concatenate([np.full(m.shape[0], i) for i, m in enumerate(ms)])
    Z = np.vstack(ms)
    if center:
        Z = Z - Z.mean(axis=0, keepdims=True)
    if remove_center_subspace:
        C = np.stack([Z[labels == i].mean(axis=0) for i in range(len(ms))])
        Z = project_out(Z, find_center_subspace(C, seed=seed, backend=backend,
                                                n_searches=n_searches).basis)
    # coordinates in an orthonormal basis of the span (the law of a Gaussian projection only
    # depends on them); memory (sum M_i) x min(N, sum M_i)
    Z /= max(float(np.max(np.abs(Z))), 1e-300)
    U, s, _ = np.linalg.svd(Z, full_matrices=False)
    keep = s > s[0] * 1e-12 if s.size and s[0] > 0 else np.zeros_like(s, bool)
    return U[:, keep] * s[keep], labels, len(ms)


def critical_n(Y, labels, P, rng, n_max=None) -> float:
    """Critical number of features n* of one random dichotomy and one nested Gaussian
    projection of the points Y (rows, span coordinates): the smallest n at which the projected
    manifolds are separable (inf if they are not separable even at full rank)."""
    r = Y.shape[1]
    y = rng.choice([-1.0, 1.0], size=P)
    W = rng.standard_normal((r, r))
    nrm = np.linalg.norm(Y, axis=1)
    if np.any(nrm == 0):
        return math.inf
    A_full = (y[labels] / nrm)[:, None] * Y
    hi = r if n_max is None else min(r, int(n_max))

    def sep(n):
        An = A_full @ W[:, :n]
        An /= np.linalg.norm(An, axis=1, keepdims=True).clip(1e-300)
        return _ldp_separable(An)[0]

    if not sep(hi):
        return math.inf
    lo = 0
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if sep(mid):
            hi = mid
        else:
            lo = mid
    return float(hi)


def separable_fraction(manifolds, n: int, *, n_dichotomies: int = 100, seed: int = 0,
                       center: bool = True) -> tuple[float, float]:
    """Fraction of random dichotomies separable after a Gaussian projection to n features, with
    its binomial standard error. (Points in general position: Cover's 2^(1-P) sum_{k<n}
    binom(P-1, k).)"""
    Y, labels, P = span_coordinates(manifolds, center, False, seed)
    rng = np.random.default_rng([2, int(seed)])
    hits = 0
    for _ in range(int(n_dichotomies)):
        y = rng.choice([-1.0, 1.0], size=P)
        W = rng.standard_normal((Y.shape[1], int(n)))
        X = Y @ W
        hits += is_separable(X, y[labels])
    f = hits / n_dichotomies
    return f, math.sqrt(max(f * (1 - f), 0.25 / n_dichotomies) / n_dichotomies)


def _crossing(sorted_n: np.ndarray, q: float) -> float:
    """n at which the empirical CDF of n* (step function on integers) reaches q, by linear
    interpolation between consecutive integers."""
    S = sorted_n.size
    finite = sorted_n[np.isfinite(sorted_n)]
    if finite.size == 0:
        return math.inf
    lo, hi = int(finite.min()) - 1, int(finite.max())
    grid = np.arange(lo, hi + 1)
    cdf = np.searchsorted(sorted_n, grid, side="right") / S
    if cdf[-1] < q:
        return math.inf
    k = int(np.argmax(cdf >= q))
    if k == 0:
        return float(grid[0])
    c0, c1 = cdf[k - 1], cdf[k]
    return float(grid[k - 1] + (q - c0) / (c1 - c0))


def simulated_capacity(manifolds, *, n_dichotomies: int = 24, seed: int = 0,
                       center: bool = True, remove_center_subspace: bool = False,
                       level: float = 0.95, backend="auto",
                       n_searches: int = 1) -> SimulatedCapacity:
    """Simulated capacity P / n_c of P manifolds (list of (M_i, N) arrays).

    For each of ``n_dichotomies`` random dichotomies (labels +-1 per manifold) and nested
    Gaussian projections, the critical n* is found by bisection with exact separability tests;
    n_c is where the fraction separable crosses 1/2. ``capacity_lo/hi`` come from the order
    statistics of n* at the quantiles 1/2 -+ z sqrt(1/(4S)) (z for ``level``);
    ``capacity_err`` is half the 68 % interval. ``center`` subtracts the global mean (as the
    mean-field analysis does); ``remove_center_subspace`` also projects out the low-rank center
    subspace that :func:`memgeo.geometry.analyze` removes (``backend``: the center search's
    code, :mod:`memgeo.geometry.backend`; ``n_searches``: whole center searches, the best kept;
    pass analyze the same ``seed`` and ``n_searches`` so that both remove the same subspace).
    """
    from scipy import stats
    if int(n_dichotomies) < 2:
        raise ValueError("n_dichotomies must be >= 2")
    Y, labels, P = span_coordinates(manifolds, center, remove_center_subspace, seed,
                                     backend, n_searches)
    rng = np.random.default_rng([3, int(seed)])
    ns = np.array([critical_n(Y, labels, P, rng) for _ in range(int(n_dichotomies))])
    srt = np.sort(ns)
    S = srt.size
    n_c = _crossing(srt, 0.5)

    def interval(z):
        d = z * math.sqrt(0.25 / S)
        return _crossing(srt, min(0.5 + d, 1.0)), _crossing(srt, max(0.5 - d, 1.0 / S))

    z = float(stats.norm.ppf(0.5 + level / 2))
    n_hi, n_lo = interval(z)
    n1_hi, n1_lo = interval(1.0)
    cap = P / n_c if n_c > 0 else math.inf

    def inv(v):
        if v > 0 and math.isfinite(v):
            return P / v
        return 0.0 if v == math.inf else math.inf

    err = 0.5 * abs(inv(n1_lo) - inv(n1_hi))
    return SimulatedCapacity(cap, inv(n_hi), inv(n_lo), err, n_c, ns, P, Y.shape[1], level)


# ---- synthetic control of the check: the gap as P grows --------------------------------------

def gaussian_clouds(P: int, M: int, *, dim: int | None = None, radius: float = 1.0,
                    ambient_per_manifold: int = 10, seed: int = 0) -> list:
    """P arrays (M, N): Gaussian point clouds of M points in a random ``dim``-dimensional
    subspace (default M) around random unit centers, mean squared radius ``radius``^2, in
    N = ``ambient_per_manifold`` x P features (at least dim + 1)."""
    P, M = int(P), int(M)
    D = M if dim is None else int(dim)
    if P < 2 or M < 1 or D < 1 or not radius > 0:
        raise ValueError(f"need P >= 2, M >= 1, dim >= 1 and radius > 0 (got P={P}, M={M}, "
                         f"dim={D}, radius={radius})")
    N = max(int(ambient_per_manifold) * P, D + 1)
    rng = np.random.default_rng([5, int(seed), P, M])
    out = []
    for _ in range(P):
        c = rng.standard_normal(N)
        c /= np.linalg.norm(c)
        U, _ = np.linalg.qr(rng.standard_normal((N, D)))
        g = rng.standard_normal((M, D)) * (radius / np.sqrt(D))
        out.append(c + g @ U.T)
    return out


def draws_for(P: int, draw_points: int = 50) -> int:
    """Draws at P manifolds: about ``draw_points`` manifolds in all (5 at P = 10, 1 from 50)."""
    return max(1, int(round(draw_points / int(P))))


def finite_p_control(M: int, Ps=(10, 50, 100), *, radius: float = 1.0, dim: int | None = None,
                     ambient_per_manifold: int = 10, n_t: int = 200,
                     dichotomies=None, draw_points: int = 50,
                     n_searches: int = CENTER_SEARCHES, seed: int = 0) -> list[dict]:
    """One row per (P, draw): mean-field and simulated capacity of :func:`gaussian_clouds`, their
    signed relative deviation (simulated - mean-field) / mean-field, the center correlation
    before and after the center subspace is removed, and the seconds it took.

    ``dichotomies``: simulated dichotomies per P (a dict P -> count, or one count for all;
    default 12 at P <= 10, 4 up to 50, 2 above); ``draw_points``: :func:`draws_for`."""
    from .analysis import analyze
    rows = []
    for P in Ps:
        if isinstance(dichotomies, dict):
            nd = int(dichotomies[P])
        elif dichotomies is not None:
            nd = int(dichotomies)
        else:
            nd = 12 if P <= 10 else 4 if P <= 50 else 2
        for d in range(draws_for(P, draw_points)):
            t0 = time.perf_counter()
            ms = gaussian_clouds(P, M, dim=dim, radius=radius,
                                 ambient_per_manifold=ambient_per_manifold, seed=seed * 1000 + d)
            mf = analyze(ms, kappa=0.0, n_t=n_t, seed=seed + d, n_searches=n_searches,
                         num_threads=1)
            sim = simulated_capacity(ms, n_dichotomies=nd, seed=seed + d,
                                     remove_center_subspace=True, n_searches=n_searches)
            rows.append({"P": int(P), "draw": d, "M": int(M), "features": ms[0].shape[1],
                         "capacity_meanfield": mf.capacity, "capacity_simulated": sim.capacity,
                         "capacity_simulated_err": sim.capacity_err,
                         "deviation": (sim.capacity - mf.capacity) / mf.capacity,
                         "center_correlation": mf.center_correlation,
                         "residual_correlation": mf.residual_correlation, "K": mf.K,
                         "unseparable": sim.unseparable, "capacity_simulated_separable": sim.capacity_separable,
                         "dichotomies": nd, "seconds": time.perf_counter() - t0})
    return rows
