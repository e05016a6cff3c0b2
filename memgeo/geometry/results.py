"""What the engine returns: the result of :func:`~memgeo.geometry.analyze` and of its steps."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


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
