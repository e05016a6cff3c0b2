r"""Step 5 of the method: anchors, capacity, radius and dimension of a manifold from its per-T
solutions, and the aggregate capacity.

The anchor point is s~(T) = (V* - T) / (V* - T)_(D+1) (a convex combination of the points,
center coordinate 1); for interior T (min_j T . s~_j >= kappa, F = 0) it is the point with the
smallest T . s~_j. Capacity ``alpha_M = 1 / mean_T F(T)``. Estimators of radius and dimension:

* ``estimator="public"`` (default, as the public code): ``R_M = sqrt(mean_T ||s(T) - mean_T
  s(T)||^2)`` (D-dim parts of the anchors), and ``D_M = D * (mean_T cos(t, s(T)))^2`` (t: D-dim
  part of T).
* ``estimator="textbook"`` (PRX 2018 eqs. 28-29): ``R_M^2 = mean_T ||s(T)||^2`` and
  ``D_M = mean_T (t . s_hat(T))^2``.
"""
from __future__ import annotations

import numpy as np

from .validation import check_choice

ESTIMATORS = ("public", "textbook")
_INTERIOR_EPS = 1e-8          # ||V - T|| below this: interior T (as the public code)


def statistics_stack(S, T, V, kappa, estimator):
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
    check_choice(estimator, ESTIMATORS, "estimator")
    S = np.asarray(S, np.float64)
    T = np.atleast_2d(np.asarray(T, np.float64))
    V = np.atleast_2d(np.asarray(V, np.float64))
    return statistics_stack(S[None], T[None], V[None], kappa, estimator)[0]


def harmonic_capacity(caps) -> float:
    """1 / mean(1 / alpha) (a manifold with alpha = inf contributes 0 to the mean)."""
    inv = np.where(np.isinf(caps), 0.0, 1.0 / caps)
    return float(1.0 / inv.mean()) if inv.mean() > 0 else float("inf")

