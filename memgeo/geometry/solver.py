r"""Step 4 of the method: the exact per-T problem

    F(T) = min_V ||V - T||^2   subject to   V . s~_j >= kappa  for all j,

for all T and all manifolds at once (:func:`solve_f`), the per-T fallbacks (:func:`solve_f_nnls`,
scipy; :func:`solve_f_cvxopt`, the oracle as in the public code) and the KKT residual that
every solution is checked against (:func:`kkt_residual`). Dual: ``min_{lambda >= 0} 1/2
lambda^T G lambda + lambda^T (S~^T T - kappa)``, G = S~^T S~, V* = T + S~ lambda*.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch

from .backend import resolve_backend
from .results import SolveResult
from .stages import active_set_polish, fista_cpu, fista_torch, lawson_hanson, pack_mask
from .validation import check_kappa

SOLVERS = ("batched", "cvxopt")


def kkt_residual(S, T, V, lam, kappa: float = 0.0) -> np.ndarray:
    """Relative KKT residual of (V, lam) for min ||V-T||^2 s.t. S^T V >= kappa, per T.

    With unit-norm constraint normals s_hat_j = s_j/||s_j||, mu_j = lam_j ||s_j||, slack
    g_j = s_hat_j . V - kappa/||s_j|| and length scale l = max(||T||, ||V||, |kappa|):
    max of  primal [-g]_+ / l,  dual [-mu]_+ / l,  complementarity mu |g| / l^2,
    stationarity ||V - T - S lam|| / l.
    S: (D+1, M); T, V: (n, D+1); lam: (n, M).
    """
    S = np.asarray(S, np.float64)
    T = np.atleast_2d(np.asarray(T, np.float64))
    V = np.atleast_2d(np.asarray(V, np.float64))
    lam = np.atleast_2d(np.asarray(lam, np.float64))
    d = np.linalg.norm(S, axis=0)
    d = np.where(d > 0, d, 1.0)
    g = (V @ S - kappa) / d
    mu = lam * d
    ell = np.maximum.reduce([np.linalg.norm(T, axis=1), np.linalg.norm(V, axis=1),
                             np.full(T.shape[0], abs(kappa)), np.full(T.shape[0], 1e-300)])
    prim = np.max(np.maximum(-g, 0.0), axis=1) / ell
    dual = np.max(np.maximum(-mu, 0.0), axis=1) / ell
    comp = np.max(np.abs(mu * g), axis=1) / ell ** 2
    stat = np.linalg.norm(V - T - lam @ S.T, axis=1) / ell
    return np.maximum.reduce([prim, dual, comp, stat])



def solve_f_nnls(S, T, kappa: float = 0.0):
    """Exact per-T solution via the least-distance form and Lawson-Hanson NNLS (any kappa).

    With x = V - T: min ||x|| s.t. S_hat^T x >= h, h = kappa/||s|| - S_hat^T T. With E = [S_hat;
    h^T] and f = e_(D+2), u = argmin_{u >= 0} ||E u - f||, rho = 1 - h.u > 0, the solution is
    x = S_hat u / rho and mu = u / rho (Lawson & Hanson 1974, ch. 23). Returns (V, lam).
    """
    from scipy.optimize import nnls
    S = np.asarray(S, np.float64)
    T = np.atleast_2d(np.asarray(T, np.float64))
    d = np.linalg.norm(S, axis=0)
    d = np.where(d > 0, d, 1.0)
    Sh = S / d
    n, M = T.shape[0], S.shape[1]
    Vout = np.empty_like(T)
    lam = np.zeros((n, M))
    f = np.zeros(S.shape[0] + 1)
    f[-1] = 1.0
    for i in range(n):
        h = kappa / d - Sh.T @ T[i]
        if np.all(h <= 0):                       # V = T feasible: interior
            Vout[i] = T[i]
            continue
        E = np.vstack([Sh, h[None, :]])
        try:
            u, _ = nnls(E, f, maxiter=50 * M + 100)
        except RuntimeError:
            u, _ = nnls(E, f, maxiter=5000 * M)
        rho = 1.0 - h @ u
        if not rho > 0:
            raise RuntimeError("least-distance problem reported infeasible; cannot happen for "
                               "point sets with center coordinate 1")
        mu = u / rho
        lam[i] = mu / d
        Vout[i] = T[i] + Sh @ mu
    return Vout, lam


_CVX_OPTS = {"show_progress": False, "maxiters": 1000, "abstol": 1e-12, "reltol": 1e-12,
             "feastol": 1e-12}


def solve_f_cvxopt(S, T, kappa: float = 0.0) -> SolveResult:
    """Oracle: one cvxopt QP per T (as the public code): min 1/2 V.V - T.V s.t. -S^T V <= -kappa."""
    from cvxopt import matrix, solvers
    S = np.asarray(S, np.float64)
    T = np.atleast_2d(np.asarray(T, np.float64))
    n, D1 = T.shape
    M = S.shape[1]
    Pm = matrix(np.eye(D1))
    Gm = matrix(np.ascontiguousarray(-S.T))
    hm = matrix(np.full(M, -float(kappa)))
    V = np.empty_like(T)
    lam = np.zeros((n, M))
    old = dict(solvers.options)
    solvers.options.update(_CVX_OPTS)
    try:
        for i in range(n):
            out = solvers.qp(Pm, matrix(-T[i]), Gm, hm)
            V[i] = np.array(out["x"]).ravel()
            lam[i] = np.array(out["z"]).ravel()
    finally:
        solvers.options.clear()
        solvers.options.update(old)
    W = V - T
    F = np.sum(W * W, axis=1)
    kkt = kkt_residual(S, T, V, lam, kappa)
    return SolveResult(F, V, lam, kkt, np.full(n, 5, dtype=np.int8))



def verify(Sh, Tp, mu, kd, pad, kappa, numpy_arrays: bool = True):
    """Explicit relative KKT residual (B, n) and S_hat mu (B, n, D1) of a padded batch: V = T +
    S_hat mu, slacks S_hat^T V - kappa/d (stationarity holds by construction). On the CPU with
    ``numpy_arrays`` the same computation runs in numpy, in cache-sized chunks."""
    if Sh.device.type == "cpu" and numpy_arrays:
        Shn, Tn, mun, kdn, padn = (a.numpy() for a in (Sh, Tp, mu, kd, pad))
        B, n, M = mun.shape
        W = np.empty(Tn.shape)
        kkt = np.empty((B, n))
        per = max(1, 100_000 // max(1, n * max(M, Tn.shape[2])))
        for c0 in range(0, B, per):
            sl = slice(c0, c0 + per)
            Wc, muc = W[sl], mun[sl]
            np.matmul(muc, Shn[sl].transpose(0, 2, 1), out=Wc)
            V = Tn[sl] + Wc
            g = np.matmul(V, Shn[sl])
            if kappa != 0.0:
                g -= kdn[sl, None, :]
            g[np.broadcast_to(padn[sl, None, :], g.shape)] = 1.0
            ell = np.maximum(np.sqrt(np.maximum(np.vecdot(Tn[sl], Tn[sl]), np.vecdot(V, V))),
                             max(abs(kappa), 1e-300))
            prim = np.maximum(-np.min(g, axis=-1), 0.0) / ell
            dual = np.maximum(-np.min(muc, axis=-1), 0.0) / ell
            g *= muc
            comp = np.maximum(np.max(g, axis=-1), -np.min(g, axis=-1)) / (ell * ell)
            kkt[sl] = np.maximum(np.maximum(prim, dual), comp)
        return torch.from_numpy(kkt), torch.from_numpy(W)
    W = torch.bmm(mu, Sh.transpose(1, 2))
    V = Tp + W
    g = torch.bmm(V, Sh) - kd[:, None, :]
    g = torch.where(pad[:, None, :], 1.0, g)
    ell = torch.clamp(torch.maximum(torch.maximum(torch.linalg.norm(Tp, dim=-1),
                                                  torch.linalg.norm(V, dim=-1)),
                                    torch.full_like(V[..., 0], abs(kappa))), min=1e-300)
    prim = torch.clamp(-g, min=0.0).amax(-1) / ell
    dual = torch.clamp(-mu, min=0.0).amax(-1) / ell
    comp = (mu * g).abs().amax(-1) / ell ** 2
    return torch.maximum(torch.maximum(prim, dual), comp), W


def group_indices(Ms, n_list, budget=4_000_000):
    """Groups of problems solved as one padded batch: sorted by M, a group's M within 1.5 x + 8
    of its smallest, and at most ``budget`` (problems x max M x max n) entries."""
    order = np.argsort(Ms, kind="stable")
    groups, cur = [], []
    for i in order:
        if cur:
            Mmax = max(Ms[j] for j in cur + [i])
            nmax = max(n_list[j] for j in cur + [i])
            too_wide = Ms[i] > 1.5 * Ms[cur[0]] + 8
            if too_wide or (len(cur) + 1) * Mmax * nmax > budget:
                groups.append(cur)
                cur = []
        cur.append(int(i))
    if cur:
        groups.append(cur)
    return groups


@dataclass
class PaddedBatch:
    """A group of problems padded to common sizes (B problems, nmax T, D1max rows, Mmax points;
    padding points have d = 0). The torch tensors share memory with the numpy arrays when the
    batch is on the CPU with numpy arrays; the ``*_np`` fields are None otherwise."""
    B: int
    Mmax: int
    D1max: int
    nmax: int
    Tp: np.ndarray                # (B, nmax, D1max)
    Tmask: np.ndarray             # (B, nmax) real T
    Tp_t: torch.Tensor
    Tm_t: torch.Tensor
    d: torch.Tensor               # (B, Mmax) column norms, 0 on padding
    pad: torch.Tensor
    Sh: torch.Tensor              # (B, D1max, Mmax) unit-norm columns
    kd: torch.Tensor              # (B, Mmax) kappa / d, 0 on padding
    degenerate: torch.Tensor      # (B,) many points in few dimensions (M >= 2 (D+1))
    d_np: np.ndarray | None = None
    pad_np: np.ndarray | None = None
    Sh_np: np.ndarray | None = None
    kd_np: np.ndarray | None = None


def pad_batch(S_list, T_list, grp, kappa: float, dev, numpy_arrays: bool) -> PaddedBatch:
    """The problems ``grp`` of ``S_list``/``T_list`` as one :class:`PaddedBatch` on ``dev``."""
    Ms = [S_list[i].shape[1] for i in grp]
    B = len(grp)
    Mmax = int(max(Ms))
    D1max = int(max(S_list[i].shape[0] for i in grp))
    nmax = int(max(T_list[i].shape[0] for i in grp))
    Sp = np.zeros((B, D1max, Mmax))
    Tp = np.zeros((B, nmax, D1max))
    Tmask = np.zeros((B, nmax), dtype=bool)
    for b, i in enumerate(grp):
        s, t = S_list[i], T_list[i]
        Sp[b, : s.shape[0], : s.shape[1]] = s
        Tp[b, : t.shape[0], : t.shape[1]] = t
        Tmask[b, : t.shape[0]] = True
    arrays = {}
    if numpy_arrays:                          # numpy arrays shared with the torch tensors
        d_np = np.sqrt(np.einsum("bdm,bdm->bm", Sp, Sp))
        pad_np = d_np == 0
        Sh_np = Sp / np.where(pad_np, 1.0, d_np)[:, None, :]
        kd_np = np.where(pad_np, 0.0, kappa / np.where(pad_np, 1.0, d_np))
        Tp_t, Tm_t = torch.from_numpy(Tp), torch.from_numpy(Tmask)
        d, pad, Sh, kd = (torch.from_numpy(a) for a in (d_np, pad_np, Sh_np, kd_np))
        arrays = dict(d_np=d_np, pad_np=pad_np, Sh_np=Sh_np, kd_np=kd_np)
    else:
        Sp_t = torch.from_numpy(Sp).to(dev)
        Tp_t = torch.from_numpy(Tp).to(dev)
        Tm_t = torch.from_numpy(Tmask).to(dev)
        d = torch.linalg.norm(Sp_t, dim=1)                                # (B, M), 0 on padding
        pad = d == 0
        Sh = Sp_t / torch.where(pad, 1.0, d)[:, None, :]
        kd = torch.where(pad, 0.0, kappa / torch.where(pad, 1.0, d))
    Mreal = torch.tensor([int(M) for M in Ms], device=dev)
    D1real = torch.tensor([S_list[i].shape[0] for i in grp], device=dev)
    # many points in few dimensions: projected gradient crawls, go to Lawson-Hanson directly
    degenerate = Mreal >= 2 * D1real
    return PaddedBatch(B, Mmax, D1max, nmax, Tp, Tmask, Tp_t, Tm_t, d, pad, Sh, kd, degenerate,
                       **arrays)


def stages_1_2(bt: PaddedBatch, kappa, tol, max_iter, check_every, backend):
    """Stage 1 (accelerated projected gradient) on the non-degenerate problems of the batch and
    stage 2 (active-set polish) on the T it leaves unconverged. Returns mu (B, nmax, Mmax) and
    the stage per T (0: not settled, 1, 2)."""
    B, Mmax, D1max, nmax, dev = bt.B, bt.Mmax, bt.D1max, bt.nmax, bt.Tp_t.device
    Tp_t, Sh, kd, pad, d = bt.Tp_t, bt.Sh, bt.kd, bt.pad, bt.d
    run = bt.Tm_t & ~bt.degenerate[:, None]
    stage = torch.zeros((B, nmax), dtype=torch.int8, device=dev)
    if not bool(run.any()):
        return torch.zeros((B, nmax, Mmax), dtype=torch.float64, device=dev), stage
    nd = torch.nonzero(~bt.degenerate).flatten()
    if bt.Sh_np is not None:
        ndn = nd.numpy()
        sel = (lambda a: a) if ndn.size == B else (lambda a: a[ndn])
        Shn = sel(bt.Sh_np)
        Gh_np = np.matmul(Shn.transpose(0, 2, 1), Shn)                  # M x M, M < 2 (D+1)
        Gh_np[:, np.arange(Mmax), np.arange(Mmax)] = np.where(
            sel(bt.pad_np), 1.0, Gh_np[:, np.arange(Mmax), np.arange(Mmax)])
        mu_np, conv_np = fista_cpu(Gh_np, Shn, sel(bt.Tp), sel(bt.Tmask) & run[nd].numpy(),
                                   sel(bt.kd_np), sel(bt.pad_np), kappa, tol, max_iter,
                                   check_every, backend)
        Gh, mu_nd, conv_nd = (torch.from_numpy(a) for a in (Gh_np, mu_np, conv_np))
    else:
        Gh = torch.bmm(Sh[nd].transpose(1, 2), Sh[nd])                 # M x M, M < 2 (D+1)
        Gh.diagonal(dim1=1, dim2=2).copy_(
            torch.where(pad[nd], 1.0, Gh.diagonal(dim1=1, dim2=2)))
        mu_nd, conv_nd = fista_torch(Sh[nd], Tp_t[nd], run[nd], d[nd], kappa, tol,
                                     max_iter, check_every, Gh=Gh)
    if nd.numel() == B:
        mu = mu_nd
    else:
        mu = torch.zeros((B, nmax, Mmax), dtype=torch.float64, device=dev)
        mu[nd] = mu_nd
    stage[nd] = torch.where(conv_nd & run[nd], 1, 0).to(torch.int8)
    # stage 2: active-set polish of the unconverged, packed per manifold
    rows, order, valid = pack_mask(run & (stage == 0))
    pos = torch.full((B,), -1, dtype=torch.long, device=dev)
    pos[nd] = torch.arange(nd.numel(), device=dev)
    if rows.numel():
        per = max(1, 6_000_000 // max(1, order.shape[1] * Mmax * Mmax))
        for c0 in range(0, rows.numel(), per):
            r, o, v = rows[c0:c0 + per], order[c0:c0 + per], valid[c0:c0 + per]
            Tg = Tp_t[r].gather(1, o[..., None].expand(-1, -1, D1max))
            bs = torch.bmm(Tg, Sh[r]) - kd[r][:, None, :]
            bs = torch.where(pad[r][:, None, :], 1.0, bs)
            x0 = mu[r].gather(1, o[..., None].expand(-1, -1, Mmax))
            xs, _ = active_set_polish(Gh[pos[r]], bs, x0, v, pad[r], (Tg * Tg).sum(-1), kd[r],
                                      tol)
            rr, oo = r[:, None].expand_as(o)[v], o[v]
            mu[rr, oo] = xs[v]
            stage[rr, oo] = 2
    return mu, stage


def stage_3(bt: PaddedBatch, mu, stage, kappa, tol, numpy_arrays):
    """Verify every T of the batch; batched Lawson-Hanson for those that fail the check (and
    for the degenerate problems, which stages 1-2 skip), then verify again. Updates mu and
    stage in place; returns the KKT residuals (B, nmax) and S_hat mu (B, nmax, D1max)."""
    Mmax, D1max = bt.Mmax, bt.D1max
    Tp_t, Sh, kd, pad = bt.Tp_t, bt.Sh, bt.kd, bt.pad
    kkt, W = verify(Sh, Tp_t, mu, kd, pad, kappa, numpy_arrays)
    redo = bt.Tm_t & ~(kkt <= tol)
    rows, order, valid = pack_mask(redo)
    if rows.numel():
        kk = min(Mmax, D1max + 1)
        per = max(1, 4_000_000 // max(1, order.shape[1] * (4 * Mmax + kk * (D1max + 2 * kk))))
        for c0 in range(0, rows.numel(), per):
            r = rows[c0:c0 + per]
            o = order[c0:c0 + per]
            v = valid[c0:c0 + per]
            Tg = Tp_t[r].gather(1, o[..., None].expand(-1, -1, D1max))
            h = kd[r][:, None, :] - torch.bmm(Tg, Sh[r])
            h = torch.where(pad[r][:, None, :], -1.0, h)
            mu_lh, ok = lawson_hanson(Sh[r], h, v, pad[r])
            rr = r[:, None].expand_as(o)[ok]
            oo = o[ok]
            mu[rr, oo] = mu_lh[ok]
            stage[rr, oo] = 3
        kkt, W = verify(Sh, Tp_t, mu, kd, pad, kappa, numpy_arrays)
    return kkt, W


def per_t_fallbacks(i, S, T, V, W, lam, kkt, stage, kappa, tol, accept_tol):
    """Stages 4-5 for problem ``i`` (S~ and its T): scipy NNLS for every T whose residual
    ``kkt`` is above ``tol``, then cvxopt where that is above ``accept_tol`` (kept where it is
    better; a RuntimeWarning for what stays above). Updates V, lam, kkt, stage in place;
    returns W = V - T (a copy when anything was redone)."""
    bad = np.nonzero(~(kkt <= tol))[0]
    if not bad.size:
        return W
    W = W.copy()
    Vb, lb = solve_f_nnls(S, T[bad], kappa)
    kb = kkt_residual(S, T[bad], Vb, lb, kappa)
    V[bad], lam[bad], kkt[bad], stage[bad] = Vb, lb, kb, 4
    W[bad] = lb @ S.T
    worse = bad[~(kb <= accept_tol)]
    if worse.size:
        cv = solve_f_cvxopt(S, T[worse], kappa)
        better = cv.kkt < kkt[worse]
        wb = worse[better]
        V[wb], lam[wb], kkt[wb], stage[wb] = cv.V[better], cv.lam[better], cv.kkt[better], 5
        W[wb] = V[wb] - T[wb]
        nbad = int(np.sum(~(kkt[worse] <= accept_tol)))
        if nbad:
            warnings.warn(f"per-T problem {i}: {nbad} T with KKT residual up to "
                          f"{np.nanmax(kkt[worse]):.2e} > {accept_tol:g} after all "
                          "fallbacks", RuntimeWarning)
    return W


def _problem_lists(S, T):
    """(S_list, T_list, single): the problems as float64 lists, checked."""
    single = isinstance(S, (np.ndarray, torch.Tensor)) and np.ndim(S) == 2
    S_list = [np.asarray(S, np.float64)] if single else [np.asarray(s, np.float64) for s in S]
    T_list = ([np.atleast_2d(np.asarray(T, np.float64))] if single
              else [np.atleast_2d(np.asarray(t, np.float64)) for t in T])
    if len(S_list) != len(T_list):
        raise ValueError("S and T lists must have the same length")
    for i, (s, t) in enumerate(zip(S_list, T_list)):
        if s.ndim != 2 or t.shape[1] != s.shape[0]:
            raise ValueError(f"problem {i}: T has {t.shape[1]} coordinates but S~ has "
                             f"{s.shape[0]} rows; both must be D+1")
        if not (np.isfinite(s).all() and np.isfinite(t).all()):
            raise ValueError(f"problem {i}: non-finite values in S~ or T")
        if s.shape[1] < 1:
            raise ValueError(f"problem {i}: S~ has no points")
    return S_list, T_list, single


def solve_f(S, T, kappa: float = 0.0, *, device=None, tol: float = 1e-12,
            max_iter: int = 32, check_every: int = 8, accept_tol: float = 1e-9,
            num_threads: int | None = None, backend="auto"):
    """Batched exact solver of F(T) = min ||V - T||^2 s.t. V . s~_j >= kappa.

    ``S``: (D+1, M) array or a list of them; ``T``: (n, D+1) array or a list (one per S).
    Returns a :class:`SolveResult` (or a list).

    Problems are solved in padded batches of similar M (:func:`group_indices`,
    :func:`pad_batch`), in stages (:mod:`memgeo.geometry.stages`): (1) accelerated projected
    gradient on the Jacobi-scaled dual, all T of all manifolds at once, for manifolds whose Gram
    matrix G = S~^T S~ is non-singular (on the CPU in float32 with float64 refinement and a
    float64 check every ``check_every`` iterations, ``max_iter`` iterations in all); (2) for the
    T it leaves unconverged, a primal-dual active-set polish (exact solve of the equality-
    constrained problem on the support, warm-started) (:func:`stages_1_2`); (3) batched
    Lawson-Hanson NNLS on the least-distance form for what is still unverified and for every T
    of manifolds with many points in few dimensions (M >= 2 (D+1)); its passive sets stay
    linearly independent, so duplicates and singular G are harmless (:func:`stage_3`); (4)
    scipy NNLS per T; (5) cvxopt per T (:func:`per_t_fallbacks`). After each stage every T's
    KKT residual is computed explicitly (V = T + S lam, slacks S^T V, :func:`verify`) and must
    be <= ``tol``; stages 4-5 are accepted at <= ``accept_tol`` (else a RuntimeWarning; the
    residual is returned).
    ``num_threads``: temporarily set torch's CPU threads (useful on a shared machine).
    ``backend`` (:mod:`memgeo.geometry.backend`): on a CPU device, ``"torch"`` runs the torch
    code of stage 1 and the checks (the GPU path) instead of numpy, and ``"numpy"`` the numpy
    twin of the compiled float32 update.
    """
    if num_threads is not None:
        old = torch.get_num_threads()
        torch.set_num_threads(int(num_threads))
        try:
            return solve_f(S, T, kappa, device=device, tol=tol, max_iter=max_iter,
                           check_every=check_every, accept_tol=accept_tol, backend=backend)
        finally:
            torch.set_num_threads(old)
    kappa = check_kappa(kappa)
    backend = resolve_backend(backend)
    S_list, T_list, single = _problem_lists(S, T)
    dev = torch.device(device) if device is not None else torch.device("cpu")
    numpy_arrays = dev.type == "cpu" and backend.numpy_solver
    Ms = np.array([s.shape[1] for s in S_list])
    ns = np.array([t.shape[0] for t in T_list])
    results = [None] * len(S_list)
    for grp in group_indices(Ms, ns):
        bt = pad_batch(S_list, T_list, grp, kappa, dev, numpy_arrays)
        mu, stage = stages_1_2(bt, kappa, tol, max_iter, check_every, backend)
        kkt, W = stage_3(bt, mu, stage, kappa, tol, numpy_arrays)
        lam = mu / torch.where(bt.pad, 1.0, bt.d)[:, None, :]
        V = bt.Tp_t + W
        V_np, W_np, lam_np = V.cpu().numpy(), W.cpu().numpy(), lam.cpu().numpy()
        kkt_np, stage_np = kkt.cpu().numpy(), stage.cpu().numpy()
        for b, i in enumerate(grp):                 # views into the group's arrays, no copies
            n_i, M_i, D1_i = ns[i], Ms[i], S_list[i].shape[0]
            Vi = V_np[b, :n_i, :D1_i]
            li = lam_np[b, :n_i, :M_i]
            ki = kkt_np[b, :n_i]
            st = stage_np[b, :n_i]
            Wi = per_t_fallbacks(i, S_list[i], T_list[i], Vi, W_np[b, :n_i, :D1_i], li, ki, st,
                                 kappa, tol, accept_tol)
            F = np.vecdot(Wi, Wi)
            results[i] = SolveResult(F, Vi, li, ki, st)
    return results[0] if single else results
