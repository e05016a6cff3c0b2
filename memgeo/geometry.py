r"""Mean-field theoretic manifold analysis (MFTMA): capacity, radius, dimension, center correlation.

Method (Chung, Lee & Sompolinsky, PRX 8, 031003, 2018; Cohen, Chung, Lee & Sompolinsky,
Nat. Commun. 11, 746, 2020), reported the way the authors' public implementation
(schung039/neural_manifolds_replicaMFT) reports it; see ``REFERENCE.md`` section 2.

Input: P manifolds, manifold i an (M_i, N) array (samples x features).

1. Subtract the global mean of all sum_i M_i points.
2. Center correlation: the P centers c_i minus their mean, in an orthonormal basis of their span;
   ``rho_c = mean_{m != n} |cos(c_m, c_n)|`` (reported *before* the low-rank removal).
   Low-rank removal: for K = 1, 2, ... minimise over orthonormal V (r x K, r = rank of the
   centered centers, so the cost does not grow with N) the sum of squared residual correlations

       cost(V) = 1/2 sum_{m,n} C_mn^2 / (C_mm C_nn),   C = X X^T - (X V)(X V)^T

   (Riemannian gradient descent on the Stiefel manifold, QR retraction, Barzilai-Borwein steps,
   non-monotone Armijo line search, stopping at Riemannian gradient norm 1e-6; cost and
   gradient from the P x P Gram matrix and X V without forming C; ``n_restarts`` random starts
   per K, the start whose residual centers keep the most of their norm is kept, as in the
   public code). The K with the
   lowest mean |residual correlation| is kept; the search stops when that value has risen three
   times in a row. Every manifold is then projected onto the orthogonal complement of span(V).
3. Per manifold: subtract its own center c, divide by ||c||, write the points in an orthonormal
   basis of their span (D = M coordinates when N > M, else D = N), append the center coordinate 1:
   points s~_j in R^(D+1), the columns of S~ ((D+1) x M).
4. Draw n_t vectors T ~ N(0, I_(D+1)) and solve, exactly, for every T

       F(T) = min_V ||V - T||^2   subject to   V . s~_j >= kappa  for all j.

   Dual: ``min_{lambda >= 0} 1/2 lambda^T G lambda + lambda^T (S~^T T - kappa)``, G = S~^T S~,
   V* = T + S~ lambda*. At kappa = 0 this is Moreau's decomposition,
   F(T) = ||T||^2 - min_{lambda >= 0} ||T + S~ lambda||^2.
   The anchor point is s~(T) = (V* - T) / (V* - T)_(D+1) (a convex combination of the points,
   center coordinate 1); for interior T (min_j T . s~_j >= kappa, F = 0) it is the point with the
   smallest T . s~_j. Then F(T) = [kappa - T . s~(T)]_+^2 / ||s~(T)||^2.
5. Capacity ``alpha_M = 1 / mean_T F(T)``. Estimators of radius and dimension:

   * ``estimator="public"`` (default, as the public code):
     ``R_M = sqrt(mean_T ||s(T) - mean_T s(T)||^2)`` (D-dim parts of the anchors), and
     ``D_M = D * (mean_T cos(t, s(T)))^2`` (t: D-dim part of T).
   * ``estimator="textbook"`` (PRX 2018 eqs. 28-29): ``R_M^2 = mean_T ||s(T)||^2`` and
     ``D_M = mean_T (t . s_hat(T))^2``.

   Aggregates: capacity ``1 / mean_i(1/alpha_i)``; radius and dimension arithmetic means.

The per-T problem is solved for all T and all manifolds at once (numpy on the CPU, torch on
CUDA), in stages (see :func:`solve_f`): (1) accelerated projected gradient on the Jacobi-scaled
dual (momentum capped by the condition number, gradient restart); on the CPU its iterations run
in float32 with float64 refinement (the gradient is recomputed in float64 every few iterations,
as in mixed-precision iterative refinement) and float64 KKT checks; (2) for T it has not
settled within a few dozen iterations (ill-conditioned point sets), a primal-dual active-set
polish that solves the equality-constrained problem on the support
exactly (Cholesky of the support block); (3) batched Lawson-Hanson NNLS on the least-distance
form (exact for every kappa, robust to duplicates and rank deficiency; used directly for point
sets with many points in few dimensions); (4) scipy NNLS and (5) cvxopt per T as last resorts.
After every stage each T's KKT residual (relative; primal and dual feasibility, complementary
slackness, stationarity) is computed explicitly from V = T + S~ lambda, never assumed, and it
is returned with the solution. ``solver="cvxopt"`` is the slow oracle (one cvxopt QP per T, as
the public code), on the same preprocessing and the same T.

On the CPU the work runs in threads (``num_threads``, default: every CPU the process may use):
the per-manifold steps (centers, Gram matrices, coordinates, T, solves, statistics) are split
into contiguous groups of manifolds, one thread each with one BLAS thread, and the center search
(compiled with numba, :mod:`memgeo._jit`, so it releases the GIL) runs while the other threads
compute the Gram matrices. Numbers do not depend on the thread count beyond the last bit (a
batch of other T can round differently). The first call after installation compiles the
kernels (about 15 s on 2 cores; numba caches them next to the module, later processes load them
in well under a second). Without numba the numpy twins of the compiled kernels run; they are
slower and give the same results to rounding.

Choices the reference leaves open (all parameters): K >= 1 whenever a rank can be removed
(``min_rank=1``, as the public code; ``min_rank=0`` lets "no removal" compete), so P = 2 gives
K = 0 and P = 3 gives K = 1 (collinear residual centers); manifold coordinates from a
deflated Cholesky factor of the centered Gram matrix (``basis="gram"``; the eigenbasis where
that is singular, with eigenvalues below 1e-13 M x the largest as flat directions; a rotation of
the public code's QR basis, ``basis="qr"``, same law of every statistic); T drawn per manifold
from the seed sequence (seed, manifold index); exact duplicate points used once; a point set with F = 0 for every T has capacity inf.

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

Memory is linear in P x N x M: manifolds are processed one at a time (one (M, N) float64 copy),
the centers take P x N, and nothing of size N x N is formed.
"""
from __future__ import annotations

import contextlib
import math
import os
import threading
import warnings
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

__all__ = [
    "GeometryResult", "PerManifold", "PerT", "Preprocessed", "SolveResult", "CenterSubspace",
    "analyze", "preprocess", "capacity_from_points", "solve_f", "solve_f_cvxopt", "solve_f_nnls",
    "kkt_residual", "manifold_statistics", "sample_t", "center_correlation",
    "find_center_subspace", "RandomProjection", "random_projection",
    "alpha_points", "alpha_segment", "alpha_ball", "f_ball", "f_simplex", "cover_fraction",
    "simulated_capacity", "separable_fraction", "is_separable",
]

_INTERIOR_EPS = 1e-8          # ||V - T|| below this: interior T (as the public code)
# Bumped whenever analyze's numbers for the same input and seed change beyond rounding (cached
# geometry results are keyed by it). 2: deflated-Cholesky coordinates, compiled center search.
ENGINE_VERSION = 2
_GRAM_RTOL = 1e-13            # Gram eigenvalues (pivots^2) below this x M x largest count as zero
_DTYPE = torch.float64
_NUMPY_ON_CPU = True          # CPU: numpy stage 1 and checks; False runs the torch (GPU) code
_JIT = True                   # compiled kernels (memgeo._jit, numba) when numba is installed
_FISTA_CHUNK = 200_000        # T x points per float32 stage-1 chunk (~1 MB arrays, cache-sized)
ESTIMATORS = ("public", "textbook")
SOLVERS = ("batched", "cvxopt")


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PerManifold:
    """Per-manifold numbers (numpy arrays of length P)."""
    capacity: np.ndarray
    radius: np.ndarray
    dimension: np.ndarray
    n_points: np.ndarray          # M_i as given
    n_unique: np.ndarray          # distinct points used by the solver
    D: np.ndarray                 # number of manifold coordinates (D_i; points live in D_i + 1)
    center_norm: np.ndarray       # ||c_i|| after global centering and center-subspace removal


@dataclass(frozen=True)
class PerT:
    """Per-T diagnostics of one manifold (n_t rows)."""
    T: np.ndarray                 # (n_t, D+1) the Gaussian vectors
    F: np.ndarray                 # (n_t,) F(T) = ||V* - T||^2 (0 for interior T)
    anchors: np.ndarray           # (n_t, D+1) anchor points s~(T) (center coordinate 1)
    interior: np.ndarray          # (n_t,) bool
    kkt: np.ndarray               # (n_t,) verified relative KKT residual
    stage: np.ndarray             # (n_t,) int: 0 interior (lam = 0 verified), 1 iterative,
                                  # 2 active-set polish, 3 batched Lawson-Hanson, 4 scipy
                                  # NNLS, 5 cvxopt


@dataclass(frozen=True)
class GeometryResult:
    """Result of :func:`analyze`. Scalars are aggregates over the P manifolds."""
    capacity: float               # 1 / mean_i (1 / alpha_i)
    radius: float                 # mean_i R_i
    dimension: float              # mean_i D_i
    center_correlation: float     # rho_c before the low-rank removal
    K: int                        # rank of the removed center subspace
    per_manifold: PerManifold
    residual_correlation: float = float("nan")   # mean |cos| after the removal
    kappa: float = 0.0
    n_t: int = 200
    seed: int = 0
    estimator: str = "public"
    solver: str = "batched"
    per_t: tuple | None = None    # tuple of PerT (one per manifold) when return_per_t
    diagnostics: dict = field(default_factory=dict)

    @property
    def P(self) -> int:
        return int(len(self.per_manifold.capacity))

    def as_dict(self) -> dict:
        """Scalar aggregates, for tidy tables."""
        return {
            "capacity": float(self.capacity), "radius": float(self.radius),
            "dimension": float(self.dimension),
            "center_correlation": float(self.center_correlation), "K": int(self.K),
            "residual_correlation": float(self.residual_correlation),
            "P": self.P, "kappa": float(self.kappa), "n_t": int(self.n_t),
        }


@dataclass(frozen=True)
class CenterSubspace:
    """Outcome of the low-rank center analysis."""
    center_correlation: float     # rho_c before removal
    K: int                        # chosen rank (0: nothing removed)
    basis: np.ndarray             # (N, K) orthonormal basis of the removed subspace
    residual_correlation: float   # mean |cos| of residual centers at the chosen K
    residual_by_K: tuple          # mean |cos| for K = 1, 2, ... as searched (index 0 is K = 1)


@dataclass(frozen=True)
class Preprocessed:
    """Per-manifold point sets ready for the per-T problem."""
    S: tuple                      # S~_i, (D_i + 1, M'_i) float64 numpy (duplicates removed)
    D: np.ndarray
    n_points: np.ndarray
    n_unique: np.ndarray
    center_norm: np.ndarray
    centers: CenterSubspace


@dataclass(frozen=True)
class SolveResult:
    """Exact solutions of the per-T problems of one manifold."""
    F: np.ndarray                 # (n,) ||V* - T||^2
    V: np.ndarray                 # (n, D+1)
    lam: np.ndarray               # (n, M) multipliers, V* = T + S~ lam
    kkt: np.ndarray               # (n,) relative KKT residual (verified)
    stage: np.ndarray             # (n,) 0 interior (lam = 0), 1 iterative, 2 polish,
                                  # 3 batched Lawson-Hanson, 4 scipy NNLS, 5 cvxopt


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------
def _check_kappa(kappa) -> float:
    try:
        k = float(kappa)
    except (TypeError, ValueError):
        raise ValueError(f"kappa must be a real number, got {kappa!r}") from None
    if not math.isfinite(k):
        raise ValueError(f"kappa must be finite, got {kappa!r}; use a finite margin such as 0.0")
    return k


def _check_n_t(n_t) -> int:
    if isinstance(n_t, bool) or not isinstance(n_t, (int, np.integer)):
        raise ValueError(f"n_t must be a positive integer, got {n_t!r}")
    if n_t < 1:
        raise ValueError(f"n_t must be >= 1 (got {n_t}); 200-300 is usual, ~20000 for 0.5% error")
    return int(n_t)


def _check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def _validate_manifolds(manifolds) -> list:
    if isinstance(manifolds, (np.ndarray, torch.Tensor)) and manifolds.ndim == 3:
        manifolds = [manifolds[i] for i in range(manifolds.shape[0])]
    if not isinstance(manifolds, (list, tuple)):
        raise ValueError("manifolds must be a list of P arrays of shape (M_i, N) "
                         f"(samples x features), got {type(manifolds).__name__}")
    P = len(manifolds)
    if P < 2:
        raise ValueError(f"need at least 2 manifolds, got {P}: capacity, the global mean and the "
                         "center correlation are defined for P >= 2 (pass more classes)")
    N = None
    for i, X in enumerate(manifolds):
        shape = tuple(X.shape) if hasattr(X, "shape") else np.shape(X)
        if len(shape) != 2:
            raise ValueError(f"manifold {i} has shape {shape}; expected (M_i, N) = (samples, "
                             "features); reshape a single point to (1, N)")
        if shape[0] < 1:
            raise ValueError(f"manifold {i} has no points (shape {shape}); drop it")
        if N is None:
            N = shape[1]
        elif shape[1] != N:
            raise ValueError(f"manifold {i} has {shape[1]} features but manifold 0 has {N}: all "
                             "manifolds must share the feature dimension N (same layer, same "
                             "projection)")
    if N < 1:
        raise ValueError("manifolds have 0 features")
    return list(manifolds)


