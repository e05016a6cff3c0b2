r"""Center correlation and the low-rank center subspace (step 2 of the method).

The P centers minus their mean are written in an orthonormal basis of their span (r <= P - 1
coordinates, :func:`centers_basis`), so that nothing here grows with N. For K = 1, 2, ...
:func:`find_center_subspace` minimises over orthonormal V (r x K) the squared residual
correlations

    cost(V) = 1/2 sum_{m,n} C_mn^2 / (C_mm C_nn),   C = X X^T - (X V)(X V)^T

by Riemannian gradient descent on the Stiefel manifold (:func:`stiefel_minimize`: QR
retraction, Barzilai-Borwein steps, non-monotone Armijo line search), with cost and gradient from
the P x P Gram matrix and X V without forming C (:func:`correlation_cost_grad_lowrank`). The
compiled twin of :func:`stiefel_minimize` (:mod:`memgeo.geometry.kernels`) runs unless
``backend="numpy"``.
"""
from __future__ import annotations

import numpy as np

from .backend import compiled_kernel, resolve_backend
from .results import CenterSubspace

# Whole K searches per center-subspace search in the book's analyses (ProbeConfig.center_searches
# defaults to it): at P = 10 one search's optimum depends on its seed (a layer's capacity moved by
# ~15 % between analysis seeds); the best of 5 is stable. analyze() itself keeps 1 by default,
# so that its numbers for a given seed stay those pinned by ENGINE_VERSION.
CENTER_SEARCHES = 5


def mean_abs_correlation(Y: np.ndarray) -> float:
    """mean_{m != n} |cos(y_m, y_n)| of the rows of Y (zero rows count as cos = 0)."""
    P = Y.shape[0]
    nrm = np.linalg.norm(Y, axis=1)
    safe = np.where(nrm > 0, nrm, 1.0)
    Yn = Y / safe[:, None]
    C = np.abs(Yn @ Yn.T)
    np.fill_diagonal(C, 0.0)
    return float(C.sum() / (P * (P - 1)))


def centers_basis(centers: np.ndarray):
    """Coordinates X (P x r) of the centers minus their mean in an orthonormal basis of their
    span, and ``lift(V)``: the N x K orthonormal basis of the subspace that V (r x K, orthonormal
    in those coordinates) spans in feature space. Returns (X, lift, Xb).

    From the P x P Gram matrix G = Xb Xb^T = U diag(w) U^T: X = U sqrt(w) (no N-sized work)
    when every eigenvalue is either well resolved (w > 1e-9 w_max) or checked to be a null
    direction (||Xb^T u|| at rounding level); otherwise the basis is refined in feature space
    (Householder QR of Xb^T U w^-1/2, cost P^2 N), which also resolves tiny directions.
    """
    Xb = centers - centers.mean(axis=0, keepdims=True)
    P, N = Xb.shape
    G = Xb @ Xb.T
    w, U = np.linalg.eigh(G)
    w, U = w[::-1], U[:, ::-1]
    empty = (np.zeros((P, 0)), lambda V: np.zeros((N, 0)), Xb)
    if not w.size or not w[0] > 0:
        return empty
    resolved = w > w[0] * 1e-9
    small = np.nonzero(~resolved)[0]
    if small.size:
        # accurate singular values of the unresolved directions (||Xb^T u||, cost N per one)
        sv_small = np.linalg.norm(Xb.T @ U[:, small], axis=0)
    if not small.size or np.all(sv_small <= np.sqrt(w[0]) * 1e-10):
        B = U[:, resolved] / np.sqrt(w[resolved])                  # Q = Xb^T B
        X = U[:, resolved] * np.sqrt(w[resolved])

        def lift(V):
            Qv, R = np.linalg.qr(Xb.T @ (B @ V))                     # N x K, re-orthonormalised
            return Qv
        return X, lift, Xb
    tol = w[0] * 1e-20 * P
    keep = w > max(tol, 1e-300)
    Q = Xb.T @ (U[:, keep] / np.sqrt(w[keep]))              # N x r, orthonormal up to rounding
    Q, _ = np.linalg.qr(Q)
    X = Xb @ Q                                                # P x r
    # drop numerically-null directions
    sv = np.linalg.norm(X, axis=0)
    k2 = sv > sv.max() * 1e-10
    X, Q = X[:, k2], Q[:, k2]
    return X, (lambda V: Q @ V), Xb


