"""The full analysis, :func:`analyze`: steps 1-5 on P point clouds, split over threads."""
from __future__ import annotations

import contextlib

import numpy as np
import torch

from .backend import resolve_backend
from .capacity import capacity_from_points, t_vectors
from .parallel import WorkerPool, cpu_workers, split_by_cost, thread_limits
from .preprocess import begin_preprocess
from .results import GeometryResult, PerManifold
from .solver import SOLVERS
from .statistics import ESTIMATORS, harmonic_capacity
from .validation import check_choice, check_kappa, check_n_t, check_seed


def analyze(manifolds, *, kappa: float = 0.0, n_t: int = 200, seed: int = 0, device=None,
            return_per_t: bool = False, estimator: str = "public", solver: str = "batched",
            center_removal: bool = True, max_rank: int | None = None, min_rank: int = 1,
            n_restarts: int = 10, basis: str = "gram",
            num_threads: int | None = None, backend: str = "auto",
            n_searches: int = 1) -> GeometryResult:
    """Mean-field manifold analysis of P manifolds (list of (M_i, N) arrays, numpy or torch).

    Parameters
    ----------
    kappa : margin (any finite real; 0 is the usual choice).
    n_t : Gaussian T vectors per manifold (MC error of the capacity ~5 % at 200).
    seed : fixes the T vectors and the center-subspace search.
    device : torch device for the batched solver and the Gram products (default CPU).
    return_per_t : keep per-T diagnostics (T, F(T), anchors, KKT residual) in ``per_t``.
    estimator : "public" (default; radius from the anchors' spread, D * mean(cos)^2) or
        "textbook" (R^2 = mean ||s||^2, D = mean (t.s_hat)^2).
    solver : "batched" (default) or "cvxopt" (oracle: one QP per T, same preprocessing and T).
    center_removal : remove the low-rank center subspace (K >= min_rank when P >= 3).
    max_rank, min_rank, n_restarts : limits of the K search (min_rank=0 lets K = 0 compete).
    n_searches : whole K searches, the one with the lowest residual center correlation kept
        (:func:`~memgeo.geometry.centers.find_center_subspace`; 1 keeps ENGINE_VERSION's numbers,
        :data:`~memgeo.geometry.centers.CENTER_SEARCHES` is steadier at small P).
    basis : "gram" (default) or "qr" manifold coordinates (same law of every statistic).
    num_threads : CPU threads for the call (default: the CPUs this process may use). The
        per-manifold work (centers, Gram matrices, eigendecompositions, T, the per-T solves on
        the CPU, statistics) is split into that many groups of manifolds, one thread each with
        one BLAS thread, and the compiled center search runs beside the Gram products; results
        do not depend on the number beyond the last bit. On a machine shared with other jobs,
        1 avoids threads waiting on each other (BLAS and torch then use one thread too).
    backend : "auto" (default), "numba", "numpy" or "torch": the code that does the array
        work (compiled center search and solver update, or their numpy twins; numpy or torch
        for the per-T solver on the CPU); see :mod:`memgeo.geometry.backend`. "auto" is the
        fast one; the others agree with it to ~1e-6 (the numpy center search stops at a
        slightly different point of a flat landscape; the solvers agree to rounding).

    Manifolds with one point (M = 1) are valid: S~ = [[0], [1]], giving the point capacity
    alpha_0(kappa), R = 0 and D = 0. Exact duplicate points are used once. A manifold whose
    F(T) = 0 for every T has capacity inf (it contributes 0 to mean(1/alpha)).
    """
    kappa = check_kappa(kappa)
    n_t = check_n_t(n_t)
    seed = check_seed(seed)
    check_choice(estimator, ESTIMATORS, "estimator")
    check_choice(solver, SOLVERS, "solver")
    backend = resolve_backend(backend)
    n_workers = cpu_workers(num_threads)
    # batched solves on the CPU run per group of manifolds in the threads; the cvxopt oracle
    # (which holds the GIL) and GPU solves run in one call, after the threads' preprocessing
    split = solver == "batched" and (device is None or torch.device(device).type == "cpu")

    def steps_4_5(idx):            # per group of manifolds: finish step 3, sample T, solve
        S = [s for _, s in prep.finish(idx)]
        T = [t_vectors(s.shape[0], n_t, seed, int(i)) for i, s in zip(idx, S)]
        return S, capacity_from_points(S, kappa=kappa, T=T, estimator=estimator,
                                       solver=solver, device=device, return_per_t=return_per_t,
                                       backend=backend)

    # one worker with a thread count given: BLAS and torch use that many threads instead
    outer = thread_limits(num_threads) if num_threads is not None and n_workers == 1 else \
        contextlib.nullcontext()
    with outer, WorkerPool(n_workers) as pool:
        prep = begin_preprocess(manifolds, pool, center_removal=center_removal, seed=seed,
                                max_rank=max_rank, min_rank=min_rank, n_restarts=n_restarts,
                                basis=basis, backend=backend, n_searches=n_searches)
        groups = split_by_cost(prep.Ms.astype(np.float64) ** 2, pool.n if split else 1)
        if split:
            parts = pool.map(steps_4_5, groups)
    if not split:
        with outer:
            parts = [steps_4_5(groups[0])]
    pre = prep.result({int(i): s for idx, (S, _) in zip(groups, parts) for i, s in zip(idx, S)})
    out = {k: np.concatenate([o[k] for _, o in parts]) for k in ("capacity", "radius",
                                                                  "dimension")}
    out["solve"] = [s for _, o in parts for s in o["solve"]]
    if return_per_t:
        out["per_t"] = [p for _, o in parts for p in o["per_t"]]
    caps = out["capacity"]
    out["capacity_total"] = harmonic_capacity(caps)
    pm = PerManifold(caps, out["radius"], out["dimension"], pre.n_points, pre.n_unique, pre.D,
                     pre.center_norm)
    stages = np.concatenate([s.stage for s in out["solve"]])
    kkts = np.concatenate([s.kkt for s in out["solve"]])
    diag = {"max_kkt": float(np.max(kkts)),
            "n_stage": {int(k): int(np.sum(stages == k)) for k in np.unique(stages)},
            "residual_by_K": pre.centers.residual_by_K}
    return GeometryResult(
        capacity=float(out["capacity_total"]), radius=float(np.mean(out["radius"])),
        dimension=float(np.mean(out["dimension"])),
        center_correlation=float(pre.centers.center_correlation), K=int(pre.centers.K),
        per_manifold=pm, residual_correlation=float(pre.centers.residual_correlation),
        kappa=kappa, n_t=n_t, seed=seed, estimator=estimator, solver=solver,
        per_t=tuple(out["per_t"]) if return_per_t else None, diagnostics=diag)
