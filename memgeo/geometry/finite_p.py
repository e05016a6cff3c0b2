r"""Synthetic control of the Fig. 1B check: does the gap between simulated and mean-field capacity
shrink as the number of manifolds P grows?

The replica theory is exact for many manifolds (P, N -> infinity at fixed P / N); CIFAR-10 gives
P = 10. Here P Gaussian point clouds (M points each, the probe's M) are drawn around random unit
centers, each in its own random D-dimensional subspace (D = M by default, like the nearly
full-rank class manifolds of a real layer) with radius R (mean squared distance R^2 from the
center), in N = ``ambient_per_manifold`` x P features, so that N / P is the same at every P.
Each draw is analysed with the same mean-field code (:func:`~memgeo.geometry.analyze`) and the
same simulated-capacity code (:func:`~memgeo.geometry.simulated_capacity`) as the real layers,
both with the global mean and the low-rank center subspace removed.

Cost: the simulation needs about n_c = P / alpha features and P M points, and each exact
separability test grows faster than (P / alpha)^2 P M, so P = 100 dominates. At M = 50 a
capacity like a real layer's (~0.05: n_c ~ 2000 features, 5000 points) takes far longer than
the book's budget; R = 1 gives alpha ~ 0.25 (n_c ~ 400 at P = 100), a minute or two on one
core with 2 dichotomies at P = 100 (the crossing sharpens as P grows, so few dichotomies
suffice there; P = 10 gets several draws instead).
"""
from __future__ import annotations

import time

import numpy as np

from .analysis import analyze
from .centers import CENTER_SEARCHES
from .simulated import simulated_capacity


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
                         "dichotomies": nd, "seconds": time.perf_counter() - t0})
    return rows
