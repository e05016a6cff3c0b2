"""Compiled (numba) kernels of the geometry engine, each the twin of a numpy version that stays
as the fallback (``backend="numpy"``) and as the reference the tests compare to.

``stiefel_minimize`` is the center-subspace search (numpy twin:
:func:`memgeo.geometry.centers.stiefel_minimize`). The numpy version spends most of its time in
Python and numpy call overhead: about 900 iterations of a few dozen calls on (starts x K x P)
arrays, with P ~ 100. Here the same algorithm (alternating Barzilai-Borwein steps, Zhang-Hager
non-monotone Armijo search, Cholesky-QR retraction, starts retiring when their Riemannian
gradient norm is below ``gtol``) runs as one numba function: the three O(b K P^2) products of an
evaluation stay batched BLAS calls, the small K x K and per-center work are plain loops, and the
GIL is released (the center search runs in parallel with the Gram products of the manifolds).
Results agree with the numpy version to rounding (the landscape is flat, so the optimum found can
move by more than rounding; the tests compare costs, gradients and optimality, not bases). Its
parts are public so that the tests can compare them with their twins:
``correlation_cost_grad_lowrank`` (:func:`memgeo.geometry.centers.correlation_cost_grad_lowrank`),
``correlation_cost_grad`` (:func:`memgeo.geometry.centers.correlation_cost_grad`) and
``retract_rows`` (:func:`memgeo.geometry.centers.retract_rows`).

``fista_update`` is the elementwise part of one float32 accelerated projected-gradient iteration
of :func:`memgeo.geometry.stages.fista_mixed_chunk` (eight numpy passes over the iterates fused
into one pass per T; the matrix product stays a BLAS call).

Imported lazily (:mod:`memgeo.geometry.backend`); ``available()`` is False when numba is missing,
and the numpy versions are used. The first import after installation compiles the kernels (about
15 s on 2 cores); numba caches them next to this file.
"""
from __future__ import annotations

import numpy as np

try:
    import numba
    from numba import njit
except ImportError:                                # pragma: no cover - numba is a requirement
    numba = None


def available() -> bool:
    return numba is not None


