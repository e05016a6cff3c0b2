"""The fixed random projection (memgeo.geometry.projection)."""
import numpy as np
import pytest
import torch

from memgeo.geometry.projection import RandomProjection, random_projection


def test_random_projection():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((7, 9000))
    p1 = random_projection(9000, 300, seed=3)
    p2 = RandomProjection(9000, 300, seed=3, cache_bytes=0)          # streamed, not cached
    Y1, Y2 = p1(X), p2(X)
    assert Y1.shape == (7, 300)
    np.testing.assert_allclose(Y1, Y2, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(p1(X[:3]), Y1[:3], rtol=1e-5, atol=1e-5)  # batch-independent
    W = p1.matrix()
    np.testing.assert_allclose(np.linalg.norm(W, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(Y1, X @ W.T, rtol=1e-4, atol=1e-4)
    assert not np.allclose(random_projection(9000, 300, seed=4)(X), Y1)
    small = rng.standard_normal((4, 50))
    assert random_projection(50, 300)(small) is small                  # identity
    with pytest.raises(ValueError):
        p1(rng.standard_normal((2, 10)))


def test_torch_in_torch_out():
    p = RandomProjection(5000, 100, seed=1)
    X = torch.randn(3, 5000)
    Y = p(X)
    assert isinstance(Y, torch.Tensor) and Y.shape == (3, 100)
    np.testing.assert_allclose(Y.numpy(), p(X.numpy()), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="positive"):
        RandomProjection(0, 10)
