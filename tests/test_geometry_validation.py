"""Input checks (memgeo.geometry.validation), directly and through analyze."""
import numpy as np
import pytest
import torch
from geometry_cases import one_torch_thread  # noqa: F401

from memgeo.geometry import analyze
from memgeo.geometry.validation import (as_array, check_kappa, check_n_t, check_seed,
                                        validate_manifolds)


def test_bad_inputs():
    rng = np.random.default_rng(0)
    ok = [rng.standard_normal((5, 10)) for _ in range(3)]
    bad = [m.copy() for m in ok]
    bad[1][2, 3] = np.nan
    with pytest.raises(ValueError, match="manifold 1 has 1 NaN or infinite"):
        analyze(bad)
    bad[1][2, 3] = np.inf
    with pytest.raises(ValueError, match="NaN or infinite"):
        analyze(bad)
    with pytest.raises(ValueError, match="at least 2 manifolds"):
        analyze(ok[:1])
    with pytest.raises(ValueError, match="feature dimension"):
        analyze([ok[0], rng.standard_normal((5, 11))])
    with pytest.raises(ValueError, match="shape"):
        analyze([ok[0], rng.standard_normal(10)])
    with pytest.raises(ValueError, match="no points"):
        analyze([ok[0], np.zeros((0, 10))])
    with pytest.raises(ValueError, match="list of P arrays"):
        analyze(ok[0])
    for n_t in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="n_t"):
            analyze(ok, n_t=n_t)
    for kappa in (np.nan, np.inf, "a"):
        with pytest.raises(ValueError, match="kappa"):
            analyze(ok, kappa=kappa)
    with pytest.raises(ValueError, match="solver"):
        analyze(ok, solver="magic")
    with pytest.raises(ValueError, match="estimator"):
        analyze(ok, estimator="magic")
    with pytest.raises(ValueError, match="seed"):
        analyze(ok, seed=-1)
    with pytest.raises(ValueError, match="real numbers"):
        analyze([m.astype(complex) for m in ok])


def test_checks_return_clean_values():
    assert check_kappa(np.float32(0.5)) == 0.5 and isinstance(check_kappa(1), float)
    assert check_n_t(np.int64(7)) == 7 and type(check_n_t(np.int64(7))) is int
    assert check_seed(np.int32(3)) == 3
    for bad in (-1, 1.0, True):
        with pytest.raises(ValueError, match="seed"):
            check_seed(bad)
    stack = np.zeros((3, 4, 5))
    assert [m.shape for m in validate_manifolds(stack)] == [(4, 5)] * 3


def test_as_array():
    x = np.arange(6.0).reshape(2, 3)
    assert as_array(x) is x                                  # no copy
    t = torch.arange(6.0, dtype=torch.bfloat16).reshape(2, 3).requires_grad_()
    a = as_array(t)
    assert a.dtype == np.float32 and np.array_equal(a, x)
    assert as_array(torch.ones(2, 2, dtype=torch.float16)).dtype == np.float16
    assert as_array([[1, 2]]).dtype.kind == "i"
    with pytest.raises(ValueError, match="real numbers"):
        as_array(np.array([["a"]]))
