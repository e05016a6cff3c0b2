r"""Steps 1-3 of the method: from P point clouds to the normalised point sets S~_i.

1. Centers c_i, the global mean of all points subtracted (``begin_preprocess``).
2. Center correlation and the low-rank center subspace (:mod:`memgeo.geometry.centers`),
   projected out of every manifold.
3. Per manifold (``PreprocessState.finish``): its own center subtracted, divided by ||c_i||
   (the residual center norm), coordinates in an orthonormal basis of the span from the
   centered Gram matrix (:func:`gram_coordinates`) or a QR of the points, the center coordinate 1
   appended, exact duplicate points dropped.

Steps 1-2 are global; step 3 is independent per manifold and runs in the threads of a
:class:`~memgeo.geometry.parallel.WorkerPool`. The Gram matrices do not depend on the center
subspace, so the workers compute them while the calling thread runs the center search.
"""
from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import numpy as np

from .backend import resolve_backend
from .centers import center_correlation, find_center_subspace
from .parallel import TaskQueue, WorkerPool, cpu_workers, split_by_cost
from .results import CenterSubspace, Preprocessed
from .validation import as_array, check_seed, validate_manifolds

_GRAM_RTOL = 1e-13            # Gram eigenvalues (pivots^2) below this x M x largest count as zero
# A residual center norm at or below this fraction of the centers' scale is rounding noise.
_CENTER_RTOL = 1e-12