# --------------------------------------------------------------------------------------------
# Exact reference results (used by the tests; useful on their own)
# --------------------------------------------------------------------------------------------
def _Phi(x):
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def _phi(x):
    return math.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)


def alpha_points(kappa: float = 0.0) -> float:
    """Capacity of points (M = 1): alpha_0(k) = 1 / [(1 + k^2) Phi(k) + k phi(k)]."""
    k = _check_kappa(kappa)
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
    k = _check_kappa(kappa)

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


# --------------------------------------------------------------------------------------------
# Center correlation and low-rank center removal (Stiefel optimisation in the centers' span)
# --------------------------------------------------------------------------------------------
def _mean_abs_corr(Y: np.ndarray) -> float:
    """mean_{m != n} |cos(y_m, y_n)| of the rows of Y (zero rows count as cos = 0)."""
    P = Y.shape[0]
    nrm = np.linalg.norm(Y, axis=1)
    safe = np.where(nrm > 0, nrm, 1.0)
    Yn = Y / safe[:, None]
    C = np.abs(Yn @ Yn.T)
    np.fill_diagonal(C, 0.0)
    return float(C.sum() / (P * (P - 1)))


def _centers_basis(centers: np.ndarray):
    """Coordinates X (P x r) of the centers minus their mean in an orthonormal basis of their
    span, and ``lift(V)``: the N x K orthonormal basis of the subspace that V (r x K, orthonormal
    in those coordinates) spans in feature space. Returns (X, lift, Xb).

    From the P x P Gram matrix G = Xb Xb^T = U diag(w) U^T: X = U sqrt(w) (no N-sized work)
    when every eigenvalue is either well resolved (w > 1e-9 w_max) or checked to be a null
    direction (||Xb^T u|| at rounding level); otherwise the basis is refined in feature space
    (Householder QR of Xb^T U w^-1/2, cost P^2 N), which also resolves tiny directions.
    """
    Xb = centers - centers.mean(axis=0, keepdims=True)
    P, N = Xb.shape
    G = Xb @ Xb.T
    w, U = np.linalg.eigh(G)
    w, U = w[::-1], U[:, ::-1]
    empty = (np.zeros((P, 0)), lambda V: np.zeros((N, 0)), Xb)
    if not w.size or not w[0] > 0:
        return empty
    resolved = w > w[0] * 1e-9
    small = np.nonzero(~resolved)[0]
    if small.size:
        # accurate singular values of the unresolved directions (||Xb^T u||, cost N per one)
        sv_small = np.linalg.norm(Xb.T @ U[:, small], axis=0)
    if not small.size or np.all(sv_small <= np.sqrt(w[0]) * 1e-10):
        B = U[:, resolved] / np.sqrt(w[resolved])                  # Q = Xb^T B
        X = U[:, resolved] * np.sqrt(w[resolved])

        def lift(V):
            Qv, R = np.linalg.qr(Xb.T @ (B @ V))                     # N x K, re-orthonormalised
            return Qv
        return X, lift, Xb
    tol = w[0] * 1e-20 * P
    keep = w > max(tol, 1e-300)
    Q = Xb.T @ (U[:, keep] / np.sqrt(w[keep]))              # N x r, orthonormal up to rounding
    Q, _ = np.linalg.qr(Q)
    X = Xb @ Q                                                # P x r
    # drop numerically-null directions
    sv = np.linalg.norm(X, axis=0)
    k2 = sv > sv.max() * 1e-10
    X, Q = X[:, k2], Q[:, k2]
    return X, (lambda V: Q @ V), Xb


def center_correlation(centers) -> float:
    """rho_c = mean_{m != n} |cos(c_m, c_n)| of the P centers minus their mean (rows)."""
    C = np.asarray(centers, dtype=np.float64)
    if C.ndim != 2 or C.shape[0] < 2:
        raise ValueError("centers must be a (P, N) array with P >= 2")
    return _mean_abs_corr(C - C.mean(axis=0, keepdims=True))


def _jit_kernel(name):
    """The compiled kernel ``name`` of :mod:`memgeo._jit`, or None (numba missing, or switched
    off with ``_JIT = False``)."""
    if not _JIT:
        return None
    from . import _jit
    return getattr(_jit, name) if _jit.available() else None


def _corr_cost_grad(V, X, XXt, diag):
    """Cost 1/2 sum_mn C_mn^2/(C_mm C_nn), C = XX^T - (XV)(XV)^T, and its Euclidean gradient in V.
    V: (b, r, K) stack. Returns cost (b,) (inf where a residual center vanishes), grad (b, r, K).

    With w = 1/diag(C): cost = 1/2 w^T (C o C) w and dcost/dA = 2 (q o A - w o (C (w o A))),
    q = w^2 o ((C o C) w), A = X V; dcost/dV = X^T dcost/dA.
    """
    A = np.matmul(X, V)                                   # (b, P, K)
    C = XXt - np.matmul(A, A.transpose(0, 2, 1))
    c0 = diag - np.einsum("bpk,bpk->bp", A, A)
    bad = np.any(c0 <= 0, axis=1)
    w = 1.0 / np.where(c0 > 0, c0, 1.0)
    C2w = np.matmul(C * C, w[:, :, None])[:, :, 0]        # (b, P)
    cost = 0.5 * np.einsum("bp,bp->b", w, C2w)
    cost[bad] = np.inf
    wA = w[:, :, None] * A
    dA = 2.0 * ((w * w * C2w)[:, :, None] * A - w[:, :, None] * np.matmul(C, wA))
    return cost, np.matmul(X.T, dA)


def _qr_retract(Y):
    """Q factor with positive R diagonal (works on (r, K) or stacked (b, r, K))."""
    Q, R = np.linalg.qr(Y)
    s = np.sign(np.diagonal(R, axis1=-2, axis2=-1))
    s = np.where(s == 0, 1.0, s)
    return Q * s[..., None, :]


_CANCEL_MAX = 1e6     # cancellation factor above which the low-rank cost is recomputed directly


def _corr_cost_grad_lr(Vt, X, XT, G, GG, diag, X2=None):
    """:func:`_corr_cost_grad` without forming the (b, P, P) residual matrices C.

    Bases are stored transposed: Vt (b, K, r) holds V^T. With A = X V and G = X X^T:
    (C o C) w = (G o G) w - 2 rowsum(A o G (w o A)) + rowsum(A M_w o A), M_w = A^T diag(w) A
    (K x K), and C (w o A) = G (w o A) - A M_w, so an evaluation is three BLAS-3 products of
    O(b K P^2) plus O(b K P) work. ``XT`` = X^T (contiguous), ``GG`` = G o G, ``X2`` = 2 X
    (optional). Returns cost (b,), the transposed gradient (b, K, r) and a cancellation factor
    max_p [(G o G) w]_p w_p (b,), an upper bound of the ratio of [(G o G) w]_p to the exact
    [(C o C) w]_p (which is at least C_pp^2 w_p = 1/w_p): the relative rounding error of cost
    and gradient is at most about that times machine epsilon.
    """
    b, K, r = Vt.shape
    P = X.shape[0]
    At = (Vt.reshape(b * K, r) @ XT).reshape(b, K, P)     # A^T
    c0 = diag - np.einsum("bkp,bkp->bp", At, At)
    bad = None
    if not c0.min() > 0:                                  # a residual center vanishes
        bad = ~(np.min(c0, axis=1) > 0)
        c0[bad] = 1.0
    w = 1.0 / c0
    wA = At * w[:, None, :]
    H = (wA.reshape(b * K, P) @ G).reshape(b, K, P)       # (G (w o A))^T
    AM = np.matmul(np.matmul(At, wA.transpose(0, 2, 1)), At)   # (A M_w)^T, M_w symmetric
    GGw = w @ GG                                          # (G o G) w
    H -= AM                                               # (C (w o A))^T
    AM += H
    AM += H                                               # 2 G (w o A) - A M_w
    C2w = GGw - np.einsum("bkp,bkp->bp", At, AM)          # (C o C) w
    cost = 0.5 * np.vecdot(w, C2w)
    # [(C o C) w]_p >= C_pp^2 w_p = 1/w_p: [(G o G) w]_p w_p bounds the cancellation
    canc = np.max(GGw * w, axis=1)
    if bad is not None:
        cost[bad] = np.inf
        canc[bad] = 1.0
    H *= w[:, None, :]
    w *= w
    w *= C2w
    dA = At * w[:, None, :]
    dA -= H
    if X2 is None:
        X2 = 2.0 * X
    return cost, (dA.reshape(b * K, P) @ X2).reshape(b, K, r), canc


def _retract_t(Yt, steplen):
    """Orthonormalise the rows of Yt = V^T - t xi^T (b, K, r) (V orthonormal, xi tangent with
    V^T xi = 0; ``steplen`` = t ||xi||, (b,)): the Q factor with positive R diagonal, i.e. the
    QR retraction. Y^T Y = I + t^2 xi^T xi has condition number <= 1 + steplen^2, so Cholesky
    QR (L^-1 Y^T, L L^T = Y^T Y) is accurate; a second pass for long steps, Householder for
    very long ones. K = 1: normalisation. L^-1 is formed explicitly (K x K, condition number
    <= 1 + steplen) and applied as one product: for the small K of the centre search that is
    about 3x faster than a batched ``solve``."""
    if Yt.shape[1] == 1:
        return Yt / np.sqrt(np.einsum("bkr,bkr->b", Yt, Yt))[:, None, None]
    smax = float(np.max(steplen)) if steplen.size else 0.0
    if smax <= 1e3:
        Q = Yt
        try:
            for _ in range(1 if smax <= 1.0 else 2):
                L = np.linalg.cholesky(np.matmul(Q, Q.transpose(0, 2, 1)))
                Q = np.matmul(np.linalg.inv(L), Q)
            return Q
        except np.linalg.LinAlgError:
            pass
    return _qr_retract(Yt.transpose(0, 2, 1)).transpose(0, 2, 1)


