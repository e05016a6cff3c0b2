"""Inputs and tolerances shared by the tests of memgeo.geometry (tests/test_geometry_*.py)."""
import math

import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Small batched ops: on a shared 2-core machine intra-op threads thrash; restored after."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def mc_tol(F, k=4.0):
    """k standard errors of 1/mean(F), relative."""
    F = np.asarray(F)
    return k * F.std(ddof=1) / math.sqrt(F.size) / F.mean()


def ring(m, R, phase=0.0):
    """S~ of a regular m-gon of radius R around a unit center (D = 2)."""
    th = phase + 2 * np.pi * np.arange(m) / m
    return np.vstack([R * np.cos(th), R * np.sin(th), np.ones(m)])


def cloud(rng, M, D, R=1.0):
    """S~ of M Gaussian points in D dims, centered, mean squared radius R^2."""
    x = rng.standard_normal((D, M))
    x -= x.mean(axis=1, keepdims=True)
    x *= R / np.sqrt((x ** 2).sum(0).mean())
    return np.vstack([x, np.ones((1, M))])


def gauss_manifolds(P, M, N, seed=0, center_scale=1.0):
    """P clouds of M standard Gaussian points in N dims around Gaussian centers."""
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((M, N)) + center_scale * rng.standard_normal(N) for _ in range(P)]


def planted(P, K0, N=400, M=8, seed=0, amp=1.0):
    """P manifolds whose centers have a planted rank-K0 common component."""
    rng = np.random.default_rng(seed)
    U = rng.standard_normal((K0, N))
    A = rng.standard_normal((P, K0))
    centers = amp * A @ U + 0.5 * rng.standard_normal((P, N))
    return [c + 0.3 * rng.standard_normal((M, N)) for c in centers]


def centered_gram(Z):
    """Gram matrix of the rows of Z minus their mean."""
    Zc = Z - Z.mean(0)
    return Zc @ Zc.T


def planted_centers_basis(P, K0, seed):
    """Coordinates X of the centered centers of :func:`planted` manifolds in their span."""
    from memgeo.geometry.centers import centers_basis
    ms = planted(P, K0, seed=seed)
    C = np.stack([m.mean(0) for m in ms])
    return centers_basis(C - C.mean(0))[0]