def center_correlation(centers) -> float:
    """rho_c = mean_{m != n} |cos(c_m, c_n)| of the P centers minus their mean (rows)."""
    C = np.asarray(centers, dtype=np.float64)
    if C.ndim != 2 or C.shape[0] < 2:
        raise ValueError("centers must be a (P, N) array with P >= 2")
    return mean_abs_correlation(C - C.mean(axis=0, keepdims=True))


def correlation_cost_grad(V, X, XXt, diag):
    """Cost 1/2 sum_mn C_mn^2/(C_mm C_nn), C = XX^T - (XV)(XV)^T, and its Euclidean gradient in V.
    V: (b, r, K) stack. Returns cost (b,) (inf where a residual center vanishes), grad (b, r, K).

    With w = 1/diag(C): cost = 1/2 w^T (C o C) w and dcost/dA = 2 (q o A - w o (C (w o A))),
    q = w^2 o ((C o C) w), A = X V; dcost/dV = X^T dcost/dA.
    """
    A = np.matmul(X, V)                                   # (b, P, K)
    C = XXt - np.matmul(A, A.transpose(0, 2, 1))
    c0 = diag - np.einsum("bpk,bpk->bp", A, A)
    bad = np.any(c0 <= 0, axis=1)
    w = 1.0 / np.where(c0 > 0, c0, 1.0)
    C2w = np.matmul(C * C, w[:, :, None])[:, :, 0]        # (b, P)
    cost = 0.5 * np.einsum("bp,bp->b", w, C2w)
    cost[bad] = np.inf
    wA = w[:, :, None] * A
    dA = 2.0 * ((w * w * C2w)[:, :, None] * A - w[:, :, None] * np.matmul(C, wA))
    return cost, np.matmul(X.T, dA)


def qr_retract(Y):
    """Q factor with positive R diagonal (works on (r, K) or stacked (b, r, K))."""
    Q, R = np.linalg.qr(Y)
    s = np.sign(np.diagonal(R, axis1=-2, axis2=-1))
    s = np.where(s == 0, 1.0, s)
    return Q * s[..., None, :]


_CANCEL_MAX = 1e6     # cancellation factor above which the low-rank cost is recomputed directly


def correlation_cost_grad_lowrank(Vt, X, XT, G, GG, diag, X2=None):
    """:func:`correlation_cost_grad` without forming the (b, P, P) residual matrices C.

    Bases are stored transposed: Vt (b, K, r) holds V^T. With A = X V and G = X X^T:
    (C o C) w = (G o G) w - 2 rowsum(A o G (w o A)) + rowsum(A M_w o A), M_w = A^T diag(w) A
    (K x K), and C (w o A) = G (w o A) - A M_w, so an evaluation is three BLAS-3 products of
    O(b K P^2) plus O(b K P) work. ``XT`` = X^T (contiguous), ``GG`` = G o G, ``X2`` = 2 X
    (optional). Returns cost (b,), the transposed gradient (b, K, r) and a cancellation factor
    max_p [(G o G) w]_p w_p (b,), an upper bound of the ratio of [(G o G) w]_p to the exact
    [(C o C) w]_p (which is at least C_pp^2 w_p = 1/w_p): the relative rounding error of cost
    and gradient is at most about that times machine epsilon.
    """
    b, K, r = Vt.shape
    P = X.shape[0]
    At = (Vt.reshape(b * K, r) @ XT).reshape(b, K, P)     # A^T
    c0 = diag - np.einsum("bkp,bkp->bp", At, At)
    bad = None
    if not c0.min() > 0:                                  # a residual center vanishes
        bad = ~(np.min(c0, axis=1) > 0)
        c0[bad] = 1.0
    w = 1.0 / c0
    wA = At * w[:, None, :]
    H = (wA.reshape(b * K, P) @ G).reshape(b, K, P)       # (G (w o A))^T
    AM = np.matmul(np.matmul(At, wA.transpose(0, 2, 1)), At)   # (A M_w)^T, M_w symmetric
    GGw = w @ GG                                          # (G o G) w
    H -= AM                                               # (C (w o A))^T
    AM += H
    AM += H                                               # 2 G (w o A) - A M_w
    C2w = GGw - np.einsum("bkp,bkp->bp", At, AM)          # (C o C) w
    cost = 0.5 * np.vecdot(w, C2w)
    # [(C o C) w]_p >= C_pp^2 w_p = 1/w_p: [(G o G) w]_p w_p bounds the cancellation
    canc = np.max(GGw * w, axis=1)
    if bad is not None:
        cost[bad] = np.inf
        canc[bad] = 1.0
    H *= w[:, None, :]
    w *= w
    w *= C2w
    dA = At * w[:, None, :]
    dA -= H
    if X2 is None:
        X2 = 2.0 * X
    return cost, (dA.reshape(b * K, P) @ X2).reshape(b, K, r), canc