def project_out(Z: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """The rows of Z with the span of the orthonormal columns of ``basis`` (N x K) removed
    (Z itself when K = 0)."""
    return Z - (Z @ basis) @ basis.T if basis.shape[1] > 0 else Z


def unique_point_indices(X: np.ndarray, gram: np.ndarray) -> np.ndarray:
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


def gram_eigen_coordinates(G: np.ndarray, D: int) -> np.ndarray:
    """(b, D, M) coordinates from the eigendecompositions of a (b, M, M) stack of Gram matrices:
    the D largest eigen-directions, scaled by sqrt(eigenvalue)."""
    M = G.shape[-1]
    w, U = np.linalg.eigh(G)
    w, U = w[:, ::-1][:, :D], U[:, :, ::-1][:, :, :D]
    # eigenvalues at the rounding level of the Gram product are flat directions (their
    # coordinates would be ~sqrt(eps) noise instead of ~eps): set them to zero
    w = np.where(w > _GRAM_RTOL * M * w[:, :1], w, 0.0)
    return (U * np.sqrt(np.maximum(w, 0.0))[:, None, :]).transpose(0, 2, 1)


def gram_coordinates(G: np.ndarray, D: int) -> np.ndarray:
    """Coordinates S (b, D, M) with S^T S = G for a (b, M, M) stack of centered Gram matrices
    (points minus their own mean, so G 1 = 0).

    With D = M (N > M): deflated Cholesky. The Householder reflection H that maps 1/sqrt(M) to
    the first axis turns G into H G H = [[0, 0], [0, B]]; B = L L^T (Cholesky, M - 1 rows) and
    S = [L^T H_(2:M); 0] (the last coordinate is the null direction 1, zero). That is about a
    tenth of the cost of an eigendecomposition and continuous in the data (the frame H depends
    on M only). Where B is singular or nearly so (a Cholesky pivot^2 below 1e-13 M x the largest
    diagonal entry of G: duplicate points, points in fewer than M - 1 dimensions) and when
    D < M (N <= M), the coordinates come from the eigendecomposition instead, with eigenvalues
    at the rounding level set to zero (:func:`gram_eigen_coordinates`). Either way S is the
    points written in an orthonormal basis of their span (a rotation of the public code's QR
    coordinates: same law of every statistic)."""
    b, M, _ = G.shape
    if D < M or M < 2:
        return gram_eigen_coordinates(G, D)
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
        S[~ok] = gram_eigen_coordinates(G[~ok], D)
    return S


def remove_subspace_from_gram(gram, X, center, Vb, inv_sc):
    """gram - A A^T, A = (X - c) Vb: the center subspace removed from a centered Gram matrix.
    A comes from the raw points (K columns, no centered copy of X), by the same arithmetic
    wherever it runs, so the result does not depend on which thread did it or when."""
    A = (X @ Vb if inv_sc == 1.0 else (X * inv_sc) @ Vb) - (center @ Vb)[None, :]
    return gram - A @ A.T


@dataclass
class PreprocessState:
    """What :func:`begin_preprocess` leaves for the per-manifold step 3 (:meth:`finish`) and
    the result (:meth:`result`)."""
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
        matrices (or points), coordinates from the Gram matrices (or QR), the center coordinate
        1, duplicates dropped. Returns [(i, S_i)]."""
        N, cs, inv_sc = self.N, self.cs, self.inv_sc
        Vb = np.ascontiguousarray(cs.basis)                                   # N x K
        coords, by_M = {}, {}
        for i in idx:
            X = as_array(self.ms[i])
            M = X.shape[0]
            if self.basis == "gram":
                gram = self.grams[i]
                if cs.K > 0 and not self.projected[i]:
                    gram = remove_subspace_from_gram(gram, X, self.centers[i], Vb, inv_sc)
                by_M.setdefault(M, []).append((i, (0.5 / self.cnorm[i] ** 2) * (gram + gram.T)))
            else:
                Xc = X - self.centers[i][None, :] if inv_sc == 1.0 else \
                    X * inv_sc - self.centers[i][None, :]
                Z = project_out(Xc, Vb) / self.cnorm[i]
                coords[i] = np.linalg.qr(Z.T, mode="r") if N > M else Z.T
        for M, items in by_M.items():                                       # batched per M
            cs_ = gram_coordinates(np.stack([gm for _, gm in items]), M if N > M else N)
            for (i, _), c in zip(items, cs_):
                coords[i] = c
        out = []
        for i in idx:
            M = int(self.Ms[i])
            S = np.vstack([coords[i], np.ones((1, M))])[:, self.keeps[i]]
            out.append((i, np.ascontiguousarray(S)))
        return out

    def result(self, S_by_index: dict) -> Preprocessed:
        """The :class:`Preprocessed` of all manifolds, given S~_i for every index i."""
        P = len(self.ms)
        D = np.array([int(self.Ms[i]) if self.N > self.Ms[i] else self.N for i in range(P)])
        return Preprocessed(tuple(S_by_index[i] for i in range(P)), D, self.Ms,
                            np.array([len(k) for k in self.keeps]), self.cnorm, self.cs)


def check_centers(cnorm: np.ndarray, centers: np.ndarray, centered: np.ndarray) -> None:
    """Refuse manifolds whose center coincides with the global mean up to rounding.

    ``cnorm``: residual center norms (after global centering and center-subspace removal);
    ``centers``: the centers c_i; ``centered``: c_i minus the global mean. A residual norm must
    exceed 1e-12 x the larger of two scales: the largest centered center (relative: a center
    that lies in the removed subspace) and the largest center (absolute: when every class has
    the same center, the centered centers are themselves rounding noise, ~1e-16 in float64 or
    exactly 0 for float32 input, and a test relative to them alone would pass them). The
    message is the same whatever the precision.
    """
    scale = max(float(np.max(np.linalg.norm(centered, axis=1))),
                float(np.max(np.linalg.norm(centers, axis=1))), 1e-300)
    bad = np.nonzero(~(cnorm > _CENTER_RTOL * scale))[0]
    if bad.size:
        raise ValueError(
            f"manifold {int(bad[0])}: its center coincides with the global mean up to rounding "
            f"(residual norm below {_CENTER_RTOL:g} x the centers' norm after centering and "
            "center-subspace removal), so the center-normalised geometry is undefined; check "
            "for a constant class or duplicated classes, or pass center_removal=False if the "
            "center lies in the removed subspace")


def begin_preprocess(manifolds, pool: WorkerPool, *, center_removal: bool, seed: int, max_rank,
                     min_rank: int, n_restarts: int, basis: str,
                     backend="auto", n_searches: int = 1) -> PreprocessState:
    """The global steps of :func:`preprocess`: validation, centers, global centering, the
    center subspace, residual center norms, and (``basis="gram"``) each manifold's centered Gram
    matrix and its distinct points. The Gram matrices do not depend on the center subspace: the
    pool's workers compute them while the calling thread runs the center search, and it joins
    them when the search is done. Raises ValueError for a manifold whose residual center is
    rounding noise (:func:`check_centers`)."""
    ms = validate_manifolds(manifolds)
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
            X = as_array(ms[i])
            s = np.add.reduce(X, axis=0, dtype=np.float64)
            if not np.isfinite(s).all():
                nbad = int(np.sum(~np.isfinite(X)))
                what = f"{nbad} NaN or infinite feature values" if nbad else \
                    "values so large that their sum overflows"
                raise ValueError(f"manifold {i} has {what}; remove or impute them (e.g. drop "
                                 "those samples) before the analysis")
            np.divide(s, X.shape[0], out=centers[i])
            mags[i] = max(float(np.max(np.abs(X[0]))), float(np.max(np.abs(centers[i]))))

    pool.map(center, split_by_cost(Ms * float(N), pool.n))
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
        X = as_array(ms[i])
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
        keeps[i] = unique_point_indices(X, g)
        if basis == "gram":
            Vb = found.get("Vb")                       # the search is done: project while the
            if Vb is not None:                         # points are in cache
                g = remove_subspace_from_gram(g, X, centers[i], Vb, inv_sc)
                projected[i] = True
            grams[i] = g

    found, projected = {}, np.zeros(P, dtype=bool)
    drain = TaskQueue(centered_gram, P)
    waits = [pool.submit(drain) for _ in range(pool.n - 1)]
    try:
        if center_removal:
            cs = find_center_subspace(C, seed=seed, max_rank=max_rank, min_rank=min_rank,
                                      n_restarts=n_restarts, backend=backend,
                                      n_searches=n_searches)
        else:
            rho = center_correlation(C)
            cs = CenterSubspace(rho, 0, np.zeros((N, 0)), rho, ())
        Vb = np.ascontiguousarray(cs.basis)                              # N x K
        if cs.K > 0:
            found["Vb"] = Vb
        # residual center norms (while the other threads still compute Gram matrices)
        cnorm = np.linalg.norm(project_out(C, Vb), axis=1)
    finally:
        drain()                                       # the calling thread joins the Gram work
        for w in waits:
            w()
    drain.raise_first()                               # a manifold's error, lowest index first
    check_centers(cnorm, centers, C)
    return PreprocessState(ms, N, Ms, centers, inv_sc, cs, cnorm, basis, grams, keeps, projected)


def preprocess(manifolds, *, center_removal: bool = True, seed: int = 0,
               max_rank: int | None = None, min_rank: int = 1, n_restarts: int = 10,
               basis: str = "gram", device=None, num_workers: int | None = None,
               backend="auto", n_searches: int = 1) -> Preprocessed:
    """Steps 1-3 of the method: global centering, center correlation and low-rank removal,
    per-manifold normalisation, coordinates in a basis of the manifold's span, center coordinate.

    ``basis="gram"`` (default) factors the manifold's centered Gram matrix (M x M, one BLAS-3
    product per manifold; batched deflated Cholesky, see :func:`gram_coordinates`);
    ``basis="qr"`` the R factor of a Householder QR of the centered (N x M) points as in the
    public code. The two differ by a rotation of the D manifold coordinates only, which leaves
    the law of every statistic unchanged (T is isotropic). D = M when N > M (public code), else
    D = N. Exact duplicate points are dropped after the center is computed (they change neither
    the convex hull nor F, anchors, R or D; D stays as if they were kept).
    Runs on the CPU in numpy (``device`` is accepted for symmetry and ignored), in
    ``num_workers`` threads (default: the usable CPUs); the result does not depend on it.
    ``backend``: the center search's code (:mod:`memgeo.geometry.backend`); ``n_searches``: whole
    center searches, the best kept (:func:`~memgeo.geometry.centers.find_center_subspace`).
    """
    seed = check_seed(seed)
    backend = resolve_backend(backend)
    with WorkerPool(cpu_workers(num_workers)) as pool:
        prep = begin_preprocess(manifolds, pool, center_removal=center_removal, seed=seed,
                        max_rank=max_rank, min_rank=min_rank, n_restarts=n_restarts,
                        basis=basis, backend=backend, n_searches=n_searches)
        groups = split_by_cost(prep.Ms.astype(np.float64) ** 2, pool.n)
        S = dict(kv for part in pool.map(prep.finish, groups) for kv in part)
    return prep.result(S)