def _stiefel_minimize(V0, X, *, max_iter=1000, gtol=1e-6):
    """Minimise the squared residual-correlation cost over orthonormal V, for a stack of starts.

    Riemannian gradient descent (embedded metric, QR retraction) with alternating
    Barzilai-Borwein steps and a non-monotone (Zhang-Hager) Armijo line search, vectorised over
    the starts; a start stops when its Riemannian gradient norm is below ``gtol`` (or its line
    search fails). V0: (b, r, K), orthonormal. Returns (V (b, r, K), cost (b,)).

    Cost and gradient come from :func:`_corr_cost_grad_lr` (from :func:`_corr_cost_grad` when
    its cancellation factor exceeds 1e6). Bases are stored transposed (b, K, r) so that the
    products with X are single matrix products over all starts, and only the running starts
    are kept (no indexing in the common path).
    """
    X = np.ascontiguousarray(X, dtype=np.float64)
    compiled = _jit_kernel("stiefel_minimize")
    if compiled is not None:
        Vt0 = np.ascontiguousarray(np.asarray(V0, dtype=np.float64).transpose(0, 2, 1))
        Vt, f = compiled(Vt0, X, int(max_iter), float(gtol), float(_CANCEL_MAX))
        return np.ascontiguousarray(Vt.transpose(0, 2, 1)), f
    XT = np.ascontiguousarray(X.T)
    X2 = 2.0 * X
    G = X @ XT
    GG = G * G
    diag = np.diag(G).copy()
    Vt = np.array(np.asarray(V0, dtype=np.float64).transpose(0, 2, 1), order="C")
    b, K, r = Vt.shape
    out_V, out_f = Vt.copy(), np.full(b, np.inf)

    def cost_grad(Vx):
        f, Gr, canc = _corr_cost_grad_lr(Vx, X, XT, G, GG, diag, X2)
        if not np.max(canc) <= _CANCEL_MAX:
            f, Gr = _corr_cost_grad(Vx.transpose(0, 2, 1), X, G, diag)
            Gr = Gr.transpose(0, 2, 1)
        return f, Gr

    def rgrad(Vx, Gr):                                  # G - V sym(V^T G), transposed
        VtG = np.matmul(Gr, Vx.transpose(0, 2, 1))
        return Gr - np.matmul(0.5 * (VtG + VtG.transpose(0, 2, 1)), Vx)

    def sqnorm(Z):
        z = Z.reshape(Z.shape[0], -1)
        return np.vecdot(z, z)

    f, G0 = cost_grad(Vt)
    rg = rgrad(Vt, G0)
    gn = np.sqrt(sqnorm(rg))
    st = {"ids": np.arange(b), "Vt": Vt, "f": f, "rg": rg, "gn": gn,
          "step": 1.0 / np.maximum(gn, 1e-12), "Cref": f.copy(), "Qk": np.ones(b)}
    eta = 0.85

    def retire(mask):                                   # starts leaving the iteration
        out_V[st["ids"][mask]] = st["Vt"][mask]
        out_f[st["ids"][mask]] = st["f"][mask]
        keep = ~mask
        for k in st:
            st[k] = st[k][keep]

    done = ~np.isfinite(f) | (gn < gtol)
    if done.any():
        retire(done)
    for it in range(max_iter):
        if st["ids"].size == 0:
            break
        Vt, rg, gn, Cref = st["Vt"], st["rg"], st["gn"], st["Cref"]
        t = st["step"]
        Vn = _retract_t(Vt - t[:, None, None] * rg, t * gn)
        fn, Gn = cost_grad(Vn)
        ok = fn <= Cref - 1e-4 * t * gn * gn            # (False for inf and nan)
        if not ok.all():                                # backtracking (t <- 0.3 t, 40 tries)
            t = t.copy()
            pend = np.nonzero(~ok)[0]
            for _ in range(39):
                t[pend] *= 0.3
                tp = t[pend]
                Vp = _retract_t(Vt[pend] - tp[:, None, None] * rg[pend], tp * gn[pend])
                fp, Gp = cost_grad(Vp)
                okp = fp <= Cref[pend] - 1e-4 * tp * gn[pend] ** 2
                sel = pend[okp]
                Vn[sel], fn[sel], Gn[sel] = Vp[okp], fp[okp], Gp[okp]
                ok[sel] = True
                pend = pend[~okp]
                if pend.size == 0:
                    break
            if not ok.any():
                break
            if not ok.all():                            # line search failed: stop there
                retire(~ok)
                Vt, rg, gn, Cref = st["Vt"], st["rg"], st["gn"], st["Cref"]
                Vn, fn, Gn, t = Vn[ok], fn[ok], Gn[ok], t[ok]
        rgn = rgrad(Vn, Gn)
        nb = Vn.shape[0]
        Sd = (Vn - Vt).reshape(nb, -1)
        Yd = (rgn - rg).reshape(nb, -1)
        sy = np.abs(np.vecdot(Sd, Yd))
        if it % 2 == 0:
            bb = np.vecdot(Sd, Sd) / np.where(sy > 0, sy, 1.0)
        else:
            bb = sy / np.maximum(np.vecdot(Yd, Yd), 1e-300)
        st["step"] = np.minimum(np.maximum(np.where(sy > 0, bb, 2.0 * t), 1e-10), 1e10)
        Qk = st["Qk"]
        Qn = eta * Qk + 1.0
        st["Cref"] = (eta * Qk * Cref + fn) / Qn
        st["Qk"] = Qn
        st["Vt"], st["f"], st["rg"] = Vn, fn, rgn
        gn = st["gn"] = np.sqrt(sqnorm(rgn))
        done = gn < gtol
        if done.any():
            retire(done)
    if st["ids"].size:
        retire(np.ones(st["ids"].size, dtype=bool))
    return np.ascontiguousarray(out_V.transpose(0, 2, 1)), out_f


def find_center_subspace(centers, *, seed: int = 0, max_rank: int | None = None,
                         min_rank: int = 1, n_restarts: int = 10, max_iter: int = 500,
                         gtol: float = 1e-6) -> CenterSubspace:
    """Low-rank structure of the P manifold centers (rows of ``centers``, (P, N)).

    Works in the r <= P-1 coordinates of the span of the centered centers. For K = ``min_rank``,
    ..., K_max it minimises the squared residual correlations over orthonormal V (r x K), starting
    ``n_restarts`` times from [random combination of centers, V_(K-1)] and keeping the start whose
    least-preserved center keeps the largest fraction of its norm (public code's "stability").
    K_max = min(r - 1, n95 + 10) with n95 the number of components below 95 % of the variance
    (public: argmax + 11), so residuals keep at least one dimension; the search stops as soon as
    the mean |residual correlation| has risen three times in a row (the public code also always
    evaluates K = 5 and crashes when K_max exceeds P - 2; here K <= r - 1 always). The K with the
    lowest mean |residual correlation| is chosen. P = 2 (r = 1) gives K = 0: nothing can be
    removed. Cost: O(n_restarts x P^2 x K) per iteration, independent of N.
    """
    centers = np.asarray(centers, dtype=np.float64)
    P = centers.shape[0]
    if P < 2:
        raise ValueError("need at least 2 centers")
    X, lift, Xb = _centers_basis(centers)
    rho = _mean_abs_corr(X) if X.shape[1] else _mean_abs_corr(Xb)
    r = X.shape[1]
    sv2 = np.sum(X * X, axis=0)
    sv2 = np.sort(sv2)[::-1]
    if r == 0:
        return CenterSubspace(rho, 0, np.zeros((centers.shape[1], 0)), rho, ())
    cum = np.cumsum(sv2) / sv2.sum()
    n95 = int(np.sum(cum < 0.95))
    kmax_pub = max(n95 - 1, 0) + 11
    kmax = min(r - 1, kmax_pub if max_rank is None else int(max_rank))
    kmin = max(int(min_rank), 0)
    if kmax < max(kmin, 1):
        return CenterSubspace(rho, 0, np.zeros((centers.shape[1], 0)), rho, ())
    rng = np.random.default_rng([0, int(seed)])
    res, Vs = [], []
    V_prev = np.zeros((r, 0))
    xn = np.linalg.norm(X, axis=1)
    for K in range(1, kmax + 1):
        nr = max(1, int(n_restarts))
        s = rng.standard_normal((nr, P))
        V0 = np.concatenate([(s @ X)[:, :, None], np.broadcast_to(V_prev, (nr, r, K - 1))],
                            axis=2)
        Vs_r, _ = _stiefel_minimize(_qr_retract(V0), X, max_iter=max_iter, gtol=gtol)
        A = np.matmul(X, Vs_r)                                              # (nr, P, K)
        X0n = np.sqrt(np.maximum(xn[None, :] ** 2 - np.einsum("bpk,bpk->bp", A, A), 0.0))
        stab = np.min(X0n / np.where(xn > 0, xn, 1.0)[None, :], axis=1)
        best = Vs_r[int(np.argmax(stab))]
        V_prev = best
        X0 = X - (X @ best) @ best.T
        res.append(_mean_abs_corr(X0))
        Vs.append(best)
        if len(res) >= 4 and res[-1] > res[-2] > res[-3] > res[-4]:
            break
    cand = list(range(len(res)))
    if kmin > 1:
        cand = [i for i in cand if i + 1 >= kmin] or cand
    if kmin == 0:
        # K = 0 (no removal) competes with the searched ranks
        best_i = int(np.argmin(res))
        if rho <= res[best_i]:
            return CenterSubspace(rho, 0, np.zeros((centers.shape[1], 0)), rho, tuple(res))
    best_i = cand[int(np.argmin([res[i] for i in cand]))]
    K = best_i + 1
    basis = lift(Vs[best_i])
    return CenterSubspace(rho, K, basis, float(res[best_i]), tuple(float(v) for v in res))


# --------------------------------------------------------------------------------------------
# Preprocessing
# --------------------------------------------------------------------------------------------
def _as_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    a = np.asarray(x)
    if a.dtype.kind not in "fiub":
        raise ValueError(f"manifold features must be real numbers, got dtype {a.dtype}")
    return a


def _dedupe_columns(X: np.ndarray, gram: np.ndarray) -> np.ndarray:
    """Indices of the first occurrence of each distinct row of X (exact equality).
    Candidates come from the centered Gram matrix (squared distance ~ 0), then are compared
    exactly."""
    M = X.shape[0]
    if M == 1:
        return np.zeros(1, dtype=np.int64)
    g = np.diagonal(gram)
    d2 = g[:, None] + g[None, :] - 2.0 * gram
    thr = 1e-10 * float(g.max()) + 1e-300
    cj, ck = np.nonzero(np.triu(d2 <= thr, k=1))
    if cj.size == 0:
        return np.arange(M)
    drop = set()
    for j, k in zip(cj.tolist(), ck.tolist()):
        if k in drop or j in drop:
            continue
        if np.array_equal(X[j], X[k]):
            drop.add(k)
    return np.array([i for i in range(M) if i not in drop], dtype=np.int64)


def _gram_eigen_coordinates(G: np.ndarray, D: int) -> np.ndarray:
    """(b, D, M) coordinates from the eigendecompositions of a (b, M, M) stack of Gram matrices:
    the D largest eigen-directions, scaled by sqrt(eigenvalue)."""
    M = G.shape[-1]
    w, U = np.linalg.eigh(G)
    w, U = w[:, ::-1][:, :D], U[:, :, ::-1][:, :, :D]
    # eigenvalues at the rounding level of the Gram product are flat directions (their
    # coordinates would be ~sqrt(eps) noise instead of ~eps): set them to zero
    w = np.where(w > _GRAM_RTOL * M * w[:, :1], w, 0.0)
    return (U * np.sqrt(np.maximum(w, 0.0))[:, None, :]).transpose(0, 2, 1)


def _gram_coordinates(G: np.ndarray, D: int) -> np.ndarray:
    """Coordinates S (b, D, M) with S^T S = G for a (b, M, M) stack of centered Gram matrices
    (points minus their own mean, so G 1 = 0).

    With D = M (N > M): deflated Cholesky. The Householder reflection H that maps 1/sqrt(M) to
    the first axis turns G into H G H = [[0, 0], [0, B]]; B = L L^T (Cholesky, M - 1 rows) and
    S = [L^T H_(2:M); 0] (the last coordinate is the null direction 1, zero). That is about a
    tenth of the cost of an eigendecomposition and continuous in the data (the frame H depends
    on M only). Where B is singular or nearly so (a Cholesky pivot^2 below 1e-13 M x the largest
    diagonal entry of G: duplicate points, points in fewer than M - 1 dimensions) and when
    D < M (N <= M), the coordinates come from the eigendecomposition instead, with eigenvalues
    at the rounding level set to zero (:func:`_gram_eigen_coordinates`). Either way S is the
    points written in an orthonormal basis of their span (a rotation of the public code's QR
    coordinates: same law of every statistic)."""
    b, M, _ = G.shape
    if D < M or M < 2:
        return _gram_eigen_coordinates(G, D)
    w = np.full(M, 1.0 / math.sqrt(M))
    w[0] -= 1.0                                                    # u - e1, u = 1 / sqrt(M)
    H = np.eye(M) - (2.0 / (w @ w)) * np.outer(w, w)               # H u = e1, H = H^T = H^-1
    B = np.matmul(np.matmul(H, G), H)[:, 1:, 1:]
    top = np.max(np.diagonal(G, axis1=1, axis2=2), axis=1)
    L = np.zeros_like(B)
    ok = np.ones(b, dtype=bool)
    try:
        L[:] = np.linalg.cholesky(B)
    except np.linalg.LinAlgError:                   # one at a time, to find the singular ones
        for k in range(b):
            try:
                L[k] = np.linalg.cholesky(B[k])
            except np.linalg.LinAlgError:
                ok[k] = False
    piv2 = np.min(np.diagonal(L, axis1=1, axis2=2), axis=1) ** 2
    ok &= piv2 > _GRAM_RTOL * M * top
    S = np.zeros((b, D, M))
    S[:, :M - 1] = np.matmul(L.transpose(0, 2, 1), H[1:])
    if not ok.all():
        S[~ok] = _gram_eigen_coordinates(G[~ok], D)
    return S


def _remove_subspace(gram, X, center, Vb, inv_sc):
    """gram - A A^T, A = (X - c) Vb: the center subspace removed from a centered Gram matrix.
    A comes from the raw points (K columns, no centered copy of X), by the same arithmetic
    wherever it runs, so the result does not depend on which thread did it or when."""
    A = (X @ Vb if inv_sc == 1.0 else (X * inv_sc) @ Vb) - (center @ Vb)[None, :]
    return gram - A @ A.T


def _cpu_workers(num_workers) -> int:
    """Threads for the per-manifold work: ``num_workers`` if given, else the CPUs this process
    may use."""
    if num_workers is None:
        try:
            num_workers = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            num_workers = os.cpu_count() or 1
    n = int(num_workers)
    if n < 1:
        raise ValueError(f"num_workers must be >= 1, got {num_workers}")
    return n


def _split(costs, n: int) -> list:
    """Contiguous index groups of roughly equal total cost (at most n, none empty)."""
    costs = np.asarray(costs, dtype=np.float64)
    n = max(1, min(int(n), costs.size))
    # boundary k where the running cost is nearest to k/n of the total
    cum = np.concatenate([[0.0], np.cumsum(costs)])
    targets = cum[-1] * np.arange(1, n) / n
    i = np.searchsorted(cum, targets)                 # cum[i-1] < target <= cum[i]
    edges = np.where(cum[i] - targets <= targets - cum[i - 1], i, i - 1)
    bounds = [0, *sorted(set(int(e) for e in edges if 0 < e < costs.size)), costs.size]
    return [np.arange(a, b) for a, b in zip(bounds[:-1], bounds[1:])]