def retract_rows(Yt, steplen):
    """Orthonormalise the rows of Yt = V^T - t xi^T (b, K, r) (V orthonormal, xi tangent with
    V^T xi = 0; ``steplen`` = t ||xi||, (b,)): the Q factor with positive R diagonal, i.e. the
    QR retraction. Y^T Y = I + t^2 xi^T xi has condition number <= 1 + steplen^2, so Cholesky
    QR (L^-1 Y^T, L L^T = Y^T Y) is accurate; a second pass for long steps, Householder for
    very long ones. K = 1: normalisation. L^-1 is formed explicitly (K x K, condition number
    <= 1 + steplen) and applied as one product: for the small K of the centre search that is
    about 3x faster than a batched ``solve``."""
    if Yt.shape[1] == 1:
        return Yt / np.sqrt(np.einsum("bkr,bkr->b", Yt, Yt))[:, None, None]
    smax = float(np.max(steplen)) if steplen.size else 0.0
    if smax <= 1e3:
        Q = Yt
        try:
            for _ in range(1 if smax <= 1.0 else 2):
                L = np.linalg.cholesky(np.matmul(Q, Q.transpose(0, 2, 1)))
                Q = np.matmul(np.linalg.inv(L), Q)
            return Q
        except np.linalg.LinAlgError:
            pass
    return qr_retract(Yt.transpose(0, 2, 1)).transpose(0, 2, 1)