if numba is not None:
    _jit = njit(cache=True, nogil=True, fastmath=False, error_model="numpy")

    @_jit
    def correlation_cost_grad_lowrank(Vt, idx, X, XT, X2, G, GG, diag, f_out, gr_out, cancel_max):
        """Low-rank cost/gradient (as centers.correlation_cost_grad_lowrank) for the starts ``idx``
        of the (b, K, r) stack ``Vt``; writes f_out[s] and gr_out[s] for s in idx. Falls back to the
        direct formula for all of them when a cancellation factor exceeds ``cancel_max``."""
        na = idx.shape[0]
        b, K, r = Vt.shape
        P = X.shape[0]
        buf = np.empty((na * K, r))
        for a in range(na):
            for k in range(K):
                buf[a * K + k, :] = Vt[idx[a], k, :]
        At = np.dot(buf, XT)                                   # (na K, P): A^T per start
        w = np.empty((na, P))
        bad = np.zeros(na, dtype=np.bool_)
        for a in range(na):
            for p in range(P):
                s = diag[p]
                for k in range(K):
                    v = At[a * K + k, p]
                    s -= v * v
                w[a, p] = s
            for p in range(P):
                if not w[a, p] > 0.0:
                    bad[a] = True
            if bad[a]:
                for p in range(P):
                    w[a, p] = 1.0
            for p in range(P):
                w[a, p] = 1.0 / w[a, p]
        wA = np.empty((na * K, P))
        for a in range(na):
            for k in range(K):
                for p in range(P):
                    wA[a * K + k, p] = At[a * K + k, p] * w[a, p]
        H = np.dot(wA, G)                                      # (G (w o A))^T
        GGw = np.dot(w, GG)                                    # (G o G) w
        dA = np.empty((na * K, P))
        canc_max = 0.0
        cost = np.empty(na)
        Mw = np.empty((K, K))
        for a in range(na):
            o = a * K
            for i in range(K):                                 # M_w = A^T diag(w) A
                for j in range(K):
                    s = 0.0
                    for p in range(P):
                        s += At[o + i, p] * wA[o + j, p]
                    Mw[i, j] = s
            c = 0.0
            cm = 0.0
            for p in range(P):
                # AM = (A M_w)^T column p; H <- H - AM; C2w = GGw - sum_k A (2H + AM)
                acc = 0.0
                for k in range(K):
                    am = 0.0
                    for j in range(K):
                        am += Mw[k, j] * At[o + j, p]
                    h = H[o + k, p] - am
                    H[o + k, p] = h
                    acc += At[o + k, p] * (am + 2.0 * h)
                c2w = GGw[a, p] - acc
                wp = w[a, p]
                c += wp * c2w
                z = GGw[a, p] * wp
                if not z <= cm:                        # (NaN counts as too large)
                    cm = z if z == z else np.inf
                q = wp * wp * c2w
                for k in range(K):
                    dA[o + k, p] = At[o + k, p] * q - H[o + k, p] * wp
            cost[a] = 0.5 * c
            if bad[a]:
                cost[a] = np.inf
                cm = 1.0
            if cm > canc_max:
                canc_max = cm
        if not canc_max <= cancel_max:
            correlation_cost_grad(Vt, idx, X, G, diag, f_out, gr_out)
            return
        gr = np.dot(dA, X2)                                    # (na K, r)
        for a in range(na):
            s = idx[a]
            f_out[s] = cost[a]
            for k in range(K):
                gr_out[s, k, :] = gr[a * K + k, :]

    @_jit
    def correlation_cost_grad(Vt, idx, X, G, diag, f_out, gr_out):
        """As centers.correlation_cost_grad (forms C = G - A A^T), for accuracy under
        cancellation; for the starts ``idx`` of the transposed stack ``Vt``."""
        b, K, r = Vt.shape
        P = X.shape[0]
        for a in range(idx.shape[0]):
            s = idx[a]
            A = np.dot(X, np.ascontiguousarray(Vt[s].T))       # (P, K)
            C = G - np.dot(A, A.T)
            w = np.empty(P)
            bad = False
            for p in range(P):
                c0 = diag[p]
                for k in range(K):
                    c0 -= A[p, k] * A[p, k]
                if not c0 > 0.0:
                    bad = True
                w[p] = c0
            if bad:
                w[:] = 1.0
            w = 1.0 / w
            C2w = np.dot(C * C, w)
            cost = 0.5 * np.dot(w, C2w)
            wA = A * w.reshape(P, 1)
            CwA = np.dot(C, wA)
            dA = np.empty((P, K))
            for p in range(P):
                q = w[p] * w[p] * C2w[p]
                for k in range(K):
                    dA[p, k] = 2.0 * (q * A[p, k] - w[p] * CwA[p, k])
            f_out[s] = np.inf if bad else cost
            gr_out[s] = np.dot(X.T, dA).T

    @_jit
    def retract_rows(Yt, idx, steplen, out):
        """Rows of Yt[s] (K x r) orthonormalised (QR retraction with positive R diagonal) into
        out[s] for s in idx: Cholesky QR (one pass, two when a step is long), Householder when
        a step is very long or the Cholesky factorisation fails (as centers.retract_rows; the
        pass count is decided over the whole batch, as there)."""
        b, K, r = Yt.shape
        na = idx.shape[0]
        if K == 1:
            for a in range(na):
                s = idx[a]
                nrm = 0.0
                for j in range(r):
                    nrm += Yt[s, 0, j] * Yt[s, 0, j]
                nrm = np.sqrt(nrm)
                for j in range(r):
                    out[s, 0, j] = Yt[s, 0, j] / nrm
            return
        smax = 0.0
        for a in range(na):
            v = steplen[idx[a]]
            if not v <= smax:                               # (NaN: Householder)
                smax = v if v == v else np.inf
        ok = smax <= 1e3
        if ok:
            npass = 1 if smax <= 1.0 else 2
            L = np.empty((K, K))
            Gm = np.empty((K, K))
            Y = np.empty((K, r))
            for a in range(na):
                s = idx[a]
                Y[:, :] = Yt[s]
                for _ in range(npass):
                    for i in range(K):
                        for j in range(i + 1):
                            v = 0.0
                            for m in range(r):
                                v += Y[i, m] * Y[j, m]
                            Gm[i, j] = v
                    for i in range(K):                          # Cholesky Gm = L L^T
                        for j in range(i + 1):
                            v = Gm[i, j]
                            for m in range(j):
                                v -= L[i, m] * L[j, m]
                            if i == j:
                                if not v > 0.0:
                                    ok = False
                                    break
                                L[i, i] = np.sqrt(v)
                            else:
                                L[i, j] = v / L[j, j]
                        if not ok:
                            break
                    if not ok:
                        break
                    for i in range(K):                          # Y <- L^-1 Y (forward substitution)
                        for m in range(i):
                            lim = L[i, m]
                            for j in range(r):
                                Y[i, j] -= lim * Y[m, j]
                        d = 1.0 / L[i, i]
                        for j in range(r):
                            Y[i, j] *= d
                if not ok:
                    break
                out[s] = Y
            if ok:
                return
        for a in range(na):                                     # Householder QR
            s = idx[a]
            Q, R = np.linalg.qr(np.ascontiguousarray(Yt[s].T))
            for k in range(K):
                sg = 1.0 if R[k, k] >= 0.0 else -1.0
                for j in range(r):
                    out[s, k, j] = Q[j, k] * sg

    @_jit
    def riemannian_gradient(Vt, Gr, idx, out):
        """Riemannian gradient G - V sym(V^T G) (transposed storage) for the starts idx."""
        b, K, r = Vt.shape
        VtG = np.empty((K, K))
        for a in range(idx.shape[0]):
            s = idx[a]
            for i in range(K):                                 # K x K: loops beat BLAS calls
                for j in range(K):
                    v = 0.0
                    for m in range(r):
                        v += Gr[s, i, m] * Vt[s, j, m]
                    VtG[i, j] = v
            for i in range(K):
                for m in range(r):
                    out[s, i, m] = Gr[s, i, m]
                for j in range(K):
                    c = 0.5 * (VtG[i, j] + VtG[j, i])
                    for m in range(r):
                        out[s, i, m] -= c * Vt[s, j, m]

    @_jit
    def trial_point(Yt, Vt, rg, s, ts):
        """Yt[s] = Vt[s] - ts rg[s]: the point to retract for step length ts."""
        K, r = Vt.shape[1], Vt.shape[2]
        for k in range(K):
            for j in range(r):
                Yt[s, k, j] = Vt[s, k, j] - ts * rg[s, k, j]

    @_jit
    def stiefel_minimize(Vt0, X, max_iter, gtol, cancel_max):
        """The loop of centers.stiefel_minimize on transposed bases Vt0 (b, K, r).
        Returns (Vt (b, K, r), cost (b,))."""
        b, K, r = Vt0.shape
        XT = np.ascontiguousarray(X.T)
        X2 = 2.0 * X
        G = np.dot(X, XT)
        GG = G * G
        P = X.shape[0]
        diag = np.empty(P)
        for p in range(P):
            diag[p] = G[p, p]
        Vt = Vt0.copy()
        Vn = np.empty_like(Vt)
        Yt = np.empty_like(Vt)
        f = np.empty(b)
        fn = np.empty(b)
        Gr = np.empty_like(Vt)
        Gn = np.empty_like(Vt)
        rg = np.empty_like(Vt)
        rgn = np.empty_like(Vt)
        gn = np.empty(b)
        step = np.empty(b)
        Cref = np.empty(b)
        Qk = np.ones(b)
        t = np.empty(b)
        active = np.ones(b, dtype=np.bool_)
        eta = 0.85
        allidx = np.arange(b)
        correlation_cost_grad_lowrank(Vt, allidx, X, XT, X2, G, GG, diag, f, Gr, cancel_max)
        riemannian_gradient(Vt, Gr, allidx, rg)
        for s in range(b):
            v = 0.0
            for k in range(K):
                for j in range(r):
                    v += rg[s, k, j] * rg[s, k, j]
            gn[s] = np.sqrt(v)
            step[s] = 1.0 / max(gn[s], 1e-12)
            Cref[s] = f[s]
            if not np.isfinite(f[s]) or gn[s] < gtol:
                active[s] = False
        for it in range(max_iter):
            idx = np.nonzero(active)[0]
            na = idx.shape[0]
            if na == 0:
                break
            for a in range(na):
                s = idx[a]
                t[s] = step[s]
                trial_point(Yt, Vt, rg, s, t[s])
            sl = t * gn
            retract_rows(Yt, idx, sl, Vn)
            correlation_cost_grad_lowrank(Vn, idx, X, XT, X2, G, GG, diag, fn, Gn, cancel_max)
            ok = np.zeros(b, dtype=np.bool_)
            npend = 0
            for a in range(na):
                s = idx[a]
                ok[s] = fn[s] <= Cref[s] - 1e-4 * t[s] * gn[s] * gn[s]
                if not ok[s]:
                    npend += 1
            if npend:                                  # backtracking (t <- 0.3 t, 39 tries)
                pend = np.empty(npend, dtype=np.int64)
                m = 0
                for a in range(na):
                    if not ok[idx[a]]:
                        pend[m] = idx[a]
                        m += 1
                fp = np.empty(b)
                Gp = np.empty_like(Vt)
                Vp = np.empty_like(Vt)
                for _ in range(39):
                    for a in range(pend.shape[0]):
                        s = pend[a]
                        t[s] *= 0.3
                        trial_point(Yt, Vt, rg, s, t[s])
                    sl = t * gn
                    retract_rows(Yt, pend, sl, Vp)
                    correlation_cost_grad_lowrank(Vp, pend, X, XT, X2, G, GG, diag, fp, Gp,
                                                  cancel_max)
                    keep = 0
                    for a in range(pend.shape[0]):
                        s = pend[a]
                        if fp[s] <= Cref[s] - 1e-4 * t[s] * gn[s] * gn[s]:
                            Vn[s] = Vp[s]
                            fn[s] = fp[s]
                            Gn[s] = Gp[s]
                            ok[s] = True
                        else:
                            pend[keep] = s
                            keep += 1
                    pend = pend[:keep]
                    if keep == 0:
                        break
                anyok = False
                for a in range(na):
                    if ok[idx[a]]:
                        anyok = True
                if not anyok:
                    break
                m = 0
                for a in range(na):                    # failed line searches stop there
                    s = idx[a]
                    if not ok[s]:
                        active[s] = False
                    else:
                        idx[m] = s
                        m += 1
                idx = idx[:m]
                na = m
            riemannian_gradient(Vn, Gn, idx, rgn)
            for a in range(na):
                s = idx[a]
                sy = 0.0
                ss = 0.0
                yy = 0.0
                g2 = 0.0
                for k in range(K):
                    for j in range(r):
                        sd = Vn[s, k, j] - Vt[s, k, j]
                        yd = rgn[s, k, j] - rg[s, k, j]
                        sy += sd * yd
                        ss += sd * sd
                        yy += yd * yd
                        g2 += rgn[s, k, j] * rgn[s, k, j]
                sy = abs(sy)
                if it % 2 == 0:
                    bb = ss / (sy if sy > 0 else 1.0)
                else:
                    bb = sy / max(yy, 1e-300)
                st = bb if sy > 0 else 2.0 * t[s]
                step[s] = min(max(st, 1e-10), 1e10)
                qn = eta * Qk[s] + 1.0
                Cref[s] = (eta * Qk[s] * Cref[s] + fn[s]) / qn
                Qk[s] = qn
                Vt[s] = Vn[s]
                f[s] = fn[s]
                rg[s] = rgn[s]
                gn[s] = np.sqrt(g2)
                if gn[s] < gtol:
                    active[s] = False
        return Vt, f

    _F32_HALF, _F32_ONE, _F32_FOUR, _F32_ZERO = (np.float32(0.5), np.float32(1.0),
                                                  np.float32(4.0), np.float32(0.0))

    # reassociation lets LLVM vectorise the u.y sum (it only decides restarts)
    @njit(cache=True, nogil=True, error_model="numpy", fastmath={"reassoc", "nsz"})
    def fista_update(u, y, d, dn, r32, lo, t, beta_c):
        """In float32, per T (rows of the (b, n, M) arrays), the numpy iteration
        u += r; dn = max(u + y, lo); y = dn - d; restart where u.y < 0;
        t' = (1 + sqrt(1 + 4 t^2)) / 2; beta = min((t - 1) / t', beta_c); y = beta y + dn; t = t'
        (u = -grad/L on entry: y G / (-L) from the BLAS product). The caller swaps d and dn."""
        b, n, M = u.shape
        for i in range(b):
            bc = beta_c[i, 0]
            for j in range(n):
                dot = _F32_ZERO
                for k in range(M):
                    uk = u[i, j, k] + r32[i, j, k]
                    v = uk + y[i, j, k]
                    lk = lo[i, j, k]
                    v = lk if v < lk else v                # (NaN propagates, as np.maximum)
                    st = v - d[i, j, k]
                    dot += uk * st
                    dn[i, j, k] = v
                    y[i, j, k] = st
                tj = t[i, j]
                tn = _F32_HALF * (_F32_ONE + np.sqrt(_F32_ONE + _F32_FOUR * tj * tj))
                beta = (tj - _F32_ONE) / tn
                if beta > bc:
                    beta = bc
                if dot < _F32_ZERO:                    # gradient restart
                    beta = _F32_ZERO
                    tn = _F32_ONE
                for k in range(M):
                    y[i, j, k] = y[i, j, k] * beta + dn[i, j, k]
                t[i, j] = tn
