"""A fixed Gaussian random projection of wide layers to a manageable number of features."""
from __future__ import annotations

import numpy as np
import torch

from .validation import check_seed


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
        self.n_in, self.n_out, self.seed = int(n_in), int(n_out), check_seed(seed)
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