def stiefel_minimize(V0, X, *, max_iter=1000, gtol=1e-6, backend="auto"):
    """Minimise the squared residual-correlation cost over orthonormal V, for a stack of starts.

    Riemannian gradient descent (embedded metric, QR retraction) with alternating
    Barzilai-Borwein steps and a non-monotone (Zhang-Hager) Armijo line search, vectorised over
    the starts; a start stops when its Riemannian gradient norm is below ``gtol`` (or its line
    search fails). V0: (b, r, K), orthonormal. Returns (V (b, r, K), cost (b,)).

    Cost and gradient come from :func:`correlation_cost_grad_lowrank` (from
    :func:`correlation_cost_grad` when its cancellation factor exceeds 1e6). Bases are stored
    transposed (b, K, r) so that the products with X are single matrix products over all starts,
    and only the running starts are kept (no indexing in the common path). ``backend``
    (:mod:`memgeo.geometry.backend`): the compiled twin of this function runs unless it is
    ``"numpy"``.
    """
    X = np.ascontiguousarray(X, dtype=np.float64)
    compiled = compiled_kernel("stiefel_minimize", resolve_backend(backend))
    if compiled is not None:
        Vt0 = np.ascontiguousarray(np.asarray(V0, dtype=np.float64).transpose(0, 2, 1))
        Vt, f = compiled(Vt0, X, int(max_iter), float(gtol), float(_CANCEL_MAX))
        return np.ascontiguousarray(Vt.transpose(0, 2, 1)), f
    XT = np.ascontiguousarray(X.T)
    X2 = 2.0 * X
    G = X @ XT
    GG = G * G
    diag = np.diag(G).copy()
    Vt = np.array(np.asarray(V0, dtype=np.float64).transpose(0, 2, 1), order="C")
    b, K, r = Vt.shape
    out_V, out_f = Vt.copy(), np.full(b, np.inf)

    def cost_grad(Vx):
        f, Gr, canc = correlation_cost_grad_lowrank(Vx, X, XT, G, GG, diag, X2)
        if not np.max(canc) <= _CANCEL_MAX:
            f, Gr = correlation_cost_grad(Vx.transpose(0, 2, 1), X, G, diag)
            Gr = Gr.transpose(0, 2, 1)
        return f, Gr

    def rgrad(Vx, Gr):                                  # G - V sym(V^T G), transposed
        VtG = np.matmul(Gr, Vx.transpose(0, 2, 1))
        return Gr - np.matmul(0.5 * (VtG + VtG.transpose(0, 2, 1)), Vx)

    def sqnorm(Z):
        z = Z.reshape(Z.shape[0], -1)
        return np.vecdot(z, z)

    f, G0 = cost_grad(Vt)
    rg = rgrad(Vt, G0)
    gn = np.sqrt(sqnorm(rg))
    st = {"ids": np.arange(b), "Vt": Vt, "f": f, "rg": rg, "gn": gn,
          "step": 1.0 / np.maximum(gn, 1e-12), "Cref": f.copy(), "Qk": np.ones(b)}
    eta = 0.85

    def retire(mask):                                   # starts leaving the iteration
        out_V[st["ids"][mask]] = st["Vt"][mask]
        out_f[st["ids"][mask]] = st["f"][mask]
        keep = ~mask
        for k in st:
            st[k] = st[k][keep]

    done = ~np.isfinite(f) | (gn < gtol)
    if done.any():
        retire(done)
    for it in range(max_iter):
        if st["ids"].size == 0:
            break
        Vt, rg, gn, Cref = st["Vt"], st["rg"], st["gn"], st["Cref"]
        t = st["step"]
        Vn = retract_rows(Vt - t[:, None, None] * rg, t * gn)
        fn, Gn = cost_grad(Vn)
        ok = fn <= Cref - 1e-4 * t * gn * gn            # (False for inf and nan)
        if not ok.all():                                # backtracking (t <- 0.3 t, 40 tries)
            t = t.copy()
            pend = np.nonzero(~ok)[0]
            for _ in range(39):
                t[pend] *= 0.3
                tp = t[pend]
                Vp = retract_rows(Vt[pend] - tp[:, None, None] * rg[pend], tp * gn[pend])
                fp, Gp = cost_grad(Vp)
                okp = fp <= Cref[pend] - 1e-4 * tp * gn[pend] ** 2
                sel = pend[okp]
                Vn[sel], fn[sel], Gn[sel] = Vp[okp], fp[okp], Gp[okp]
                ok[sel] = True
                pend = pend[~okp]
                if pend.size == 0:
                    break
            if not ok.any():
                break
            if not ok.all():                            # line search failed: stop there
                retire(~ok)
                Vt, rg, gn, Cref = st["Vt"], st["rg"], st["gn"], st["Cref"]
                Vn, fn, Gn, t = Vn[ok], fn[ok], Gn[ok], t[ok]
        rgn = rgrad(Vn, Gn)
        nb = Vn.shape[0]
        Sd = (Vn - Vt).reshape(nb, -1)
        Yd = (rgn - rg).reshape(nb, -1)
        sy = np.abs(np.vecdot(Sd, Yd))
        if it % 2 == 0:
            bb = np.vecdot(Sd, Sd) / np.where(sy > 0, sy, 1.0)
        else:
            bb = sy / np.maximum(np.vecdot(Yd, Yd), 1e-300)
        st["step"] = np.minimum(np.maximum(np.where(sy > 0, bb, 2.0 * t), 1e-10), 1e10)
        Qk = st["Qk"]
        Qn = eta * Qk + 1.0
        st["Cref"] = (eta * Qk * Cref + fn) / Qn
        st["Qk"] = Qn
        st["Vt"], st["f"], st["rg"] = Vn, fn, rgn
        gn = st["gn"] = np.sqrt(sqnorm(rgn))
        done = gn < gtol
        if done.any():
            retire(done)
    if st["ids"].size:
        retire(np.ones(st["ids"].size, dtype=bool))
    return np.ascontiguousarray(out_V.transpose(0, 2, 1)), out_f


