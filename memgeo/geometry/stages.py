r"""The batched stages 1-3 of the per-T solver (:func:`memgeo.geometry.solver.solve_f` runs
them, checks every T's KKT residual after each, and falls back per T).

All work on the dual of F(T) = min ||V - T||^2 s.t. V . s~_j >= kappa in Jacobi-scaled form
(unit-norm constraint normals s_hat_j = s~_j / d_j, multipliers mu = lambda d), for a padded
batch of manifolds (B, ...) and their T (n per manifold):

1. Accelerated projected gradient (FISTA with the momentum capped by the condition number and
   gradient restart): :func:`fista_torch` (torch, the GPU path) or :func:`fista_cpu` (numpy,
   float32 iterations with float64 refinement, :func:`fista_mixed_chunk`).
2. :func:`active_set_polish`: primal-dual active set, exact on the support (Cholesky).
3. :func:`lawson_hanson`: batched Lawson-Hanson NNLS on the least-distance form, exact for any
   kappa, duplicates and rank deficiency.
"""
from __future__ import annotations

import numpy as np
import torch

from .backend import compiled_kernel

_DTYPE = torch.float64
_FISTA_CHUNK = 200_000        # T x points per float32 stage-1 chunk (~1 MB arrays, cache-sized)


def fista_torch(Sh, Tp, Tmask, d, kappa, tol, max_iter, check_every, Gh=None):
    """Accelerated projected gradient on the Jacobi-scaled dual for a padded group.

    Sh: (B, D1, M) unit-norm columns (padding columns zero); Tp: (B, n, D1); Tmask: (B, n) bool
    (True for real T); d: (B, M) column norms (0 on padding). Returns mu (B, n, M) and a bool
    (B, n) convergence mask (KKT <= tol, Gram-based check). Converged T are dropped from the
    iteration (repacking manifolds and T) so that a few slow T do not keep the whole batch busy.
    """
    B, D1, M = Sh.shape
    n = Tp.shape[1]
    dev = Sh.device
    pad = d == 0
    if Gh is None:
        Gh = torch.bmm(Sh.transpose(1, 2), Sh)
        Gh.diagonal(dim1=1, dim2=2).copy_(torch.where(pad, 1.0, Gh.diagonal(dim1=1, dim2=2)))
    kd = torch.where(pad, 0.0, kappa / torch.where(pad, 1.0, d))         # (B, M)
    bh = torch.bmm(Tp, Sh) - kd[:, None, :]
    bh = torch.where(pad[:, None, :], 1.0, bh)
    ev = torch.linalg.eigvalsh(Gh)
    L = ev[:, -1] * (1.0 + 1e-10)
    # momentum capped by the strong-convexity ratio (no cap when G is singular: FISTA + restart)
    q = torch.clamp(ev[:, 0] / L, min=0.0, max=1.0)
    beta_c = ((1 - torch.sqrt(q)) / (1 + torch.sqrt(q)))[:, None]        # (B, 1)
    negL = (-1.0 / L)[:, None, None]
    Tn2 = (Tp * Tp).sum(-1)                                                # (B, n)
    k2 = kappa * kappa
    out = torch.zeros((B, n, M), dtype=_DTYPE, device=dev)
    conv = ~Tmask.clone()
    # working set: manifolds `wb` (B',) and T slots `wt` (B', n') into the original layout
    wb = torch.arange(B, device=dev)
    wt = torch.arange(n, device=dev)[None, :].expand(B, n).clone()
    valid = Tmask.clone()
    kdw = kd[:, None, :]
    Tn2w = Tn2
    # warm start: exact when the constraint normals are orthogonal (G_hat = I)
    x = torch.clamp(-bh, min=0.0)
    y = x.clone()
    t = torch.ones((B, n), dtype=_DTYPE, device=dev)
    for it in range(1, max_iter + 1):
        g = torch.baddbmm(bh, y, Gh)
        xn = torch.addcmul(y, g, negL).clamp_min_(0.0)
        dlt = xn - x
        rs = torch.linalg.vecdot(g, dlt) > 0
        tn = 0.5 * (1.0 + torch.sqrt(1.0 + 4.0 * t * t))
        beta = torch.minimum((t - 1.0) / tn, beta_c)
        beta = torch.where(rs, 0.0, beta)
        tn = torch.where(rs, 1.0, tn)
        y = torch.addcmul(xn, beta[..., None], dlt)
        x, t = xn, tn
        if it % check_every and it != max_iter:
            continue
        slack = torch.baddbmm(bh, x, Gh)
        vn2 = (Tn2w + torch.linalg.vecdot(x, bh + slack)
               + 2.0 * torch.linalg.vecdot(x, kdw.expand_as(x)))
        ell2 = torch.clamp(torch.maximum(torch.maximum(Tn2w, vn2), torch.full_like(vn2, k2)),
                           min=1e-300)
        prim = torch.clamp(-slack, min=0.0).amax(-1) / torch.sqrt(ell2)
        comp = (x * slack.abs()).amax(-1) / ell2
        ok = (torch.maximum(prim, comp) <= tol) & valid
        if bool(ok.any()):
            bb = wb[:, None].expand_as(wt)[ok]
            tt = wt[ok]
            out[bb, tt] = x[ok]
            conv[bb, tt] = True
            valid = valid & ~ok
        nleft = valid.sum(dim=1)
        total = int(nleft.sum())
        if total == 0:
            break
        if total <= 0.5 * valid.numel() and it != max_iter:
            keep = nleft > 0
            nmax = int(nleft.max())
            order = torch.argsort((~valid[keep]).to(torch.int8), dim=1, stable=True)[:, :nmax]
            wb = wb[keep]
            wt = wt[keep].gather(1, order)
            valid = torch.arange(nmax, device=dev)[None, :] < nleft[keep][:, None]
            o3 = order[..., None].expand(-1, -1, M)
            Gh, negL, beta_c = Gh[keep], negL[keep], beta_c[keep]
            bh = bh[keep].gather(1, o3)
            x = x[keep].gather(1, o3)
            y = y[keep].gather(1, o3)
            t = t[keep].gather(1, order)
            Tn2w = Tn2w[keep].gather(1, order)
            kdw = kdw[keep]
    # unconverged: hand back the last iterate
    if bool(valid.any()):
        bb = wb[:, None].expand_as(wt)[valid]
        out[bb, wt[valid]] = x[valid]
    return out, conv


