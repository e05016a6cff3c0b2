r"""Mean-field theoretic manifold analysis (MFTMA): capacity, radius, dimension, center correlation.

Method (Chung, Lee & Sompolinsky, PRX 8, 031003, 2018; Cohen, Chung, Lee & Sompolinsky,
Nat. Commun. 11, 746, 2020), reported the way the authors' public implementation
(schung039/neural_manifolds_replicaMFT) reports it; the book's methods page (``book/methods.md``)
checks it against exact results.
Input: P manifolds, manifold i an (M_i, N) array (samples x features), numpy or torch.

1. Centers c_i; the global mean of all sum_i M_i points subtracted.
2. Center correlation ``rho_c = mean_{m != n} |cos(c_m, c_n)|`` of the centered centers
   (reported before the removal), then the low-rank center subspace: for K = 1, 2, ... the
   orthonormal V minimising the squared residual correlations, the K with the lowest mean
   |residual correlation| kept, span(V) projected out of every manifold (:mod:`.centers`).
3. Per manifold: its own center subtracted, divided by its residual center norm, coordinates
   in an orthonormal basis of its span (D = M when N > M, else D = N), the center coordinate 1
   appended: the columns of S~ ((D+1) x M) (:mod:`.preprocess`).
4. n_t Gaussian T ~ N(0, I_(D+1)) per manifold and, exactly for every T,
   F(T) = min_V ||V - T||^2 s.t. V . s~_j >= kappa (:mod:`.solver`, :mod:`.stages`).
5. Capacity ``1 / mean_T F(T)``, radius and dimension from the anchor points
   (:mod:`.statistics`); aggregates: capacity ``1 / mean_i(1/alpha_i)``, radius and dimension
   arithmetic means.

The call path of :func:`analyze` (module in brackets)::

    analyze                                  [analysis]   checks; a WorkerPool of num_threads
      begin_preprocess                       [preprocess] steps 1-2:
        validate_manifolds, as_array         [validation]
        centers of each group of manifolds   (pool.map over split_by_cost groups)
        centered Gram matrices, duplicates   (TaskQueue in the worker threads, while
        find_center_subspace                 [centers]     the calling thread searches:
          stiefel_minimize                   [centers]     kernels.stiefel_minimize if compiled)
        check_centers                        [preprocess] degenerate centers refused
      steps_4_5 per group of manifolds       (pool.map over split_by_cost groups; one group,
                                              after the pool, for cvxopt or a GPU device)
        PreprocessState.finish               [preprocess] step 3: gram_coordinates, S~
        t_vectors                            [capacity]   the T of manifold i
        capacity_from_points                 [capacity]   steps 4-5:
          solve_f                            [solver]     step 4, per group_indices batch:
            pad_batch                        [solver]
            stages_1_2                       [solver]     fista_cpu (kernels.fista_update if
                                                          compiled) or fista_torch, then
                                                          active_set_polish [stages]
            stage_3                          [solver]     verify, lawson_hanson [stages], verify
            per_t_fallbacks                  [solver]     solve_f_nnls, solve_f_cvxopt per T
          statistics_stack                   [statistics] step 5 per manifold
      harmonic_capacity, GeometryResult      [statistics, results] aggregates

:func:`preprocess` is steps 1-3 alone, :func:`capacity_from_points` steps 4-5 alone (on given
point sets), :func:`solve_f` step 4 alone. ``solver="cvxopt"`` replaces :func:`solve_f` by the
slow oracle (one cvxopt QP per T, as the public code), on the same preprocessing and T.

Modules: ``results`` (result types), ``validation`` (input checks), ``theory`` (closed forms the
tests and the methods page compare to), ``backend`` (the ``backend`` argument), ``kernels``
(numba twins of the hot loops), ``parallel`` (threads), ``centers``, ``preprocess``, ``stages``,
``solver``, ``statistics``, ``capacity``, ``analysis`` (the steps above), ``projection``
(:class:`RandomProjection`), ``simulated`` (simulated capacity: exact separability of random
dichotomies).

Threads: on the CPU the per-manifold work (centers, Gram matrices, coordinates, T, solves,
statistics) is split into contiguous groups of manifolds, one thread each with one BLAS thread
(``num_threads``, default: every CPU the process may use), and the compiled center search
(which releases the GIL) runs while the other threads compute the Gram matrices. Numbers do not
depend on the thread count beyond the last bit (a batch of other T can round differently).

Backend: ``backend="auto"`` (default) runs the compiled numba kernels where installed; the
first call after installation compiles them (about 15 s on 2 cores; numba caches them, later
processes load them in well under a second). ``"numpy"`` runs their numpy twins, ``"torch"``
the torch solver code (the GPU path) on the CPU; see :mod:`.backend`.

Choices the reference leaves open (all parameters): K >= 1 whenever a rank can be removed
(``min_rank=1``, as the public code; ``min_rank=0`` lets "no removal" compete), so P = 2 gives
K = 0 and P = 3 gives K = 1 (collinear residual centers); manifold coordinates from a deflated
Cholesky factor of the centered Gram matrix (``basis="gram"``; the eigenbasis where that is
singular, with eigenvalues below 1e-13 M x the largest as flat directions; a rotation of the
public code's QR basis, ``basis="qr"``, same law of every statistic); T drawn per manifold from
the seed sequence (seed, manifold index); exact duplicate points used once; a point set with
F = 0 for every T has capacity inf. Refused: a manifold whose residual center is rounding noise
(a constant class, identical classes), in every precision; bfloat16 tensors are converted to
float32 (exactly).

Example::

    import numpy as np
    from memgeo.geometry import analyze
    rng = np.random.default_rng(0)
    manifolds = [rng.standard_normal((50, 1000)) + 3 * rng.standard_normal(1000)
                 for _ in range(10)]
    res = analyze(manifolds, kappa=0.0, n_t=200, seed=0)
    print(res.capacity, res.radius, res.dimension, res.center_correlation, res.K)
    res.as_dict()                      # scalars, for tidy tables
    res.per_manifold.capacity          # numpy array, one value per manifold

Memory is linear in P x N x M: manifolds are processed one at a time (one (M, N) float64 copy
per thread), the centers take P x N, and nothing of size N x N is formed.
"""
from __future__ import annotations

