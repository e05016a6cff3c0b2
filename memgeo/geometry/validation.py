"""Checks of the engine's inputs, each failing with a message that says what to pass instead."""
from __future__ import annotations

import math

import numpy as np
import torch


def check_kappa(kappa) -> float:
    """The margin as a finite float."""
    try:
        k = float(kappa)
    except (TypeError, ValueError):
        raise ValueError(f"kappa must be a real number, got {kappa!r}") from None
    if not math.isfinite(k):
        raise ValueError(f"kappa must be finite, got {kappa!r}; use a finite margin such as 0.0")
    return k


def check_n_t(n_t) -> int:
    """The number of Gaussian T vectors per manifold as a positive int."""
    if isinstance(n_t, bool) or not isinstance(n_t, (int, np.integer)):
        raise ValueError(f"n_t must be a positive integer, got {n_t!r}")
    if n_t < 1:
        raise ValueError(f"n_t must be >= 1 (got {n_t}); 200-300 is usual, ~20000 for 0.5% error")
    return int(n_t)


def check_seed(seed) -> int:
    """The seed as a non-negative int."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def check_choice(value, choices: tuple, what: str) -> str:
    """``value`` if it is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{what} must be one of {choices}, got {value!r}")
    return value


def validate_manifolds(manifolds) -> list:
    """The manifolds as a list of P >= 2 arrays of shape (M_i, N), M_i >= 1, one N (a 3-d array
    or tensor counts as a stack of P manifolds). The arrays are not copied or converted."""
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


# torch floating types numpy has no type for: converted to float32, which holds them exactly
_WIDENED = (torch.bfloat16,)


def as_array(x) -> np.ndarray:
    """One manifold's features as a numpy array of real numbers (a torch tensor is moved to the
    CPU; bfloat16 becomes float32, exactly). Not copied when it already is one."""
    if isinstance(x, torch.Tensor):
        x = x.detach()
        if x.dtype in _WIDENED:
            x = x.to(torch.float32)
        x = x.cpu().numpy()
    a = np.asarray(x)
    if a.dtype.kind not in "fiub":
        raise ValueError(f"manifold features must be real numbers, got dtype {a.dtype}; "
                         "convert them to float32 or float64")
    return a
