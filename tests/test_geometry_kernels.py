"""The compiled (numba) kernels (memgeo.geometry.kernels) against their numpy twins."""
import numpy as np
import pytest
from geometry_cases import one_torch_thread, planted_centers_basis  # noqa: F401

from memgeo.geometry import kernels
from memgeo.geometry.backend import BACKENDS, resolve_backend
from memgeo.geometry.centers import (correlation_cost_grad_lowrank, qr_retract, retract_rows,
                                     stiefel_minimize)


def test_numba_is_installed():
    assert kernels.available(), "numba is in requirements.txt"
    assert resolve_backend("auto").compiled and resolve_backend("numba").compiled
    assert not resolve_backend("numpy").compiled
    assert resolve_backend("torch").compiled and not resolve_backend("torch").numpy_solver
    assert all(resolve_backend(b).numpy_solver for b in BACKENDS if b != "torch")
    with pytest.raises(ValueError, match="backend must be one of"):
        resolve_backend("jit")


def test_compiled_search_matches_numpy_twin():
    # same algorithm, same starts: on a problem with a well-defined minimum both paths end at
    # the same cost and subspace, and the compiled cost/gradient equals the numpy one
    X = planted_centers_basis(30, 3, seed=2)
    rng = np.random.default_rng(5)
    XT, G = np.ascontiguousarray(X.T), X @ X.T
    for K in (1, 2, 3, 5):
        V0 = qr_retract(rng.standard_normal((5, X.shape[1], K)))
        Vt0 = np.ascontiguousarray(V0.transpose(0, 2, 1))
        f_np, G_np, _ = correlation_cost_grad_lowrank(Vt0, X, XT, G, G * G, np.diag(G).copy())
        f_j, G_j = np.empty(5), np.empty_like(Vt0)
        kernels.correlation_cost_grad_lowrank(Vt0, np.arange(5), X, XT, 2 * X, G, G * G,
                                              np.diag(G).copy(), f_j, G_j, 1e6)
        np.testing.assert_allclose(f_j, f_np, rtol=1e-12)
        np.testing.assert_allclose(G_j, G_np, rtol=1e-10, atol=1e-12 * abs(G_np).max())
        # the direct formula (used under cancellation) gives the same numbers
        kernels.correlation_cost_grad_lowrank(Vt0, np.arange(5), X, XT, 2 * X, G, G * G,
                                              np.diag(G).copy(), f_j, G_j, 0.0)
        np.testing.assert_allclose(f_j, f_np, rtol=1e-10)
        np.testing.assert_allclose(G_j, G_np, rtol=1e-8, atol=1e-10 * abs(G_np).max())
        if K > 3:      # above the planted rank the landscape is flat: neither path converges
            continue
        (V1, f1), (V2, f2) = (stiefel_minimize(V0, X, max_iter=2000, gtol=1e-9, backend=b)
                              for b in ("numba", "numpy"))
        np.testing.assert_allclose(f1, f2, rtol=1e-9)
        if K == 3:                                   # the planted rank: a unique subspace
            for a, b in zip(V1, V2):
                np.testing.assert_allclose(a @ a.T, b @ b.T, atol=1e-6)


def test_compiled_retraction_equals_householder():
    rng = np.random.default_rng(8)
    for K in (1, 3):
        V = qr_retract(rng.standard_normal((4, 12, K)))
        Vt = np.ascontiguousarray(V.transpose(0, 2, 1))
        xi = rng.standard_normal(Vt.shape)
        xi -= np.matmul(np.matmul(xi, V), Vt)
        for t in (0.1, 10.0, 1e5):                   # one pass, two passes, Householder
            Y = Vt - t * xi
            steplen = t * np.sqrt((xi ** 2).sum((1, 2)))
            out = np.empty_like(Y)
            kernels.retract_rows(Y, np.arange(4), steplen, out)
            np.testing.assert_allclose(
                out, qr_retract(Y.transpose(0, 2, 1)).transpose(0, 2, 1), atol=1e-12)
            np.testing.assert_allclose(out, retract_rows(Y, steplen), atol=1e-12)


def test_compiled_fista_update_matches_numpy():
    # the fused float32 update against the numpy passes it replaces (the loop body of
    # memgeo.geometry.stages.fista_mixed_chunk with backend="numpy")
    rng = np.random.default_rng(9)
    sh = (3, 40, 7)
    u, y, d, r32 = (rng.standard_normal(sh).astype(np.float32) for _ in range(4))
    lo = -np.abs(rng.standard_normal(sh)).astype(np.float32)
    t = (1 + 3 * rng.random(sh[:2])).astype(np.float32)
    beta_c = np.array([[0.5], [0.9], [1.0]], np.float32)
    un, yn, dnn = u + r32, y.copy(), np.empty_like(u)
    np.maximum(un + yn, lo, out=dnn)
    yn = dnn - d
    rs = np.vecdot(un, yn) < 0
    tn = 0.5 * (1.0 + np.sqrt(1.0 + 4.0 * t * t))
    beta = np.minimum((t - 1.0) / tn, beta_c)
    beta[rs], tn[rs] = 0.0, 1.0
    yn = yn * beta[..., None] + dnn
    dn = np.empty_like(u)
    kernels.fista_update(u, y, d, dn, r32, lo, t, beta_c)
    assert rs.any() and (~rs).any()
    np.testing.assert_array_equal(dn, dnn)
    np.testing.assert_allclose(y, yn, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(t, tn.astype(np.float32))
