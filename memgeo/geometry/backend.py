"""The ``backend`` argument: which code does the engine's array work.

================  ====================================  =========================================
``backend``       center search, fused solver update    per-T solver (stage 1, KKT checks) on CPU
================  ====================================  =========================================
``"auto"``        compiled (numba) if installed,        numpy
                  else the numpy twins
``"numba"``       compiled; an error without numba      numpy
``"numpy"``       the numpy twins                       numpy
``"torch"``       as ``"auto"``                         torch (the code that runs on a GPU)
================  ====================================  =========================================

On a GPU device the per-T solver always runs in torch. ``"auto"`` is the fast one; the others
exist to check it and to run without numba. The solvers agree to rounding; the numpy center
search stops at a slightly different point of a flat landscape than the compiled one, so a full
analysis agrees to ~1e-6 (the tests compare them).
"""
from __future__ import annotations

from dataclasses import dataclass

BACKENDS = ("auto", "numba", "numpy", "torch")


@dataclass(frozen=True)
class Backend:
    """A backend name resolved against what is installed."""
    name: str
    compiled: bool        # numba kernels (memgeo.geometry.kernels) for the center search and
                          # the float32 solver update
    numpy_solver: bool    # on a CPU device: numpy solver stage 1 and checks (False: torch)


def numba_available() -> bool:
    """Whether the compiled kernels can be used (imports, and on first use compiles, them)."""
    from . import kernels
    return kernels.available()


def resolve_backend(backend="auto") -> Backend:
    """The :class:`Backend` for a name of :data:`BACKENDS` (a Backend is returned as is)."""
    if isinstance(backend, Backend):
        return backend
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "numba" and not numba_available():
        raise ValueError("backend='numba' needs numba (pip install numba), which is not "
                         "installed; 'auto' or 'numpy' run without it")
    compiled = backend != "numpy" and numba_available()
    return Backend(backend, compiled, backend != "torch")


def compiled_kernel(name: str, backend: Backend):
    """The compiled kernel ``name`` of :mod:`memgeo.geometry.kernels`, or None when the backend
    runs the numpy twins."""
    if not backend.compiled:
        return None
    from . import kernels
    return getattr(kernels, name)