from .analysis import analyze
from .backend import BACKENDS
from .capacity import capacity_from_points, sample_t
from .centers import center_correlation, find_center_subspace
from .preprocess import preprocess
from .projection import RandomProjection, random_projection
from .results import CenterSubspace, GeometryResult, PerManifold, PerT, Preprocessed, SolveResult
from .simulated import SimulatedCapacity, is_separable, separable_fraction, simulated_capacity
from .solver import SOLVERS, kkt_residual, solve_f, solve_f_cvxopt, solve_f_nnls
from .statistics import ESTIMATORS, manifold_statistics
from .theory import (alpha_ball, alpha_points, alpha_segment, cover_fraction, f_ball, f_simplex,
                     simplex_points)

# Bumped whenever analyze's numbers for the same input and seed change beyond rounding (cached
# geometry results are keyed by it). 2: deflated-Cholesky coordinates, compiled center search.
ENGINE_VERSION = 2

__all__ = [
    "GeometryResult", "PerManifold", "PerT", "Preprocessed", "SolveResult", "CenterSubspace",
    "analyze", "preprocess", "capacity_from_points", "solve_f", "solve_f_cvxopt", "solve_f_nnls",
    "kkt_residual", "manifold_statistics", "sample_t", "center_correlation",
    "find_center_subspace", "RandomProjection", "random_projection",
    "alpha_points", "alpha_segment", "alpha_ball", "f_ball", "f_simplex", "simplex_points",
    "cover_fraction", "simulated_capacity", "separable_fraction", "is_separable",
    "SimulatedCapacity", "ENGINE_VERSION", "ESTIMATORS", "SOLVERS", "BACKENDS",
]
