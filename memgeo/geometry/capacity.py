r"""Steps 4-5 on normalised point sets S~ (center coordinate 1 in the last row): Gaussian T
vectors (:func:`sample_t`), the exact per-T solutions (:func:`memgeo.geometry.solver.solve_f`,
or the cvxopt oracle) and the statistics (:mod:`memgeo.geometry.statistics`).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from .results import PerT
from .solver import SOLVERS, solve_f, solve_f_cvxopt
from .statistics import ESTIMATORS, harmonic_capacity, statistics_stack
from .validation import check_choice, check_kappa, check_n_t, check_seed


def sample_t(D1s: Sequence[int], n_t: int, seed: int = 0) -> list:
    """Gaussian T vectors: for manifold i an (n_t, D1s[i]) array, from the seed sequence
    (seed, i) only (so a manifold's T do not depend on the other manifolds)."""
    n_t = check_n_t(n_t)
    seed = check_seed(seed)
    return [t_vectors(int(d), n_t, seed, i) for i, d in enumerate(D1s)]


def t_vectors(D1: int, n_t: int, seed: int, i: int) -> np.ndarray:
    """The (n_t, D1) T vectors of manifold ``i`` (:func:`sample_t` without the checks)."""
    return np.random.default_rng([1, seed, i]).standard_normal((n_t, D1))


def capacity_from_points(S, *, kappa: float = 0.0, T=None, n_t: int = 200, seed: int = 0,
                         estimator: str = "public", solver: str = "batched", device=None,
                         return_per_t: bool = False, backend="auto") -> dict:
    """Steps 4-5 on already-normalised point sets, bypassing centering and center removal.

    ``S``: one (D+1) x M array S~ (center coordinate 1 in the last row) or a list of them;
    ``T``: optional (n, D+1) array or list of them (default: :func:`sample_t` with n_t, seed).
    Returns dict(capacity, radius, dimension: numpy arrays per manifold; capacity_total:
    1/mean(1/alpha); per_t: list of PerT if requested; solve: list of SolveResult).
    ``backend``: passed to :func:`~memgeo.geometry.solver.solve_f`.
    """
    kappa = check_kappa(kappa)
    check_choice(estimator, ESTIMATORS, "estimator")
    check_choice(solver, SOLVERS, "solver")
    single = isinstance(S, (np.ndarray, torch.Tensor)) and np.ndim(S) == 2
    S_list = [np.asarray(S, np.float64)] if single else [np.asarray(s, np.float64) for s in S]
    for i, s in enumerate(S_list):
        if s.ndim != 2 or s.shape[1] < 1:
            raise ValueError(f"point set {i} must be a (D+1, M) array with M >= 1")
        if not np.isfinite(s).all():
            raise ValueError(f"point set {i} has non-finite values")
    if T is None:
        T_list = sample_t([s.shape[0] for s in S_list], n_t, seed)
    else:
        if isinstance(T, (list, tuple)):
            T_list = [np.atleast_2d(np.asarray(t, np.float64)) for t in T]
        else:
            T_list = [np.atleast_2d(np.asarray(T, np.float64))]
        if len(T_list) == 1 and len(S_list) > 1:
            T_list = T_list * len(S_list)
    if solver == "batched":
        sols = solve_f(S_list, T_list, kappa, device=device, backend=backend)
    else:
        sols = [solve_f_cvxopt(s, t, kappa) for s, t in zip(S_list, T_list)]
    caps, rads, dims, per_t = [], [], [], []
    stats = [None] * len(S_list)
    shapes = {}
    for i, (s, t) in enumerate(zip(S_list, T_list)):         # batch manifolds of equal shapes
        shapes.setdefault((s.shape, t.shape), []).append(i)
    for (s_shape, t_shape), idx in shapes.items():
        per = max(1, 100_000 // max(1, t_shape[0] * max(s_shape)))     # cache-sized chunks
        for c0 in range(0, len(idx), per):
            ii = idx[c0:c0 + per]
            for i, st in zip(ii, statistics_stack(np.stack([S_list[i] for i in ii]),
                                                  np.stack([T_list[i] for i in ii]),
                                                  np.stack([sols[i].V for i in ii]),
                                                  kappa, estimator)):
                stats[i] = st
    for t, sol, st in zip(T_list, sols, stats):
        caps.append(st["capacity"])
        rads.append(st["radius"])
        dims.append(st["dimension"])
        if return_per_t:
            per_t.append(PerT(t, st["F"], st["anchors"], st["interior"], sol.kkt, sol.stage))
    caps = np.array(caps)
    out = {"capacity": caps, "radius": np.array(rads), "dimension": np.array(dims),
           "capacity_total": harmonic_capacity(caps), "solve": sols}
    if return_per_t:
        out["per_t"] = per_t
    return out