class _Pool:
    """``n - 1`` worker threads plus the calling thread, each limited to one BLAS and one torch
    thread while it lasts (numpy's BLAS calls and large ufuncs release the GIL, and the
    compiled center search does too). n = 1: everything runs in the calling thread with the
    threads configured outside."""

    def __init__(self, n: int):
        self.n = int(n)

    def __enter__(self):
        if self.n > 1:
            from concurrent.futures import ThreadPoolExecutor
            self._limits = _threads(1).__enter__()
            self._ex = ThreadPoolExecutor(max_workers=self.n - 1)
        return self

    def __exit__(self, *exc):
        if self.n > 1:
            self._ex.shutdown(wait=True)
            self._limits.__exit__(*exc)
        return False

    def submit(self, fn, *args):
        """Run fn(*args) in a worker (in the caller when n = 1); returns a result getter."""
        if self.n == 1:
            out = fn(*args)
            return lambda: out
        return self._ex.submit(fn, *args).result

    def map(self, fn, items) -> list:
        """[fn(x) for x in items], the last item in the calling thread; errors re-raised in
        item order."""
        items = list(items)
        if self.n == 1 or len(items) == 1:
            return [fn(x) for x in items]
        futs = [self._ex.submit(fn, x) for x in items[:-1]]
        last = None
        try:
            last = fn(items[-1])
        finally:
            outs = [f.result() for f in futs]      # waits for all; raises the first error
        return outs + [last]


class _Drain:
    """Per-manifold tasks taken in order by whichever thread is free (a shared counter)."""

    def __init__(self, fn, n_tasks: int):
        self.fn, self.n = fn, int(n_tasks)
        self.next = 0
        self.lock = threading.Lock()
        self.errors = {}

    def __call__(self):
        while True:
            with self.lock:
                i = self.next
                self.next += 1
            if i >= self.n:
                return
            try:
                self.fn(i)
            except Exception as e:                     # noqa: BLE001 - re-raised by raise_first
                self.errors[i] = e

    def raise_first(self):
        if self.errors:
            raise self.errors[min(self.errors)]


@dataclass
class _Prepared:
    """State of :func:`preprocess` between the global steps and the per-manifold ones."""
    ms: list
    N: int
    Ms: np.ndarray
    centers: np.ndarray
    inv_sc: float
    cs: CenterSubspace
    cnorm: np.ndarray
    basis: str
    grams: list
    keeps: list
    projected: np.ndarray         # Gram matrix i already has the center subspace removed

    def finish(self, idx) -> list:
        """S~ for the manifolds ``idx``: remove the center subspace from their centered Gram
        matrices (or points), coordinates from the Gram matrices (or QR), the
        center coordinate 1, duplicates dropped. Returns [(i, S_i)]."""
        N, cs, inv_sc = self.N, self.cs, self.inv_sc
        Vb = np.ascontiguousarray(cs.basis)                                   # N x K
        coords, by_M = {}, {}
        for i in idx:
            X = _as_numpy(self.ms[i])
            M = X.shape[0]
            if self.basis == "gram":
                gram = self.grams[i]
                if cs.K > 0 and not self.projected[i]:
                    gram = _remove_subspace(gram, X, self.centers[i], Vb, inv_sc)
                by_M.setdefault(M, []).append((i, (0.5 / self.cnorm[i] ** 2) * (gram + gram.T)))
            else:
                Xc = X - self.centers[i][None, :] if inv_sc == 1.0 else \
                    X * inv_sc - self.centers[i][None, :]
                Z = Xc - (Xc @ Vb) @ Vb.T if cs.K > 0 else Xc
                Z = Z / self.cnorm[i]
                coords[i] = np.linalg.qr(Z.T, mode="r") if N > M else Z.T
        for M, items in by_M.items():                                       # batched per M
            cs_ = _gram_coordinates(np.stack([gm for _, gm in items]), M if N > M else N)
            for (i, _), c in zip(items, cs_):
                coords[i] = c
        out = []
        for i in idx:
            M = int(self.Ms[i])
            S = np.vstack([coords[i], np.ones((1, M))])[:, self.keeps[i]]
            out.append((i, np.ascontiguousarray(S)))
        return out

    def result(self, S_by_index: dict) -> Preprocessed:
        P = len(self.ms)
        D = np.array([int(self.Ms[i]) if self.N > self.Ms[i] else self.N for i in range(P)])
        return Preprocessed(tuple(S_by_index[i] for i in range(P)), D, self.Ms,
                            np.array([len(k) for k in self.keeps]), self.cnorm, self.cs)


def _prepare(manifolds, pool: _Pool, *, center_removal: bool, seed: int, max_rank, min_rank: int,
             n_restarts: int, basis: str) -> _Prepared:
    """The global steps of :func:`preprocess`: centers, global centering, the center subspace,
    and (``basis="gram"``) each manifold's centered Gram matrix. The Gram matrices do not
    depend on the center subspace: the pool's workers compute them while the calling thread
    runs the center search, and it joins them when the search is done."""
    ms = _validate_manifolds(manifolds)
    if basis not in ("gram", "qr"):
        raise ValueError(f"basis must be 'gram' or 'qr', got {basis!r}")
    P = len(ms)
    N = int(ms[0].shape[1])
    # pass 1 (memory-bound, split over the threads): validity, centers, magnitudes
    centers = np.empty((P, N))
    Ms = np.array([m.shape[0] for m in ms], dtype=np.int64)
    mags = np.zeros(P)

    def center(idx):
        for i in idx:
            X = _as_numpy(ms[i])
            s = np.add.reduce(X, axis=0, dtype=np.float64)
            if not np.isfinite(s).all():
                nbad = int(np.sum(~np.isfinite(X)))
                what = f"{nbad} NaN or infinite feature values" if nbad else \
                    "values so large that their sum overflows"
                raise ValueError(f"manifold {i} has {what}; remove or impute them (e.g. drop "
                                 "those samples) before the analysis")
            np.divide(s, X.shape[0], out=centers[i])
            mags[i] = max(float(np.max(np.abs(X[0]))), float(np.max(np.abs(centers[i]))))

    pool.map(center, _split(Ms * float(N), pool.n))
    mag = float(mags.max())
    # the method is scale-invariant: bring extreme magnitudes to ~1 by an exact power of 2 so
    # that Gram products neither overflow nor underflow (no-op for ordinary data)
    inv_sc = 1.0
    if mag > 2.0 ** 60 or 0.0 < mag < 2.0 ** -60:
        inv_sc = 2.0 ** -round(math.log2(mag))
        centers *= inv_sc
    mu = (Ms[:, None] * centers).sum(axis=0) / float(Ms.sum())
    C = centers - mu
    grams, keeps = [None] * P, [None] * P

    local = threading.local()                          # a centered-points buffer per thread

    def centered_gram(i):
        X = _as_numpy(ms[i])
        buf = getattr(local, "buf", None)
        if buf is None or buf.shape[0] < X.shape[0]:
            buf = local.buf = np.empty((int(Ms.max()), N))
        Xc = buf[:X.shape[0]]
        if inv_sc == 1.0:
            np.subtract(X, centers[i][None, :], out=Xc)
        else:
            np.multiply(X, inv_sc, out=Xc)
            Xc -= centers[i][None, :]
        with np.errstate(over="ignore", invalid="ignore"):   # checked just below
            g = Xc @ Xc.T
        if not np.isfinite(g).all():
            raise ValueError(f"manifold {i}: feature values too large (squared norms "
                             "overflow); rescale the features")
        keeps[i] = _dedupe_columns(X, g)
        if basis == "gram":
            Vb = found.get("Vb")                       # the search is done: project while the
            if Vb is not None:                         # points are in cache
                g = _remove_subspace(g, X, centers[i], Vb, inv_sc)
                projected[i] = True
            grams[i] = g

    found, projected = {}, np.zeros(P, dtype=bool)
    drain = _Drain(centered_gram, P)
    waits = [pool.submit(drain) for _ in range(pool.n - 1)]
    try:
        if center_removal:
            cs = find_center_subspace(C, seed=seed, max_rank=max_rank, min_rank=min_rank,
                                      n_restarts=n_restarts)
        else:
            rho = center_correlation(C)
            cs = CenterSubspace(rho, 0, np.zeros((N, 0)), rho, ())
        Vb = np.ascontiguousarray(cs.basis)                              # N x K
        if cs.K > 0:
            found["Vb"] = Vb
        # residual center norms (while the other threads still compute Gram matrices)
        Cc = C - (C @ Vb) @ Vb.T if cs.K > 0 else C
        cnorm = np.linalg.norm(Cc, axis=1)
        scale = float(np.max(np.linalg.norm(C, axis=1)))
        del Cc
    finally:
        drain()                                       # the calling thread joins the Gram work
        for w in waits:
            w()
    drain.raise_first()                               # a manifold's error, lowest index first
    for i in range(P):
        if not cnorm[i] > 1e-12 * max(scale, 1e-300):
            raise ValueError(
                f"manifold {i}: its center coincides with the global mean (norm {cnorm[i]:.3g} "
                "after centering and center-subspace removal), so the center-normalised geometry "
                "is undefined; check for a constant or duplicated class, or pass "
                "center_removal=False")
    return _Prepared(ms, N, Ms, centers, inv_sc, cs, cnorm, basis, grams, keeps, projected)


def preprocess(manifolds, *, center_removal: bool = True, seed: int = 0,
               max_rank: int | None = None, min_rank: int = 1, n_restarts: int = 10,
               basis: str = "gram", device=None, num_workers: int | None = None) -> Preprocessed:
    """Steps 1-3 of the method: global centering, center correlation and low-rank removal,
    per-manifold normalisation, coordinates in a basis of the manifold's span, center coordinate.

    ``basis="gram"`` (default) factors the manifold's centered Gram matrix (M x M, one BLAS-3
    product per manifold; batched deflated Cholesky, see :func:`_gram_coordinates`);
    ``basis="qr"`` the R factor of a Householder QR of the centered (N x M) points as in the
    public code. The two differ by a
    rotation of the D manifold coordinates only, which leaves the law of every statistic
    unchanged (T is isotropic). D = M when N > M (public code), else D = N.
    Exact duplicate points are dropped after the center is computed (they change neither the
    convex hull nor F, anchors, R or D; D stays as if they were kept).
    Runs on the CPU in numpy (``device`` is accepted for symmetry and ignored), in
    ``num_workers`` threads (default: the usable CPUs); the result does not depend on it.
    """
    seed = _check_seed(seed)
    with _Pool(_cpu_workers(num_workers)) as pool:
        prep = _prepare(manifolds, pool, center_removal=center_removal, seed=seed,
                        max_rank=max_rank, min_rank=min_rank, n_restarts=n_restarts,
                        basis=basis)
        groups = _split(prep.Ms.astype(np.float64) ** 2, pool.n)
        S = dict(kv for part in pool.map(prep.finish, groups) for kv in part)
    return prep.result(S)


def sample_t(D1s: Sequence[int], n_t: int, seed: int = 0) -> list:
    """Gaussian T vectors: for manifold i an (n_t, D1s[i]) array, from the seed sequence
    (seed, i) only (so a manifold's T do not depend on the other manifolds)."""
    n_t = _check_n_t(n_t)
    seed = _check_seed(seed)
    return [_t_vectors(int(d), n_t, seed, i) for i, d in enumerate(D1s)]


def _t_vectors(D1: int, n_t: int, seed: int, i: int) -> np.ndarray:
    return np.random.default_rng([1, seed, i]).standard_normal((n_t, D1))


# --------------------------------------------------------------------------------------------
# KKT verification
# --------------------------------------------------------------------------------------------
def kkt_residual(S, T, V, lam, kappa: float = 0.0) -> np.ndarray:
    """Relative KKT residual of (V, lam) for min ||V-T||^2 s.t. S^T V >= kappa, per T.

    With unit-norm constraint normals s_hat_j = s_j/||s_j||, mu_j = lam_j ||s_j||, slack
    g_j = s_hat_j . V - kappa/||s_j|| and length scale l = max(||T||, ||V||, |kappa|):
    max of  primal [-g]_+ / l,  dual [-mu]_+ / l,  complementarity mu |g| / l^2,
    stationarity ||V - T - S lam|| / l.
    S: (D+1, M); T, V: (n, D+1); lam: (n, M).
    """
    S = np.asarray(S, np.float64)
    T = np.atleast_2d(np.asarray(T, np.float64))
    V = np.atleast_2d(np.asarray(V, np.float64))
    lam = np.atleast_2d(np.asarray(lam, np.float64))
    d = np.linalg.norm(S, axis=0)
    d = np.where(d > 0, d, 1.0)
    g = (V @ S - kappa) / d
    mu = lam * d
    ell = np.maximum.reduce([np.linalg.norm(T, axis=1), np.linalg.norm(V, axis=1),
                             np.full(T.shape[0], abs(kappa)), np.full(T.shape[0], 1e-300)])
    prim = np.max(np.maximum(-g, 0.0), axis=1) / ell
    dual = np.max(np.maximum(-mu, 0.0), axis=1) / ell
    comp = np.max(np.abs(mu * g), axis=1) / ell ** 2
    stat = np.linalg.norm(V - T - lam @ S.T, axis=1) / ell
    return np.maximum.reduce([prim, dual, comp, stat])