def fista_mixed_chunk(G, bh, x, T2, kdw, negL, beta_c, valid, tol, k2, rounds, backend):
    """Stage 1 on the CPU for a chunk of manifolds: float32 iterations, float64 refinement.

    Each round computes the float64 gradient r = bh + x G (which is also the slack of the
    constraints), checks the KKT conditions in float64 (primal -r <= tol l, complementarity
    x |r| <= tol l^2; x >= 0 and stationarity hold by construction; from the second float32
    round on, and after the last), and runs ``rounds[i]``
    accelerated projected-gradient iterations in float32 on the correction d of x:
    min 1/2 d^T G d + r^T d s.t. d >= -x, keeping the momentum of the previous round (so the
    rounds are one accelerated iteration whose gradient is refreshed in float64). Each round can
    gain up to seven digits (float32 has eight), as in mixed-precision iterative refinement,
    until the check passes. x (b, n, M) is updated in place; returns the (b, n) mask of verified
    T (invalid slots count as verified). ``backend`` (a resolved
    :class:`~memgeo.geometry.backend.Backend`): the compiled fused update
    (:func:`memgeo.geometry.kernels.fista_update`) runs when it is compiled, else numpy.
    """
    conv = ~valid
    slack = np.empty_like(x)
    shp = x.shape
    Gs = (G * negL).astype(np.float32)                  # -G / L
    r32, lo = np.empty(shp, np.float32), np.empty(shp, np.float32)
    d, y, dn, u = (np.empty(shp, np.float32) for _ in range(4))
    fused = compiled_kernel("fista_update", backend)
    for rnd in range(len(rounds) + 1):
        np.matmul(x, G, out=slack)
        slack += bh
        # (after one float32 round x is at best ~1e-7 accurate: the first check is after two)
        if rnd > 1 or (rnd > 0 and rnd == len(rounds)):
            vn2 = T2 + np.vecdot(x, bh + slack)
            if kdw is not None:
                vn2 += 2.0 * np.vecdot(x, np.broadcast_to(kdw, shp))
            ell2 = np.maximum(np.maximum(T2, vn2), max(k2, 1e-300))
            z = x * slack
            comp = np.maximum(np.max(z, axis=-1), -np.min(z, axis=-1))
            conv |= (-np.min(slack, axis=-1) <= tol * np.sqrt(ell2)) & (comp <= tol * ell2)
        if rnd == len(rounds) or conv.all():
            break
        np.multiply(slack, negL, out=r32)                   # -r / L
        np.negative(x, out=lo)
        if rnd == 0:
            y.fill(0.0)
            t = np.ones(shp[:2], np.float32)
        else:                       # continue the momentum of the previous round, re-centred
            y -= d
            y[conv] = 0.0
        d.fill(0.0)
        for _ in range(rounds[rnd]):
            np.matmul(y, Gs, out=u)
            if fused is not None:                           # the same update, compiled
                fused(u, y, d, dn, r32, lo, t, beta_c)
                d, dn = dn, d
                continue
            u += r32                                        # u = -grad / L
            np.add(u, y, out=dn)
            np.maximum(dn, lo, out=dn)
            np.subtract(dn, d, out=y)                       # the step
            rs = np.vecdot(u, y) < 0                        # gradient restart
            tn = 0.5 * (1.0 + np.sqrt(1.0 + 4.0 * t * t))
            beta = np.minimum((t - 1.0) / tn, beta_c)
            beta[rs] = 0.0
            tn[rs] = 1.0
            y *= beta[..., None]
            y += dn
            d, dn, t = dn, d, tn
        d[conv] = 0.0                                       # verified T keep their x
        x += d
        np.maximum(x, 0.0, out=x)
    return conv