def find_center_subspace(centers, *, seed: int = 0, max_rank: int | None = None,
                         min_rank: int = 1, n_restarts: int = 10, max_iter: int = 500,
                         gtol: float = 1e-6, backend="auto", n_searches: int = 1) -> CenterSubspace:
    """Low-rank structure of the P manifold centers (rows of ``centers``, (P, N)).

    Works in the r <= P-1 coordinates of the span of the centered centers. For K = ``min_rank``,
    ..., K_max it minimises the squared residual correlations over orthonormal V (r x K), starting
    ``n_restarts`` times from [random combination of centers, V_(K-1)] and keeping the start whose
    least-preserved center keeps the largest fraction of its norm (public code's "stability").
    K_max = min(r - 1, n95 + 10) with n95 the number of components below 95 % of the variance
    (public: argmax + 11), so residuals keep at least one dimension; the search stops as soon as
    the mean |residual correlation| has risen three times in a row (the public code also always
    evaluates K = 5 and crashes when K_max exceeds P - 2; here K <= r - 1 always). The K with the
    lowest mean |residual correlation| is chosen. P = 2 (r = 1) gives K = 0: nothing can be
    removed. Cost: O(n_restarts x P^2 x K) per iteration, independent of N. ``backend``: see
    :func:`stiefel_minimize`.

    ``n_searches``: independent repetitions of the whole K search (search s >= 1 draws its starts
    from the seed (seed, s); search 0 is the single search of ``n_searches=1``), keeping the one
    whose chosen K has the lowest mean |residual correlation|. The cost landscape has several
    optima at small P (greedy K steps from random starts end in different ones), so one search
    depends on the seed; the best of several does much less, and never has a higher residual
    correlation than search 0 alone. Cost: ``n_searches`` times one search (at P = 10 one search
    takes milliseconds; it does not grow with N). See :data:`CENTER_SEARCHES`.
    """
    backend = resolve_backend(backend)
    centers = np.asarray(centers, dtype=np.float64)
    P = centers.shape[0]
    if P < 2:
        raise ValueError("need at least 2 centers")
    X, lift, Xb = centers_basis(centers)
    rho = mean_abs_correlation(X) if X.shape[1] else mean_abs_correlation(Xb)
    r = X.shape[1]
    sv2 = np.sum(X * X, axis=0)
    sv2 = np.sort(sv2)[::-1]
    if r == 0:
        return CenterSubspace(rho, 0, np.zeros((centers.shape[1], 0)), rho, ())
    cum = np.cumsum(sv2) / sv2.sum()
    n95 = int(np.sum(cum < 0.95))
    kmax_pub = max(n95 - 1, 0) + 11
    kmax = min(r - 1, kmax_pub if max_rank is None else int(max_rank))
    kmin = max(int(min_rank), 0)
    if kmax < max(kmin, 1):
        return CenterSubspace(rho, 0, np.zeros((centers.shape[1], 0)), rho, ())
    if int(n_searches) < 1:
        raise ValueError(f"n_searches={n_searches}: need at least one search")
    best = None
    for s in range(int(n_searches)):
        rng = np.random.default_rng([0, int(seed)] if s == 0 else [0, int(seed), s])
        found = _search(X, P, r, kmax, kmin, rho, rng, int(n_restarts), max_iter, gtol, backend)
        if best is None or found[0] < best[0]:
            best = found
    _, K, V, res = best
    if K == 0:
        return CenterSubspace(rho, 0, np.zeros((centers.shape[1], 0)), rho, tuple(res))
    return CenterSubspace(rho, K, lift(V), float(res[K - 1]), tuple(float(v) for v in res))


def _search(X, P, r, kmax, kmin, rho, rng, n_restarts, max_iter, gtol, backend):
    """One greedy K search of :func:`find_center_subspace` (K = 1, 2, ..., each started from
    V_(K-1) and a random combination of centers). Returns (residual correlation at the chosen
    K, K, V (r x K) or None, residual correlation per searched K)."""
    res, Vs = [], []
    V_prev = np.zeros((r, 0))
    xn = np.linalg.norm(X, axis=1)
    for K in range(1, kmax + 1):
        nr = max(1, n_restarts)
        s = rng.standard_normal((nr, P))
        V0 = np.concatenate([(s @ X)[:, :, None], np.broadcast_to(V_prev, (nr, r, K - 1))],
                            axis=2)
        Vs_r, _ = stiefel_minimize(qr_retract(V0), X, max_iter=max_iter, gtol=gtol,
                                   backend=backend)
        A = np.matmul(X, Vs_r)                                              # (nr, P, K)
        X0n = np.sqrt(np.maximum(xn[None, :] ** 2 - np.einsum("bpk,bpk->bp", A, A), 0.0))
        stab = np.min(X0n / np.where(xn > 0, xn, 1.0)[None, :], axis=1)
        best = Vs_r[int(np.argmax(stab))]
        V_prev = best
        X0 = X - (X @ best) @ best.T
        res.append(mean_abs_correlation(X0))
        Vs.append(best)
        if len(res) >= 4 and res[-1] > res[-2] > res[-3] > res[-4]:
            break
    cand = list(range(len(res)))
    if kmin > 1:
        cand = [i for i in cand if i + 1 >= kmin] or cand
    if kmin == 0:
        # K = 0 (no removal) competes with the searched ranks
        best_i = int(np.argmin(res))
        if rho <= res[best_i]:
            return rho, 0, None, res
    best_i = cand[int(np.argmin([res[i] for i in cand]))]
    return res[best_i], best_i + 1, Vs[best_i], res