# --------------------------------------------------------------------------------------------
# Per-T solvers
# --------------------------------------------------------------------------------------------
def solve_f_nnls(S, T, kappa: float = 0.0):
    """Exact per-T solution via the least-distance form and Lawson-Hanson NNLS (any kappa).

    With x = V - T: min ||x|| s.t. S_hat^T x >= h, h = kappa/||s|| - S_hat^T T. With E = [S_hat;
    h^T] and f = e_(D+2), u = argmin_{u >= 0} ||E u - f||, rho = 1 - h.u > 0, the solution is
    x = S_hat u / rho and mu = u / rho (Lawson & Hanson 1974, ch. 23). Returns (V, lam).
    """
    from scipy.optimize import nnls
    S = np.asarray(S, np.float64)
    T = np.atleast_2d(np.asarray(T, np.float64))
    d = np.linalg.norm(S, axis=0)
    d = np.where(d > 0, d, 1.0)
    Sh = S / d
    n, M = T.shape[0], S.shape[1]
    Vout = np.empty_like(T)
    lam = np.zeros((n, M))
    f = np.zeros(S.shape[0] + 1)
    f[-1] = 1.0
    for i in range(n):
        h = kappa / d - Sh.T @ T[i]
        if np.all(h <= 0):                       # V = T feasible: interior
            Vout[i] = T[i]
            continue
        E = np.vstack([Sh, h[None, :]])
        try:
            u, _ = nnls(E, f, maxiter=50 * M + 100)
        except RuntimeError:
            u, _ = nnls(E, f, maxiter=5000 * M)
        rho = 1.0 - h @ u
        if not rho > 0:
            raise RuntimeError("least-distance problem reported infeasible; cannot happen for "
                               "point sets with center coordinate 1")
        mu = u / rho
        lam[i] = mu / d
        Vout[i] = T[i] + Sh @ mu
    return Vout, lam


_CVX_OPTS = {"show_progress": False, "maxiters": 1000, "abstol": 1e-12, "reltol": 1e-12,
             "feastol": 1e-12}


def solve_f_cvxopt(S, T, kappa: float = 0.0) -> SolveResult:
    """Oracle: one cvxopt QP per T (as the public code): min 1/2 V.V - T.V s.t. -S^T V <= -kappa."""
    from cvxopt import matrix, solvers
    S = np.asarray(S, np.float64)
    T = np.atleast_2d(np.asarray(T, np.float64))
    n, D1 = T.shape
    M = S.shape[1]
    Pm = matrix(np.eye(D1))
    Gm = matrix(np.ascontiguousarray(-S.T))
    hm = matrix(np.full(M, -float(kappa)))
    V = np.empty_like(T)
    lam = np.zeros((n, M))
    old = dict(solvers.options)
    solvers.options.update(_CVX_OPTS)
    try:
        for i in range(n):
            out = solvers.qp(Pm, matrix(-T[i]), Gm, hm)
            V[i] = np.array(out["x"]).ravel()
            lam[i] = np.array(out["z"]).ravel()
    finally:
        solvers.options.clear()
        solvers.options.update(old)
    W = V - T
    F = np.sum(W * W, axis=1)
    kkt = kkt_residual(S, T, V, lam, kappa)
    return SolveResult(F, V, lam, kkt, np.full(n, 5, dtype=np.int8))


def _fista_group(Sh, Tp, Tmask, d, kappa, tol, max_iter, check_every, Gh=None):
    """Accelerated projected gradient on the Jacobi-scaled dual for a padded group.

    Sh: (B, D1, M) unit-norm columns (padding columns zero); Tp: (B, n, D1); Tmask: (B, n) bool
    (True for real T); d: (B, M) column norms (0 on padding). Returns mu (B, n, M) and a bool
    (B, n) convergence mask (KKT <= tol, Gram-based check). Converged T are dropped from the
    iteration (repacking manifolds and T) so that a few slow T do not keep the whole batch busy.
    """
    B, D1, M = Sh.shape
    n = Tp.shape[1]
    dev = Sh.device
    pad = d == 0
    if Gh is None:
        Gh = torch.bmm(Sh.transpose(1, 2), Sh)
        Gh.diagonal(dim1=1, dim2=2).copy_(torch.where(pad, 1.0, Gh.diagonal(dim1=1, dim2=2)))
    kd = torch.where(pad, 0.0, kappa / torch.where(pad, 1.0, d))         # (B, M)
    bh = torch.bmm(Tp, Sh) - kd[:, None, :]
    bh = torch.where(pad[:, None, :], 1.0, bh)
    ev = torch.linalg.eigvalsh(Gh)
    L = ev[:, -1] * (1.0 + 1e-10)
    # momentum capped by the strong-convexity ratio (no cap when G is singular: FISTA + restart)
    q = torch.clamp(ev[:, 0] / L, min=0.0, max=1.0)
    beta_c = ((1 - torch.sqrt(q)) / (1 + torch.sqrt(q)))[:, None]        # (B, 1)
    negL = (-1.0 / L)[:, None, None]
    Tn2 = (Tp * Tp).sum(-1)                                                # (B, n)
    k2 = kappa * kappa
    out = torch.zeros((B, n, M), dtype=_DTYPE, device=dev)
    conv = ~Tmask.clone()
    # working set: manifolds `wb` (B',) and T slots `wt` (B', n') into the original layout
    wb = torch.arange(B, device=dev)
    wt = torch.arange(n, device=dev)[None, :].expand(B, n).clone()
    valid = Tmask.clone()
    kdw = kd[:, None, :]
    Tn2w = Tn2
    # warm start: exact when the constraint normals are orthogonal (G_hat = I)
    x = torch.clamp(-bh, min=0.0)
    y = x.clone()
    t = torch.ones((B, n), dtype=_DTYPE, device=dev)
    for it in range(1, max_iter + 1):
        g = torch.baddbmm(bh, y, Gh)
        xn = torch.addcmul(y, g, negL).clamp_min_(0.0)
        dlt = xn - x
        rs = torch.linalg.vecdot(g, dlt) > 0
        tn = 0.5 * (1.0 + torch.sqrt(1.0 + 4.0 * t * t))
        beta = torch.minimum((t - 1.0) / tn, beta_c)
        beta = torch.where(rs, 0.0, beta)
        tn = torch.where(rs, 1.0, tn)
        y = torch.addcmul(xn, beta[..., None], dlt)
        x, t = xn, tn
        if it % check_every and it != max_iter:
            continue
        slack = torch.baddbmm(bh, x, Gh)
        vn2 = (Tn2w + torch.linalg.vecdot(x, bh + slack)
               + 2.0 * torch.linalg.vecdot(x, kdw.expand_as(x)))
        ell2 = torch.clamp(torch.maximum(torch.maximum(Tn2w, vn2), torch.full_like(vn2, k2)),
                           min=1e-300)
        prim = torch.clamp(-slack, min=0.0).amax(-1) / torch.sqrt(ell2)
        comp = (x * slack.abs()).amax(-1) / ell2
        ok = (torch.maximum(prim, comp) <= tol) & valid
        if bool(ok.any()):
            bb = wb[:, None].expand_as(wt)[ok]
            tt = wt[ok]
            out[bb, tt] = x[ok]
            conv[bb, tt] = True
            valid = valid & ~ok
        nleft = valid.sum(dim=1)
        total = int(nleft.sum())
        if total == 0:
            break
        if total <= 0.5 * valid.numel() and it != max_iter:
            keep = nleft > 0
            nmax = int(nleft.max())
            order = torch.argsort((~valid[keep]).to(torch.int8), dim=1, stable=True)[:, :nmax]
            wb = wb[keep]
            wt = wt[keep].gather(1, order)
            valid = torch.arange(nmax, device=dev)[None, :] < nleft[keep][:, None]
            o3 = order[..., None].expand(-1, -1, M)
            Gh, negL, beta_c = Gh[keep], negL[keep], beta_c[keep]
            bh = bh[keep].gather(1, o3)
            x = x[keep].gather(1, o3)
            y = y[keep].gather(1, o3)
            t = t[keep].gather(1, order)
            Tn2w = Tn2w[keep].gather(1, order)
            kdw = kdw[keep]
    # unconverged: hand back the last iterate
    if bool(valid.any()):
        bb = wb[:, None].expand_as(wt)[valid]
        out[bb, wt[valid]] = x[valid]
    return out, conv


def _fista_mixed_chunk(G, bh, x, T2, kdw, negL, beta_c, valid, tol, k2, rounds):
    """Stage 1 on the CPU for a chunk of manifolds: float32 iterations, float64 refinement.

    Each round computes the float64 gradient r = bh + x G (which is also the slack of the
    constraints), checks the KKT conditions in float64 (primal -r <= tol l, complementarity
    x |r| <= tol l^2; x >= 0 and stationarity hold by construction; from the second float32
    round on, and after the last), and runs ``rounds[i]``
    accelerated projected-gradient iterations in float32 on the correction d of x:
    min 1/2 d^T G d + r^T d s.t. d >= -x, keeping the momentum of the previous round (so the
    rounds are one accelerated iteration whose gradient is refreshed in float64). Each round can
    gain up to seven digits (float32 has eight), as in mixed-precision iterative refinement,
    until the check passes. x (b, n, M) is
    updated in place; returns the (b, n) mask of verified T (invalid slots count as verified).
    """
    conv = ~valid
    slack = np.empty_like(x)
    shp = x.shape
    Gs = (G * negL).astype(np.float32)                  # -G / L
    r32, lo = np.empty(shp, np.float32), np.empty(shp, np.float32)
    d, y, dn, u = (np.empty(shp, np.float32) for _ in range(4))
    fused = _jit_kernel("fista_update")
    for rnd in range(len(rounds) + 1):
        np.matmul(x, G, out=slack)
        slack += bh
        # (after one float32 round x is at best ~1e-7 accurate: the first check is after two)
        if rnd > 1 or (rnd > 0 and rnd == len(rounds)):
            vn2 = T2 + np.vecdot(x, bh + slack)
            if kdw is not None:
                vn2 += 2.0 * np.vecdot(x, np.broadcast_to(kdw, shp))
            ell2 = np.maximum(np.maximum(T2, vn2), max(k2, 1e-300))
            z = x * slack
            comp = np.maximum(np.max(z, axis=-1), -np.min(z, axis=-1))
            conv |= (-np.min(slack, axis=-1) <= tol * np.sqrt(ell2)) & (comp <= tol * ell2)
        if rnd == len(rounds) or conv.all():
            break
        np.multiply(slack, negL, out=r32)                   # -r / L
        np.negative(x, out=lo)
        if rnd == 0:
            y.fill(0.0)
            t = np.ones(shp[:2], np.float32)
        else:                       # continue the momentum of the previous round, re-centred
            y -= d
            y[conv] = 0.0
        d.fill(0.0)
        for _ in range(rounds[rnd]):
            np.matmul(y, Gs, out=u)
            if fused is not None:                           # the same update, compiled
                fused(u, y, d, dn, r32, lo, t, beta_c)
                d, dn = dn, d
                continue
            u += r32                                        # u = -grad / L
            np.add(u, y, out=dn)
            np.maximum(dn, lo, out=dn)
            np.subtract(dn, d, out=y)                       # the step
            rs = np.vecdot(u, y) < 0                        # gradient restart
            tn = 0.5 * (1.0 + np.sqrt(1.0 + 4.0 * t * t))
            beta = np.minimum((t - 1.0) / tn, beta_c)
            beta[rs] = 0.0
            tn[rs] = 1.0
            y *= beta[..., None]
            y += dn
            d, dn, t = dn, d, tn
        d[conv] = 0.0                                       # verified T keep their x
        x += d
        np.maximum(x, 0.0, out=x)
    return conv