def fista_cpu(Gh, Sh, Tp, run, kd, pad, kappa, tol, max_iter, check_every, backend):
    """Stage 1 on the CPU (numpy): the problem of :func:`fista_torch` (Jacobi-scaled dual,
    momentum capped by the condition number, gradient restart), iterated in float32 with
    float64 refinement and float64 KKT checks every ``check_every`` iterations
    (:func:`fista_mixed_chunk`), in chunks of manifolds that stay in the CPU cache.
    Gh: (B, M, M) float64 with unit diagonal on padding. Returns mu (B, n, M) float64 and the
    (B, n) mask of T that passed the check. ``backend``: as for :func:`fista_mixed_chunk`."""
    B, D1, M = Sh.shape
    n = Tp.shape[1]
    bh = np.matmul(Tp, Sh)
    if kappa != 0.0:
        bh -= kd[:, None, :]
    bh[np.broadcast_to(pad[:, None, :], bh.shape)] = 1.0
    ev = np.linalg.eigvalsh(Gh)
    L = ev[:, -1] * (1.0 + 1e-5)                  # margin for the float32 products
    q = np.clip(ev[:, 0] / L, 0.0, 1.0)
    beta_c = ((1.0 - np.sqrt(q)) / (1.0 + np.sqrt(q))).astype(np.float32)[:, None]
    negL = (-1.0 / L).astype(np.float32)[:, None, None]
    Tn2 = np.einsum("bnd,bnd->bn", Tp, Tp)
    x = np.maximum(-bh, 0.0)
    conv = np.ones((B, n), dtype=bool)
    ce = max(1, int(check_every))
    rounds = [ce] * (max(0, int(max_iter)) // ce)
    if max_iter % ce:
        rounds.append(max_iter % ce)
    kdn = kd[:, None, :] if kappa != 0.0 else None
    per = max(1, _FISTA_CHUNK // max(1, n * M))      # ~1 MB of float32 per working array
    for c0 in range(0, B, per):
        sl = slice(c0, c0 + per)
        conv[sl] = fista_mixed_chunk(Gh[sl], bh[sl], x[sl], Tn2[sl],
                                     None if kdn is None else kdn[sl], negL[sl], beta_c[sl],
                                     run[sl], tol, kappa * kappa, rounds, backend)
    return x, conv


def active_set_polish(Gh, bh, x0, valid, pad, Tn2, kd, tol, max_iter=20):
    """Primal-dual active set (semismooth Newton) polish, in the packed (manifold, slot) layout.

    Gh: (B, M, M) scaled Gram (unit diagonal), bh, x0: (B, n, M), valid: (B, n), pad: (B, M),
    Tn2: (B, n), kd: (B, M). Each step takes the support A = {x - slack > 0}, solves the
    equality-constrained problem on it exactly (Cholesky of the |A| x |A| block, gathered
    compactly; pseudo-inverse when singular) and checks the KKT conditions; problems that
    converge, reach a fixed point or cycle leave the batch (repacked). Returns the best iterate
    (B, n, M) and its Gram-based residual (B, n).
    """
    B, n, M = bh.shape
    dev = Gh.device
    best = x0.clone()
    res = torch.full((B, n), float("inf"), dtype=_DTYPE, device=dev)
    # working set (repacked as problems leave)
    wb = torch.arange(B, device=dev)
    wt = torch.arange(n, device=dev)[None, :].expand(B, n).clone()
    live = valid.clone()
    Gw, bw, x, T2, padw, kdw = Gh, bh, x0.clone(), Tn2, pad[:, None, :], kd[:, None, :]
    slack = torch.baddbmm(bw, x, Gw)
    stall = torch.zeros((B, n), dtype=torch.int8, device=dev)
    rbest = torch.full((B, n), float("inf"), dtype=_DTYPE, device=dev)
    for _ in range(max_iter):
        if not bool(live.any()):
            break
        Bw = x.shape[0]
        A = ((x - slack) > 0) & ~padw & live[..., None]
        cnt = A.sum(-1)
        k = max(int(cnt.max()), 1)
        idx = torch.argsort((~A).to(torch.int8), dim=-1, stable=True)[..., :k]     # (Bw, n', k)
        smf = (torch.arange(k, device=dev) < cnt[..., None]).to(_DTYPE)
        bi4 = torch.arange(Bw, device=dev)[:, None, None, None]
        GA = Gw[bi4, idx[..., :, None], idx[..., None, :]]                         # (Bw, n', k, k)
        GA = GA * smf[..., :, None] * smf[..., None, :] + torch.diag_embed(1.0 - smf)
        rhs = (-bw.gather(2, idx) * smf)[..., None]
        Lc, info = torch.linalg.cholesky_ex(GA)
        sol = torch.cholesky_solve(rhs, Lc)
        bad = info != 0
        if bool(bad.any()):
            sol[bad] = torch.linalg.pinv(GA[bad], hermitian=True) @ rhs[bad]
        x = torch.zeros_like(x).scatter_add_(2, idx, sol[..., 0] * smf)
        slack = torch.baddbmm(bw, x, Gw)
        vn2 = (T2 + torch.linalg.vecdot(x, bw + slack)
               + 2.0 * torch.linalg.vecdot(x, kdw.expand_as(x)))
        ell2 = torch.clamp(torch.maximum(T2, vn2), min=1e-300)
        ell = torch.sqrt(ell2)
        prim = torch.clamp(-slack.masked_fill(padw, 0.0), min=0.0).amax(-1) / ell
        dual = torch.clamp(-x, min=0.0).amax(-1) / ell
        comp = (x * slack).abs().amax(-1) / ell2
        r = torch.maximum(torch.maximum(prim, dual), comp)
        imp = live & (r < rbest)
        if bool(imp.any()):
            bb, tt = wb[:, None].expand_as(wt)[imp], wt[imp]
            res[bb, tt] = r[imp]
            best[bb, tt] = x[imp]
        stall = torch.where(live & (r < 0.5 * rbest), 0, stall + 1).to(torch.int8)
        rbest = torch.where(imp, r, rbest)
        newA = ((x - slack) > 0) & ~padw
        stuck = (newA == A).all(-1) | (stall >= 4)          # fixed point, or cycling
        live = live & ~((r <= tol) | stuck)
        nl = int(live.sum())
        if 0 < nl <= 0.6 * live.numel():
            rows, order, v = pack_mask(live)
            o3 = order[..., None].expand(-1, -1, M)
            wb, wt = wb[rows], wt[rows].gather(1, order)
            Gw, padw, kdw = Gw[rows], padw[rows], kdw[rows]
            bw, x, slack = bw[rows].gather(1, o3), x[rows].gather(1, o3), slack[rows].gather(1, o3)
            T2, stall = T2[rows].gather(1, order), stall[rows].gather(1, order)
            rbest = rbest[rows].gather(1, order)
            live = v
    return best, res


def pack_mask(mask: torch.Tensor):
    """Pack the True entries of a (B, n) mask per row: returns (rows (B',), order (B', n'),
    valid (B', n')) with order[i, :count] the column indices of row rows[i]."""
    cnt = mask.sum(dim=1)
    rows = torch.nonzero(cnt > 0).flatten()
    if rows.numel() == 0:
        return rows, None, None
    nmax = int(cnt.max())
    order = torch.argsort((~mask[rows]).to(torch.int8), dim=1, stable=True)[:, :nmax]
    valid = torch.arange(nmax, device=mask.device)[None, :] < cnt[rows][:, None]
    return rows, order, valid


def lawson_hanson(Sh, h, valid, pad, max_steps=None):
    """Batched Lawson-Hanson NNLS for the least-distance form of the per-T problem.

    For each (manifold b, slot i): u = argmin_{u >= 0} ||E u - f||, E = [S_hat_b; h_bi^T],
    f = e_last; then rho = 1 - h.u and mu = u / rho (Lawson & Hanson 1974, ch. 23). The passive
    set is kept as at most D1 + 1 slots (its columns stay linearly independent), so the cost per
    step is that of a k x k solve with k <= D1 + 1, and products go through S_hat (D1 x M), never
    the M x M Gram matrix: this is the exact path for degenerate problems (many points in few
    dimensions, duplicates). Sh: (B, D1, M), h: (B, n, M), valid: (B, n), pad: (B, M).
    Returns (mu, ok).
    """
    B, D1, M = Sh.shape
    n = h.shape[1]
    dev = Sh.device
    k = min(M, D1 + 1)
    steps = max_steps or (3 * k + 20)
    z = torch.zeros((B, n, M), dtype=_DTYPE, device=dev)
    idx = torch.zeros((B, n, k), dtype=torch.long, device=dev)
    sm = torch.zeros((B, n, k), dtype=torch.bool, device=dev)
    inner = torch.zeros((B, n), dtype=torch.bool, device=dev)
    done = ~valid.clone()
    fail = torch.zeros((B, n), dtype=torch.bool, device=dev)
    hscale = torch.clamp(h.abs().amax(-1), min=1.0)
    ShT = Sh.transpose(1, 2).contiguous()                                     # (B, M, D1)
    bidx = torch.arange(B, device=dev)[:, None, None]
    for _ in range(steps):
        if bool(done.all()):
            break
        add = ~inner & ~done
        if bool(add.any()):
            w = -torch.bmm(torch.bmm(z, ShT), Sh) + h * (1.0 - (h * z).sum(-1, keepdim=True))
            # (unused slots point at column 0 with weight 0: accumulate, never overwrite)
            inP = torch.zeros((B, n, M), dtype=torch.int16, device=dev).scatter_add_(
                2, idx, sm.to(torch.int16)) > 0
            w = w.masked_fill(inP | pad[:, None, :], -float("inf"))
            wmax, j = w.max(dim=-1)
            fin = add & (wmax <= 1e-13 * hscale)
            done |= fin
            add &= ~fin
            full = sm.all(-1)
            fail |= add & full
            done |= add & full
            add &= ~full
            free = torch.argmin(sm.to(torch.int8), dim=-1)                    # first free slot
            upd = add[..., None] & (torch.arange(k, device=dev) == free[..., None])
            idx = torch.where(upd, j[..., None], idx)
            sm = sm | upd
        act = ~done
        if not bool(act.any()):
            break
        # least squares on the passive slots: (G_PP + h_P h_P^T) s = h_P
        hP = torch.gather(h, 2, idx)                                           # (B, n, k)
        SP = ShT[bidx, idx]                                                    # (B, n, k, D1)
        GP = torch.matmul(SP, SP.transpose(-1, -2))                            # (B, n, k, k)
        smf = sm.to(_DTYPE)
        A = (GP + hP[..., :, None] * hP[..., None, :]) * smf[..., :, None] * smf[..., None, :]
        A = A + torch.diag_embed(1.0 - smf)
        rhs = (hP * smf)[..., None]
        Lc, info = torch.linalg.cholesky_ex(A)
        s = torch.cholesky_solve(rhs, Lc)[..., 0]
        bad = info != 0
        if bool(bad.any()):
            s[bad] = (torch.linalg.pinv(A[bad], hermitian=True) @ rhs[bad])[..., 0]
        s = s * smf
        zP = torch.gather(z, 2, idx) * smf
        neg = sm & (s <= 0)
        feas = ~neg.any(-1)
        # feasible: accept s; infeasible: move towards s and drop the slots that hit zero
        ratio = torch.where(neg, zP / torch.clamp(zP - s, min=1e-300), torch.full_like(s, 2.0))
        alpha = torch.clamp(ratio.amin(-1), min=0.0, max=1.0)
        znew = torch.where(feas[..., None], s, zP + alpha[..., None] * (s - zP))
        zscale = torch.clamp(zP.abs().amax(-1, keepdim=True), min=1e-300)
        drop = ~feas[..., None] & sm & (znew <= 1e-14 * zscale)
        drop |= ~feas[..., None] & neg & (ratio <= alpha[..., None])
        znew = torch.where(drop, 0.0, znew) * smf
        sm = sm & ~(drop & act[..., None])
        znew = torch.where(act[..., None], znew, zP)
        z = torch.zeros_like(z).scatter_add_(2, idx, znew * sm.to(_DTYPE))
        inner = act & ~feas
    fail |= ~done
    rho = 1.0 - (h * z).sum(-1)
    fail |= ~(rho > 0)
    mu = z / torch.where(rho > 0, rho, 1.0)[..., None]
    return mu, valid & ~fail