def _fista_cpu(Gh, Sh, Tp, run, kd, pad, kappa, tol, max_iter, check_every):
    """Stage 1 on the CPU (numpy): the problem of :func:`_fista_group` (Jacobi-scaled dual,
    momentum capped by the condition number, gradient restart), iterated in float32 with
    float64 refinement and float64 KKT checks every ``check_every`` iterations
    (:func:`_fista_mixed_chunk`), in chunks of manifolds that stay in the CPU cache.
    Gh: (B, M, M) float64 with unit diagonal on padding. Returns mu (B, n, M) float64 and the
    (B, n) mask of T that passed the check."""
    B, D1, M = Sh.shape
    n = Tp.shape[1]
    bh = np.matmul(Tp, Sh)
    if kappa != 0.0:
        bh -= kd[:, None, :]
    bh[np.broadcast_to(pad[:, None, :], bh.shape)] = 1.0
    ev = np.linalg.eigvalsh(Gh)
    L = ev[:, -1] * (1.0 + 1e-5)                  # margin for the float32 products
    q = np.clip(ev[:, 0] / L, 0.0, 1.0)
    beta_c = ((1.0 - np.sqrt(q)) / (1.0 + np.sqrt(q))).astype(np.float32)[:, None]
    negL = (-1.0 / L).astype(np.float32)[:, None, None]
    Tn2 = np.einsum("bnd,bnd->bn", Tp, Tp)
    x = np.maximum(-bh, 0.0)
    conv = np.ones((B, n), dtype=bool)
    ce = max(1, int(check_every))
    rounds = [ce] * (max(0, int(max_iter)) // ce)
    if max_iter % ce:
        rounds.append(max_iter % ce)
    kdn = kd[:, None, :] if kappa != 0.0 else None
    per = max(1, _FISTA_CHUNK // max(1, n * M))      # ~1 MB of float32 per working array
    for c0 in range(0, B, per):
        sl = slice(c0, c0 + per)
        conv[sl] = _fista_mixed_chunk(Gh[sl], bh[sl], x[sl], Tn2[sl],
                                      None if kdn is None else kdn[sl], negL[sl], beta_c[sl],
                                      run[sl], tol, kappa * kappa, rounds)
    return x, conv


def _pdas(Gh, bh, x0, valid, pad, Tn2, kd, tol, max_iter=20):
    """Primal-dual active set (semismooth Newton) polish, in the packed (manifold, slot) layout.

    Gh: (B, M, M) scaled Gram (unit diagonal), bh, x0: (B, n, M), valid: (B, n), pad: (B, M),
    Tn2: (B, n), kd: (B, M). Each step takes the support A = {x - slack > 0}, solves the
    equality-constrained problem on it exactly (Cholesky of the |A| x |A| block, gathered
    compactly; pseudo-inverse when singular) and checks the KKT conditions; problems that
    converge, reach a fixed point or cycle leave the batch (repacked). Returns the best iterate
    (B, n, M) and its Gram-based residual (B, n).
    """
    B, n, M = bh.shape
    dev = Gh.device
    best = x0.clone()
    res = torch.full((B, n), float("inf"), dtype=_DTYPE, device=dev)
    # working set (repacked as problems leave)
    wb = torch.arange(B, device=dev)
    wt = torch.arange(n, device=dev)[None, :].expand(B, n).clone()
    live = valid.clone()
    Gw, bw, x, T2, padw, kdw = Gh, bh, x0.clone(), Tn2, pad[:, None, :], kd[:, None, :]
    slack = torch.baddbmm(bw, x, Gw)
    stall = torch.zeros((B, n), dtype=torch.int8, device=dev)
    rbest = torch.full((B, n), float("inf"), dtype=_DTYPE, device=dev)
    for _ in range(max_iter):
        if not bool(live.any()):
            break
        Bw = x.shape[0]
        A = ((x - slack) > 0) & ~padw & live[..., None]
        cnt = A.sum(-1)
        k = max(int(cnt.max()), 1)
        idx = torch.argsort((~A).to(torch.int8), dim=-1, stable=True)[..., :k]     # (Bw, n', k)
        smf = (torch.arange(k, device=dev) < cnt[..., None]).to(_DTYPE)
        bi4 = torch.arange(Bw, device=dev)[:, None, None, None]
        GA = Gw[bi4, idx[..., :, None], idx[..., None, :]]                         # (Bw, n', k, k)
        GA = GA * smf[..., :, None] * smf[..., None, :] + torch.diag_embed(1.0 - smf)
        rhs = (-bw.gather(2, idx) * smf)[..., None]
        Lc, info = torch.linalg.cholesky_ex(GA)
        sol = torch.cholesky_solve(rhs, Lc)
        bad = info != 0
        if bool(bad.any()):
            sol[bad] = torch.linalg.pinv(GA[bad], hermitian=True) @ rhs[bad]
        x = torch.zeros_like(x).scatter_add_(2, idx, sol[..., 0] * smf)
        slack = torch.baddbmm(bw, x, Gw)
        vn2 = (T2 + torch.linalg.vecdot(x, bw + slack)
               + 2.0 * torch.linalg.vecdot(x, kdw.expand_as(x)))
        ell2 = torch.clamp(torch.maximum(T2, vn2), min=1e-300)
        ell = torch.sqrt(ell2)
        prim = torch.clamp(-slack.masked_fill(padw, 0.0), min=0.0).amax(-1) / ell
        dual = torch.clamp(-x, min=0.0).amax(-1) / ell
        comp = (x * slack).abs().amax(-1) / ell2
        r = torch.maximum(torch.maximum(prim, dual), comp)
        imp = live & (r < rbest)
        if bool(imp.any()):
            bb, tt = wb[:, None].expand_as(wt)[imp], wt[imp]
            res[bb, tt] = r[imp]
            best[bb, tt] = x[imp]
        stall = torch.where(live & (r < 0.5 * rbest), 0, stall + 1).to(torch.int8)
        rbest = torch.where(imp, r, rbest)
        newA = ((x - slack) > 0) & ~padw
        stuck = (newA == A).all(-1) | (stall >= 4)          # fixed point, or cycling
        live = live & ~((r <= tol) | stuck)
        nl = int(live.sum())
        if 0 < nl <= 0.6 * live.numel():
            rows, order, v = _pack(live)
            o3 = order[..., None].expand(-1, -1, M)
            wb, wt = wb[rows], wt[rows].gather(1, order)
            Gw, padw, kdw = Gw[rows], padw[rows], kdw[rows]
            bw, x, slack = bw[rows].gather(1, o3), x[rows].gather(1, o3), slack[rows].gather(1, o3)
            T2, stall = T2[rows].gather(1, order), stall[rows].gather(1, order)
            rbest = rbest[rows].gather(1, order)
            live = v
    return best, res


def _pack(mask: torch.Tensor):
    """Pack the True entries of a (B, n) mask per row: returns (rows (B',), order (B', n'),
    valid (B', n')) with order[i, :count] the column indices of row rows[i]."""
    cnt = mask.sum(dim=1)
    rows = torch.nonzero(cnt > 0).flatten()
    if rows.numel() == 0:
        return rows, None, None
    nmax = int(cnt.max())
    order = torch.argsort((~mask[rows]).to(torch.int8), dim=1, stable=True)[:, :nmax]
    valid = torch.arange(nmax, device=mask.device)[None, :] < cnt[rows][:, None]
    return rows, order, valid


def _lawson_hanson(Sh, h, valid, pad, max_steps=None):
    """Batched Lawson-Hanson NNLS for the least-distance form of the per-T problem.

    For each (manifold b, slot i): u = argmin_{u >= 0} ||E u - f||, E = [S_hat_b; h_bi^T],
    f = e_last; then rho = 1 - h.u and mu = u / rho (Lawson & Hanson 1974, ch. 23). The passive
    set is kept as at most D1 + 1 slots (its columns stay linearly independent), so the cost per
    step is that of a k x k solve with k <= D1 + 1, and products go through S_hat (D1 x M), never
    the M x M Gram matrix: this is the exact path for degenerate problems (many points in few
    dimensions, duplicates). Sh: (B, D1, M), h: (B, n, M), valid: (B, n), pad: (B, M).
    Returns (mu, ok).
    """
    B, D1, M = Sh.shape
    n = h.shape[1]
    dev = Sh.device
    k = min(M, D1 + 1)
    steps = max_steps or (3 * k + 20)
    z = torch.zeros((B, n, M), dtype=_DTYPE, device=dev)
    idx = torch.zeros((B, n, k), dtype=torch.long, device=dev)
    sm = torch.zeros((B, n, k), dtype=torch.bool, device=dev)
    inner = torch.zeros((B, n), dtype=torch.bool, device=dev)
    done = ~valid.clone()
    fail = torch.zeros((B, n), dtype=torch.bool, device=dev)
    hscale = torch.clamp(h.abs().amax(-1), min=1.0)
    ShT = Sh.transpose(1, 2).contiguous()                                     # (B, M, D1)
    bidx = torch.arange(B, device=dev)[:, None, None]
    for _ in range(steps):
        if bool(done.all()):
            break
        add = ~inner & ~done
        if bool(add.any()):
            w = -torch.bmm(torch.bmm(z, ShT), Sh) + h * (1.0 - (h * z).sum(-1, keepdim=True))
            # (unused slots point at column 0 with weight 0: accumulate, never overwrite)
            inP = torch.zeros((B, n, M), dtype=torch.int16, device=dev).scatter_add_(
                2, idx, sm.to(torch.int16)) > 0
            w = w.masked_fill(inP | pad[:, None, :], -float("inf"))
            wmax, j = w.max(dim=-1)
            fin = add & (wmax <= 1e-13 * hscale)
            done |= fin
            add &= ~fin
            full = sm.all(-1)
            fail |= add & full
            done |= add & full
            add &= ~full
            free = torch.argmin(sm.to(torch.int8), dim=-1)                    # first free slot
            upd = add[..., None] & (torch.arange(k, device=dev) == free[..., None])
            idx = torch.where(upd, j[..., None], idx)
            sm = sm | upd
        act = ~done
        if not bool(act.any()):
            break
        # least squares on the passive slots: (G_PP + h_P h_P^T) s = h_P
        hP = torch.gather(h, 2, idx)                                           # (B, n, k)
        SP = ShT[bidx, idx]                                                    # (B, n, k, D1)
        GP = torch.matmul(SP, SP.transpose(-1, -2))                            # (B, n, k, k)
        smf = sm.to(_DTYPE)
        A = (GP + hP[..., :, None] * hP[..., None, :]) * smf[..., :, None] * smf[..., None, :]
        A = A + torch.diag_embed(1.0 - smf)
        rhs = (hP * smf)[..., None]
        Lc, info = torch.linalg.cholesky_ex(A)
        s = torch.cholesky_solve(rhs, Lc)[..., 0]
        bad = info != 0
        if bool(bad.any()):
            s[bad] = (torch.linalg.pinv(A[bad], hermitian=True) @ rhs[bad])[..., 0]
        s = s * smf
        zP = torch.gather(z, 2, idx) * smf
        neg = sm & (s <= 0)
        feas = ~neg.any(-1)
        # feasible: accept s; infeasible: move towards s and drop the slots that hit zero
        ratio = torch.where(neg, zP / torch.clamp(zP - s, min=1e-300), torch.full_like(s, 2.0))
        alpha = torch.clamp(ratio.amin(-1), min=0.0, max=1.0)
        znew = torch.where(feas[..., None], s, zP + alpha[..., None] * (s - zP))
        zscale = torch.clamp(zP.abs().amax(-1, keepdim=True), min=1e-300)
        drop = ~feas[..., None] & sm & (znew <= 1e-14 * zscale)
        drop |= ~feas[..., None] & neg & (ratio <= alpha[..., None])
        znew = torch.where(drop, 0.0, znew) * smf
        sm = sm & ~(drop & act[..., None])
        znew = torch.where(act[..., None], znew, zP)
        z = torch.zeros_like(z).scatter_add_(2, idx, znew * sm.to(_DTYPE))
        inner = act & ~feas
    fail |= ~done
    rho = 1.0 - (h * z).sum(-1)
    fail |= ~(rho > 0)
    mu = z / torch.where(rho > 0, rho, 1.0)[..., None]
    return mu, valid & ~fail


def _verify(Sh, Tp, mu, kd, pad, kappa):
    """Explicit relative KKT residual (B, n) and S_hat mu (B, n, D1): V = T + S_hat mu, slacks
    S_hat^T V - kappa/d (stationarity holds by construction)."""
    if Sh.device.type == "cpu" and _NUMPY_ON_CPU:   # same computation in numpy, cache-sized chunks
        Shn, Tn, mun, kdn, padn = (a.numpy() for a in (Sh, Tp, mu, kd, pad))
        B, n, M = mun.shape
        W = np.empty(Tn.shape)
        kkt = np.empty((B, n))
        per = max(1, 100_000 // max(1, n * max(M, Tn.shape[2])))
        for c0 in range(0, B, per):
            sl = slice(c0, c0 + per)
            Wc, muc = W[sl], mun[sl]
            np.matmul(muc, Shn[sl].transpose(0, 2, 1), out=Wc)
            V = Tn[sl] + Wc
            g = np.matmul(V, Shn[sl])
            if kappa != 0.0:
                g -= kdn[sl, None, :]
            g[np.broadcast_to(padn[sl, None, :], g.shape)] = 1.0
            ell = np.maximum(np.sqrt(np.maximum(np.vecdot(Tn[sl], Tn[sl]), np.vecdot(V, V))),
                             max(abs(kappa), 1e-300))
            prim = np.maximum(-np.min(g, axis=-1), 0.0) / ell
            dual = np.maximum(-np.min(muc, axis=-1), 0.0) / ell
            g *= muc
            comp = np.maximum(np.max(g, axis=-1), -np.min(g, axis=-1)) / (ell * ell)
            kkt[sl] = np.maximum(np.maximum(prim, dual), comp)
        return torch.from_numpy(kkt), torch.from_numpy(W)
    W = torch.bmm(mu, Sh.transpose(1, 2))
    V = Tp + W
    g = torch.bmm(V, Sh) - kd[:, None, :]
    g = torch.where(pad[:, None, :], 1.0, g)
    ell = torch.clamp(torch.maximum(torch.maximum(torch.linalg.norm(Tp, dim=-1),
                                                  torch.linalg.norm(V, dim=-1)),
                                    torch.full_like(V[..., 0], abs(kappa))), min=1e-300)
    prim = torch.clamp(-g, min=0.0).amax(-1) / ell
    dual = torch.clamp(-mu, min=0.0).amax(-1) / ell
    comp = (mu * g).abs().amax(-1) / ell ** 2
    return torch.maximum(torch.maximum(prim, dual), comp), W


def _group_indices(Ms, n_list, budget=4_000_000):
    order = np.argsort(Ms, kind="stable")
    groups, cur = [], []
    for i in order:
        if cur:
            Mmax = max(Ms[j] for j in cur + [i])
            nmax = max(n_list[j] for j in cur + [i])
            too_wide = Ms[i] > 1.5 * Ms[cur[0]] + 8
            if too_wide or (len(cur) + 1) * Mmax * nmax > budget:
                groups.append(cur)
                cur = []
        cur.append(int(i))
    if cur:
        groups.append(cur)
    return groups


def solve_f(S, T, kappa: float = 0.0, *, device=None, tol: float = 1e-12,
            max_iter: int = 32, check_every: int = 8, accept_tol: float = 1e-9,
            num_threads: int | None = None):
    """Batched exact solver of F(T) = min ||V - T||^2 s.t. V . s~_j >= kappa.

    ``S``: (D+1, M) array or a list of them; ``T``: (n, D+1) array or a list (one per S).
    Returns a :class:`SolveResult` (or a list).

    Stages: (1) accelerated projected gradient on the Jacobi-scaled dual, all T of all
    manifolds at once, for manifolds whose Gram matrix G = S~^T S~ is non-singular (on the CPU
    in float32 with float64 refinement and a float64 check every ``check_every`` iterations,
    ``max_iter`` iterations in all, see :func:`_fista_mixed_chunk`); (2) for the
    T it leaves unconverged, a primal-dual active-set polish (exact solve of the equality-
    constrained problem on the support, warm-started); (3) batched Lawson-Hanson NNLS on the
    least-distance form for what is still unverified and for every T of manifolds with many
    points in few dimensions (M >= 2 (D+1)); its passive sets stay linearly independent, so
    duplicates and singular G are harmless;
    (4) scipy NNLS per T; (5) cvxopt per T. After each stage every T's KKT residual is computed
    explicitly (V = T + S lam, slacks S^T V) and must be <= ``tol``; stages 4-5 are accepted
    at <= ``accept_tol`` (else a RuntimeWarning; the residual is returned).
    ``num_threads``: temporarily set torch's CPU threads (useful on a shared machine).
    """
    if num_threads is not None:
        old = torch.get_num_threads()
        torch.set_num_threads(int(num_threads))
        try:
            return solve_f(S, T, kappa, device=device, tol=tol, max_iter=max_iter,
                           check_every=check_every, accept_tol=accept_tol)
        finally:
            torch.set_num_threads(old)
    kappa = _check_kappa(kappa)
    single = isinstance(S, (np.ndarray, torch.Tensor)) and np.ndim(S) == 2
    S_list = [np.asarray(S, np.float64)] if single else [np.asarray(s, np.float64) for s in S]
    T_list = ([np.atleast_2d(np.asarray(T, np.float64))] if single
              else [np.atleast_2d(np.asarray(t, np.float64)) for t in T])
    if len(S_list) != len(T_list):
        raise ValueError("S and T lists must have the same length")
    for i, (s, t) in enumerate(zip(S_list, T_list)):
        if s.ndim != 2 or t.shape[1] != s.shape[0]:
            raise ValueError(f"problem {i}: T has {t.shape[1]} coordinates but S~ has "
                             f"{s.shape[0]} rows; both must be D+1")
        if not (np.isfinite(s).all() and np.isfinite(t).all()):
            raise ValueError(f"problem {i}: non-finite values in S~ or T")
        if s.shape[1] < 1:
            raise ValueError(f"problem {i}: S~ has no points")
    dev = torch.device(device) if device is not None else torch.device("cpu")
    Ms = np.array([s.shape[1] for s in S_list])
    ns = np.array([t.shape[0] for t in T_list])
    results = [None] * len(S_list)
    for grp in _group_indices(Ms, ns):
        B = len(grp)
        Mmax = int(max(Ms[i] for i in grp))
        D1max = int(max(S_list[i].shape[0] for i in grp))
        nmax = int(max(ns[i] for i in grp))
        Sp = np.zeros((B, D1max, Mmax))
        Tp = np.zeros((B, nmax, D1max))
        Tmask = np.zeros((B, nmax), dtype=bool)
        for b, i in enumerate(grp):
            s, t = S_list[i], T_list[i]
            Sp[b, : s.shape[0], : s.shape[1]] = s
            Tp[b, : t.shape[0], : t.shape[1]] = t
            Tmask[b, : t.shape[0]] = True
        cpu = dev.type == "cpu" and _NUMPY_ON_CPU
        if cpu:                                   # numpy arrays shared with the torch tensors
            d_np = np.sqrt(np.einsum("bdm,bdm->bm", Sp, Sp))
            pad_np = d_np == 0
            Sh_np = Sp / np.where(pad_np, 1.0, d_np)[:, None, :]
            kd_np = np.where(pad_np, 0.0, kappa / np.where(pad_np, 1.0, d_np))
            Sp_t, Tp_t, Tm_t = torch.from_numpy(Sp), torch.from_numpy(Tp), torch.from_numpy(Tmask)
            d, pad, Sh, kd = (torch.from_numpy(a) for a in (d_np, pad_np, Sh_np, kd_np))
        else:
            Sp_t = torch.from_numpy(Sp).to(dev)
            Tp_t = torch.from_numpy(Tp).to(dev)
            Tm_t = torch.from_numpy(Tmask).to(dev)
            d = torch.linalg.norm(Sp_t, dim=1)                            # (B, M), 0 on padding
            pad = d == 0
            Sh = Sp_t / torch.where(pad, 1.0, d)[:, None, :]
            kd = torch.where(pad, 0.0, kappa / torch.where(pad, 1.0, d))
        Mreal = torch.tensor([int(Ms[i]) for i in grp], device=dev)
        D1real = torch.tensor([S_list[i].shape[0] for i in grp], device=dev)
        # many points in few dimensions: projected gradient crawls, go to Lawson-Hanson directly
        degenerate = Mreal >= 2 * D1real
        # stage 1: iterative, non-degenerate manifolds
        run = Tm_t & ~degenerate[:, None]
        mu = None
        stage = torch.zeros((B, nmax), dtype=torch.int8, device=dev)
        if bool(run.any()):
            nd = torch.nonzero(~degenerate).flatten()
            if cpu:
                ndn = nd.numpy()
                sel = (lambda a: a) if ndn.size == B else (lambda a: a[ndn])
                Shn = sel(Sh_np)
                Gh_np = np.matmul(Shn.transpose(0, 2, 1), Shn)              # M x M, M < 2 (D+1)
                Gh_np[:, np.arange(Mmax), np.arange(Mmax)] = np.where(
                    sel(pad_np), 1.0, Gh_np[:, np.arange(Mmax), np.arange(Mmax)])
                mu_np, conv_np = _fista_cpu(Gh_np, Shn, sel(Tp), sel(Tmask) & run[nd].numpy(),
                                            sel(kd_np), sel(pad_np), kappa, tol, max_iter,
                                            check_every)
                Gh, mu_nd, conv_nd = (torch.from_numpy(a) for a in (Gh_np, mu_np, conv_np))
            else:
                Gh = torch.bmm(Sh[nd].transpose(1, 2), Sh[nd])             # M x M, M < 2 (D+1)
                Gh.diagonal(dim1=1, dim2=2).copy_(
                    torch.where(pad[nd], 1.0, Gh.diagonal(dim1=1, dim2=2)))
                mu_nd, conv_nd = _fista_group(Sh[nd], Tp_t[nd], run[nd], d[nd], kappa, tol,
                                              max_iter, check_every, Gh=Gh)
            if nd.numel() == B:
                mu = mu_nd
            else:
                mu = torch.zeros((B, nmax, Mmax), dtype=_DTYPE, device=dev)
                mu[nd] = mu_nd
            stage[nd] = torch.where(conv_nd & run[nd], 1, 0).to(torch.int8)
            # stage 2: active-set polish of the unconverged, packed per manifold
            rows, order, valid = _pack(run & (stage == 0))
            pos = torch.full((B,), -1, dtype=torch.long, device=dev)
            pos[nd] = torch.arange(nd.numel(), device=dev)
            if rows.numel():
                per = max(1, 6_000_000 // max(1, order.shape[1] * Mmax * Mmax))
                for c0 in range(0, rows.numel(), per):
                    r, o, v = rows[c0:c0 + per], order[c0:c0 + per], valid[c0:c0 + per]
                    Tg = Tp_t[r].gather(1, o[..., None].expand(-1, -1, D1max))
                    bs = torch.bmm(Tg, Sh[r]) - kd[r][:, None, :]
                    bs = torch.where(pad[r][:, None, :], 1.0, bs)
                    x0 = mu[r].gather(1, o[..., None].expand(-1, -1, Mmax))
                    xs, _ = _pdas(Gh[pos[r]], bs, x0, v, pad[r], (Tg * Tg).sum(-1), kd[r], tol)
                    rr, oo = r[:, None].expand_as(o)[v], o[v]
                    mu[rr, oo] = xs[v]
                    stage[rr, oo] = 2
        if mu is None:
            mu = torch.zeros((B, nmax, Mmax), dtype=_DTYPE, device=dev)
        kkt, W = _verify(Sh, Tp_t, mu, kd, pad, kappa)
        # stage 3: batched Lawson-Hanson for everything not verified
        redo = Tm_t & ~(kkt <= tol)
        rows, order, valid = _pack(redo)
        if rows.numel():
            kk = min(Mmax, D1max + 1)
            per = max(1, 4_000_000 // max(1, order.shape[1] * (4 * Mmax + kk * (D1max + 2 * kk))))
            for c0 in range(0, rows.numel(), per):
                r = rows[c0:c0 + per]
                o = order[c0:c0 + per]
                v = valid[c0:c0 + per]
                Tg = Tp_t[r].gather(1, o[..., None].expand(-1, -1, D1max))
                h = kd[r][:, None, :] - torch.bmm(Tg, Sh[r])
                h = torch.where(pad[r][:, None, :], -1.0, h)
                mu_lh, ok = _lawson_hanson(Sh[r], h, v, pad[r])
                rr = r[:, None].expand_as(o)[ok]
                oo = o[ok]
                mu[rr, oo] = mu_lh[ok]
                stage[rr, oo] = 3
            kkt, W = _verify(Sh, Tp_t, mu, kd, pad, kappa)
        lam = mu / torch.where(pad, 1.0, d)[:, None, :]
        V = Tp_t + W
        V_np, W_np, lam_np = V.cpu().numpy(), W.cpu().numpy(), lam.cpu().numpy()
        kkt_np, stage_np = kkt.cpu().numpy(), stage.cpu().numpy()
        for b, i in enumerate(grp):                 # views into the group's arrays, no copies
            n_i, M_i, D1_i = ns[i], Ms[i], S_list[i].shape[0]
            Vi = V_np[b, :n_i, :D1_i]
            Wi = W_np[b, :n_i, :D1_i]
            li = lam_np[b, :n_i, :M_i]
            ki = kkt_np[b, :n_i]
            st = stage_np[b, :n_i]
            bad = np.nonzero(~(ki <= tol))[0]
            if bad.size:
                Wi = Wi.copy()
                Vb, lb = solve_f_nnls(S_list[i], T_list[i][bad], kappa)
                kb = kkt_residual(S_list[i], T_list[i][bad], Vb, lb, kappa)
                Vi[bad], li[bad], ki[bad], st[bad] = Vb, lb, kb, 4
                Wi[bad] = lb @ S_list[i].T
                worse = bad[~(kb <= accept_tol)]
                if worse.size:
                    cv = solve_f_cvxopt(S_list[i], T_list[i][worse], kappa)
                    better = cv.kkt < ki[worse]
                    wb = worse[better]
                    Vi[wb], li[wb], ki[wb], st[wb] = cv.V[better], cv.lam[better], \
                        cv.kkt[better], 5
                    Wi[wb] = Vi[wb] - T_list[i][wb]
                    nbad = int(np.sum(~(ki[worse] <= accept_tol)))
                    if nbad:
                        warnings.warn(f"per-T problem {i}: {nbad} T with KKT residual up to "
                                      f"{np.nanmax(ki[worse]):.2e} > {accept_tol:g} after all "
                                      "fallbacks", RuntimeWarning)
            F = np.vecdot(Wi, Wi)
            results[i] = SolveResult(F, Vi, li, ki, st)
    return results[0] if single else results


# --------------------------------------------------------------------------------------------
# Anchors and per-manifold statistics
# --------------------------------------------------------------------------------------------
def _statistics_stack(S, T, V, kappa, estimator):
    """:func:`manifold_statistics` for a stack of B manifolds of equal shapes: S (B, D+1, M),
    T and V (B, n, D+1). Returns a list of B dicts. (Dot products as ``vecdot`` over the last
    axis and the interior anchors gathered only where needed: one pass per quantity.)"""
    B, D1, M = S.shape
    D = D1 - 1
    W = V - T
    F = np.vecdot(W, W)
    ts = np.matmul(T, S)
    jmin = np.argmin(ts, axis=-1)
    interior = ((np.take_along_axis(ts, jmin[..., None], axis=-1)[..., 0] >= kappa)
                | (np.sqrt(F) < _INTERIOR_EPS))
    last = W[..., -1]
    safe_last = np.where(interior | (last == 0), 1.0, last)
    anchors = W
    anchors /= safe_last[..., None]
    ib, it = np.nonzero(interior)                 # interior T: the point with the smallest T.s
    anchors[ib, it] = S.transpose(0, 2, 1)[ib, jmin[ib, it]]
    F[interior] = 0.0
    mF = np.mean(F, axis=-1)
    sD = anchors[..., :D]
    tD = T[..., :D]
    ss = np.vecdot(sD, sD)
    s_norm = np.sqrt(ss + 1e-12)
    ts_dot = np.vecdot(tD, sD)
    if estimator == "public":
        ds = sD - sD.mean(axis=1, keepdims=True)
        radius = np.sqrt(np.mean(np.vecdot(ds, ds), axis=-1))
        t_norm = np.sqrt(np.vecdot(tD, tD))
        cos = ts_dot / (np.where(t_norm > 0, t_norm, 1.0) * s_norm)
        dimension = D * np.mean(cos, axis=-1) ** 2
    else:
        radius = np.sqrt(np.mean(ss, axis=-1))
        dimension = np.mean((ts_dot / s_norm) ** 2, axis=-1)
    return [{"capacity": (1.0 / float(mF[b])) if mF[b] > 0 else float("inf"),
             "radius": float(radius[b]), "dimension": float(dimension[b]), "F": F[b],
             "anchors": anchors[b], "interior": interior[b]} for b in range(B)]


def manifold_statistics(S, T, V, kappa: float = 0.0, estimator: str = "public") -> dict:
    """Capacity, radius and dimension of one manifold from its per-T solutions.

    Interior T (min_j T.s~_j >= kappa, or ||V - T|| < 1e-8 as in the public code) contribute
    F = 0 and take the point with the smallest T.s~_j as anchor; the others the anchor
    (V - T)/(V - T)_(D+1). Returns dict(capacity, radius, dimension, F, anchors, interior).
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
    S = np.asarray(S, np.float64)
    T = np.atleast_2d(np.asarray(T, np.float64))
    V = np.atleast_2d(np.asarray(V, np.float64))
    return _statistics_stack(S[None], T[None], V[None], kappa, estimator)[0]


def _harmonic_capacity(caps) -> float:
    """1 / mean(1 / alpha) (a manifold with alpha = inf contributes 0 to the mean)."""
    inv = np.where(np.isinf(caps), 0.0, 1.0 / caps)
    return float(1.0 / inv.mean()) if inv.mean() > 0 else float("inf")


def capacity_from_points(S, *, kappa: float = 0.0, T=None, n_t: int = 200, seed: int = 0,
                         estimator: str = "public", solver: str = "batched", device=None,
                         return_per_t: bool = False) -> dict:
    """Steps 4-5 on already-normalised point sets, bypassing centering and center removal.

    ``S``: one (D+1) x M array S~ (center coordinate 1 in the last row) or a list of them;
    ``T``: optional (n, D+1) array or list of them (default: :func:`sample_t` with n_t, seed).
    Returns dict(capacity, radius, dimension: numpy arrays per manifold; capacity_total:
    1/mean(1/alpha); per_t: list of PerT if requested; solve: list of SolveResult).
    """
    kappa = _check_kappa(kappa)
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
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
        sols = solve_f(S_list, T_list, kappa, device=device)
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
            for i, st in zip(ii, _statistics_stack(np.stack([S_list[i] for i in ii]),
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
           "capacity_total": _harmonic_capacity(caps), "solve": sols}
    if return_per_t:
        out["per_t"] = per_t
    return out


# --------------------------------------------------------------------------------------------
# Full analysis
# --------------------------------------------------------------------------------------------
class _threads:
    """Temporarily limit torch and BLAS (via threadpoolctl when installed) CPU threads."""

    def __init__(self, n: int):
        self.n = int(n)
        if self.n < 1:
            raise ValueError("num_threads must be >= 1")

    def __enter__(self):
        # Load scipy's BLAS (the compiled kernels call it) before limiting, so it is limited too.
        # BLAS/OpenMP limits are taken before torch's, and restored before torch's: torch's
        # thread count is OpenMP's, and a limit recorded after torch.set_num_threads would
        # restore the lowered value.
        import scipy.linalg  # noqa: F401
        self.old = torch.get_num_threads()
        try:
            from threadpoolctl import threadpool_limits
            self.tp = threadpool_limits(self.n)
        except ImportError:
            self.tp = None
        torch.set_num_threads(self.n)
        return self

    def __exit__(self, *exc):
        if self.tp is not None:
            self.tp.restore_original_limits()
        torch.set_num_threads(self.old)
        return False


def analyze(manifolds, *, kappa: float = 0.0, n_t: int = 200, seed: int = 0, device=None,
            return_per_t: bool = False, estimator: str = "public", solver: str = "batched",
            center_removal: bool = True, max_rank: int | None = None, min_rank: int = 1,
            n_restarts: int = 10, basis: str = "gram",
            num_threads: int | None = None) -> GeometryResult:
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
    basis : "gram" (default) or "qr" manifold coordinates (same law of every statistic).
    num_threads : CPU threads for the call (default: the CPUs this process may use). The
        per-manifold work (centers, Gram matrices, eigendecompositions, T, the per-T solves on
        the CPU, statistics) is split into that many groups of manifolds, one thread each with
        one BLAS thread, and the compiled center search runs beside the Gram products; results
        do not depend on the number beyond the last bit. On a machine shared with other jobs,
        1 avoids threads waiting on each other (BLAS and torch then use one thread too).

    Manifolds with one point (M = 1) are valid: S~ = [[0], [1]], giving the point capacity
    alpha_0(kappa), R = 0 and D = 0. Exact duplicate points are used once. A manifold whose
    F(T) = 0 for every T has capacity inf (it contributes 0 to mean(1/alpha)).
    """
    kappa = _check_kappa(kappa)
    n_t = _check_n_t(n_t)
    seed = _check_seed(seed)
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
    n_workers = _cpu_workers(num_threads)
    # batched solves on the CPU run per group of manifolds in the threads; the cvxopt oracle
    # (which holds the GIL) and GPU solves run in one call, after the threads' preprocessing
    split = solver == "batched" and (device is None or torch.device(device).type == "cpu")

    def steps_4_5(idx):            # per group of manifolds: finish step 3, sample T, solve
        S = [s for _, s in prep.finish(idx)]
        T = [_t_vectors(s.shape[0], n_t, seed, int(i)) for i, s in zip(idx, S)]
        return S, capacity_from_points(S, kappa=kappa, T=T, estimator=estimator,
                                       solver=solver, device=device, return_per_t=return_per_t)

    # one worker with a thread count given: BLAS and torch use that many threads instead
    outer = _threads(num_threads) if num_threads is not None and n_workers == 1 else \
        contextlib.nullcontext()
    with outer, _Pool(n_workers) as pool:
        prep = _prepare(manifolds, pool, center_removal=center_removal, seed=seed,
                        max_rank=max_rank, min_rank=min_rank, n_restarts=n_restarts,
                        basis=basis)
        groups = _split(prep.Ms.astype(np.float64) ** 2, pool.n if split else 1)
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
    out["capacity_total"] = _harmonic_capacity(caps)
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


# --------------------------------------------------------------------------------------------
# Random projection
# --------------------------------------------------------------------------------------------
class RandomProjection:
    """Fixed Gaussian projection R^n_in -> R^n_out with unit-norm rows, determined by the seed.

    Identity when n_in <= n_out. The matrix is generated in fixed column blocks from
    (seed, block) so it is the same whatever the input's batch size, on every call, for every
    epoch and manifold type; it is cached when it takes at most ``cache_bytes``, otherwise
    regenerated block by block on each call (memory O(n_out x block)).

    Cost: generating the matrix (n_in x n_out normals) plus the product M x n_in x n_out;
    ``device="cuda"`` runs the product there.

    Example: ``proj = RandomProjection(65536, 5000, seed=0); Y = proj(X)  # X (M, 65536)``
    """
    _BLOCK = 4096

    def __init__(self, n_in: int, n_out: int = 5000, seed: int = 0, *, dtype=torch.float32,
                 device=None, cache_bytes: int = 512 * 2 ** 20):
        if int(n_in) < 1 or int(n_out) < 1:
            raise ValueError("n_in and n_out must be positive")
        self.n_in, self.n_out, self.seed = int(n_in), int(n_out), _check_seed(seed)
        self.dtype, self.device = dtype, torch.device(device) if device is not None else None
        self.identity = self.n_in <= self.n_out
        self._cache = None
        self._inv_norm = None
        nbytes = self.n_in * self.n_out * torch.tensor([], dtype=dtype).element_size()
        self._cacheable = nbytes <= cache_bytes

    def _block(self, k: int) -> torch.Tensor:
        c0 = k * self._BLOCK
        c1 = min(self.n_in, c0 + self._BLOCK)
        g = torch.Generator().manual_seed(int(self.seed) * 1_000_003 + k + 17)
        return torch.randn((self.n_out, c1 - c0), generator=g, dtype=self.dtype)

    def _blocks(self):
        nb = (self.n_in + self._BLOCK - 1) // self._BLOCK
        if self._cache is not None:
            yield from enumerate(self._cache)
            return
        cache = [] if self._cacheable else None
        sq = torch.zeros(self.n_out, dtype=torch.float64) if self._inv_norm is None else None
        for k in range(nb):
            W = self._block(k)
            if sq is not None:
                sq += (W.double() ** 2).sum(dim=1)
            if cache is not None:
                cache.append(W)
            yield k, W
        if sq is not None:
            self._inv_norm = (1.0 / torch.sqrt(sq)).to(self.dtype)
        if cache is not None:
            self._cache = cache

    def _ensure_norms(self):
        if self._inv_norm is None:
            for _ in self._blocks():
                pass

    def matrix(self) -> np.ndarray:
        """The dense (n_out, n_in) matrix (identity when n_in <= n_out)."""
        if self.identity:
            return np.eye(self.n_in)
        self._ensure_norms()
        return (torch.cat([W for _, W in self._blocks()], dim=1) * self._inv_norm[:, None]).numpy()

    def __call__(self, X):
        """Project (M, n_in) features to (M, n_out); numpy in, numpy out; torch in, torch out."""
        is_np = not isinstance(X, torch.Tensor)
        Xt = torch.as_tensor(np.asarray(X)) if is_np else X
        if Xt.ndim != 2 or Xt.shape[1] != self.n_in:
            raise ValueError(f"expected an (M, {self.n_in}) array, got {tuple(Xt.shape)}")
        if self.identity:
            return X
        self._ensure_norms()
        dev = self.device or Xt.device
        Xd = Xt.to(device=dev, dtype=self.dtype)
        Y = torch.zeros((Xd.shape[0], self.n_out), dtype=self.dtype, device=dev)
        for k, W in self._blocks():
            c0 = k * self._BLOCK
            Y += Xd[:, c0:c0 + W.shape[1]] @ W.to(dev).T
        Y *= self._inv_norm.to(dev)[None, :]
        return Y.cpu().numpy() if is_np else Y


def random_projection(n_in: int, n_out: int = 5000, seed: int = 0, **kw) -> RandomProjection:
    """A :class:`RandomProjection` (callable on (M, n_in) arrays; identity if n_in <= n_out)."""
    return RandomProjection(n_in, n_out, seed, **kw)


def __getattr__(name):   # simulated capacity lives in memgeo.simcap; re-exported lazily
    if name in ("simulated_capacity", "separable_fraction", "is_separable", "SimulatedCapacity"):
        from memgeo import simcap
        return getattr(simcap, name)
    raise AttributeError(name)
