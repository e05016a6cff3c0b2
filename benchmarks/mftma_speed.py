"""Speed, memory and agreement of memgeo's MFTMA against the cvxopt-per-T oracle.

Main row (the method's own example size): P = 100 manifolds of M = 50 Gaussian points in
N = 5000 dims, n_t = 200, kappa = 0. It times memgeo's full analysis (``analyze``) and the oracle
path (``analyze(..., solver="cvxopt")``: one cvxopt QP per T, the same preprocessing and the same
T) in the same run, and prints both times, their ratio, the split into preprocessing and per-T
solving, the peak memory (tracemalloc for numpy, sampled RSS for everything) and the largest
per-T difference in F. Then rows for N = 500 ... 20000 and P = 10 ... 200 (memgeo; the oracle on a
subsample of T, extrapolated and labelled so), GPU rows when torch.cuda.is_available().
The full-analysis ratio is printed last. memgeo uses every CPU it may (the per-manifold work in
threads, the compiled center search beside it; ``--threads 1`` for one); the oracle solves one
T at a time in one thread, as the public code does. memgeo's time is the median of 5 runs after
a warm-up that also loads (or, the first time after installation, compiles) its numba kernels.

    .venv/bin/python benchmarks/mftma_speed.py            # full (a few minutes)
    .venv/bin/python benchmarks/mftma_speed.py --quick    # ~1 minute
    .venv/bin/python benchmarks/mftma_speed.py --threads 1   # on a machine shared with other jobs
    .venv/bin/python benchmarks/mftma_speed.py --backend numpy   # without the compiled kernels
"""
from __future__ import annotations

import argparse
import gc
import os
import sys
import threading
import time
import tracemalloc

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402

from memgeo import geometry as g  # noqa: E402
from memgeo.geometry.parallel import cpu_workers, thread_limits  # noqa: E402


class PeakRSS:
    """Samples the process RSS every few ms in a thread; peak minus the RSS at start."""

    def __init__(self, every=0.003):
        import psutil
        self.proc = psutil.Process()
        self.every = every

    def __enter__(self):
        gc.collect()
        self.base = self.proc.memory_info().rss
        self.peak = self.base
        self._stop = False
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()
        tracemalloc.start()
        return self

    def _run(self):
        while not self._stop:
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(self.every)

    def __exit__(self, *exc):
        self.traced = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        self._stop = True
        self.t.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)
        return False

    @property
    def rss_mb(self):
        return (self.peak - self.base) / 2 ** 20

    @property
    def traced_mb(self):
        return self.traced / 2 ** 20


REPEATS = 5          # memgeo's time is the median of this many runs (the oracle runs once)
THREADS = None       # --threads: CPU threads for memgeo (None: all it may use)
BACKEND = "auto"     # --backend: memgeo.geometry's backend argument


def make_data(P, M, N, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((M, N)).astype(dtype, copy=False) for _ in range(P)]


def timed(f):
    t0 = time.perf_counter()
    out = f()
    return out, time.perf_counter() - t0


def main_row(P, M, N, n_t, seed, device=None):
    data = make_data(P, M, N, seed)
    print(f"\n== main row: P={P} M={M} N={N} n_t={n_t} kappa=0  "
          f"(input {P * M * N * 8 / 2 ** 20:.0f} MB float64) ==")
    with PeakRSS() as mem:          # instrumented run first (fresh heap); tracemalloc slows it
        g.analyze(data, n_t=n_t, seed=seed, device=device, return_per_t=True,
                  num_threads=THREADS, backend=BACKEND)
    runs = [timed(lambda: g.analyze(data, n_t=n_t, seed=seed, device=device, return_per_t=True,
                                    num_threads=THREADS, backend=BACKEND))
            for _ in range(REPEATS)]
    res, t_mem = runs[0][0], float(np.median([t for _, t in runs]))
    print(f"memgeo analyze: {t_mem:8.3f} s (median of {REPEATS} runs: "
          f"{' '.join(f'{t:.3f}' for _, t in runs)})")
    print(f"  peak extra memory: RSS {mem.rss_mb:.1f} MB, numpy (tracemalloc) "
          f"{mem.traced_mb:.1f} MB; threads: {cpu_workers(THREADS)}; backend: {BACKEND}")
    print(f"  capacity {res.capacity:.5f}  radius {res.radius:.4f}  dimension {res.dimension:.3f}"
          f"  rho_c {res.center_correlation:.4f}  K {res.K}  stages {res.diagnostics['n_stage']}"
          f"  max KKT {res.diagnostics['max_kkt']:.1e}")
    # split: preprocessing vs per-T solving, each timed alone (analyze overlaps parts of them)
    pre, t_pre = timed(lambda: g.preprocess(data, seed=seed, num_workers=THREADS,
                                            backend=BACKEND))
    T = g.sample_t([s.shape[0] for s in pre.S], n_t, seed)
    with thread_limits(1):          # one thread, like the oracle's per-T loop
        _, t_solve = timed(lambda: g.capacity_from_points(list(pre.S), T=T, device=device,
                                                          backend=BACKEND))
    print(f"  alone: preprocessing {t_pre:.3f} s (center search {len(pre.centers.residual_by_K)}"
          f" ranks), per-T solve + statistics {t_solve:.3f} s in one thread")
    orc, t_orc = timed(lambda: g.analyze(data, n_t=n_t, seed=seed, solver="cvxopt",
                                         return_per_t=True))
    F_m = np.concatenate([p.F for p in res.per_t])
    F_o = np.concatenate([p.F for p in orc.per_t])
    dF = np.abs(F_m - F_o)
    print(f"oracle (cvxopt per T, same preprocessing and T): {t_orc:8.3f} s "
          f"({(t_orc - t_pre) / F_m.size * 1e3:.2f} ms per T)")
    print(f"  capacity {orc.capacity:.5f}  radius {orc.radius:.4f}  dimension {orc.dimension:.3f}")
    print(f"largest per-T |F_memgeo - F_oracle| = {dF.max():.2e} "
          f"(relative {np.max(dF / np.maximum(F_o, 1.0)):.2e}); "
          f"|capacity difference| = {abs(res.capacity - orc.capacity):.1e}")
    solve_ratio = (t_orc - t_pre) / t_solve
    print(f"per-T solving only: memgeo {t_solve:.3f} s vs cvxopt {t_orc - t_pre:.2f} s -> "
          f"{solve_ratio:.0f}x")
    del data, pre
    gc.collect()
    return t_mem, t_orc, mem, dF.max(), t_solve, t_orc - t_pre


def scaling_rows(rows, M, n_t, seed, oracle_T, device=None, label=""):
    print(f"\n== scaling{label}: M={M} n_t={n_t}; oracle timed on {oracle_T} T per manifold and "
          "extrapolated to all P*n_t T (+ the same preprocessing) ==")
    print("(RSS MB: growth of the resident set during the call, a lower bound once earlier rows"
          " have grown the heap; numpy MB: tracemalloc peak of numpy allocations)")
    print("(prep s: preprocess() alone; solve s: solve + statistics alone, in one thread)")
    print(f"{'P':>5} {'N':>6} {'memgeo s':>9} {'prep s':>7} {'solve s':>8} {'RSS MB':>7} "
          f"{'numpy MB':>8} {'oracle s (extrap.)':>19} {'ratio':>7}")
    for P, N in rows:
        data = make_data(P, M, N, seed)
        t_mem = float(np.median([timed(lambda: g.analyze(data, n_t=n_t, seed=seed,
                                                          device=device, num_threads=THREADS,
                                                          backend=BACKEND))[1]
                                 for _ in range(3)]))
        with PeakRSS() as mem:
            g.analyze(data, n_t=n_t, seed=seed, device=device, num_threads=THREADS,
                      backend=BACKEND)
        pre, t_pre = timed(lambda: g.preprocess(data, seed=seed, num_workers=THREADS,
                                                backend=BACKEND))
        T = g.sample_t([s.shape[0] for s in pre.S], n_t, seed)
        with thread_limits(1):
            _, t_solve = timed(lambda: g.capacity_from_points(list(pre.S), T=T, device=device,
                                                              backend=BACKEND))
        t_o = 0.0
        for s, t in zip(pre.S, T):
            t_o += timed(lambda: g.solve_f_cvxopt(s, t[:oracle_T]))[1]
        t_orc = t_pre + t_o * n_t / oracle_T
        print(f"{P:5d} {N:6d} {t_mem:9.3f} {t_pre:7.3f} {t_solve:8.3f} {mem.rss_mb:7.1f} "
              f"{mem.traced_mb:8.1f} {t_orc:19.2f} {t_orc / t_mem:7.0f}", flush=True)
        del data, pre
        gc.collect()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller main row, fewer scaling rows")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch + BLAS threads (default: leave as configured)")
    ap.add_argument("--backend", choices=g.BACKENDS, default="auto",
                    help="memgeo.geometry backend (default auto: compiled kernels)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-scaling", action="store_true")
    ap.add_argument("--oracle-T", type=int, default=10,
                    help="T per manifold for the extrapolated oracle in the scaling rows")
    args = ap.parse_args()
    global BACKEND, THREADS
    BACKEND = args.backend
    if args.threads:
        THREADS = args.threads
        torch.set_num_threads(args.threads)
        try:
            from threadpoolctl import threadpool_limits
            threadpool_limits(args.threads)
        except ImportError:
            pass
    load = os.getloadavg()
    print(f"memgeo MFTMA benchmark: torch {torch.__version__}, {os.cpu_count()} CPUs, "
          f"torch threads {torch.get_num_threads()}, load average {load[0]:.2f} {load[1]:.2f} "
          f"(other jobs on the machine slow both paths)")
    # warm-up (library loading, first-call allocations) for both paths
    w = make_data(4, 10, 50, 1)
    _, t_warm = timed(lambda: g.analyze(w, n_t=8, backend=BACKEND))
    g.analyze(w, n_t=2, solver="cvxopt")
    print(f"warm-up (imports, numba kernels loaded or compiled): {t_warm:.1f} s")

    if args.quick:
        P, M, N, n_t = 20, 50, 5000, 200
    else:
        P, M, N, n_t = 100, 50, 5000, 200
    t_mem, t_orc, mem, dmax, ts_mem, ts_orc = main_row(P, M, N, n_t, args.seed)

    if not args.no_scaling:
        if args.quick:
            rows_N = [(50, 500), (50, 5000), (50, 20000)]
            rows_P = [(10, 5000), (100, 5000)]
        else:
            rows_N = [(100, 500), (100, 1000), (100, 2000), (100, 5000), (100, 10000),
                      (100, 20000)]
            rows_P = [(10, 5000), (50, 5000), (200, 5000)]
        scaling_rows(rows_N + rows_P, 50, 200, args.seed, args.oracle_T)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
            scaling_rows(rows_N + rows_P, 50, 200, args.seed, args.oracle_T, device="cuda",
                         label=" on " + torch.cuda.get_device_name())
        else:
            print("\n(no CUDA device: GPU rows skipped)")

    print(f"\nmain row: memgeo {t_mem:.3f} s, oracle {t_orc:.2f} s, peak extra RSS "
          f"{mem.rss_mb:.0f} MB, largest per-T F difference {dmax:.1e}")
    print(f"ratio, per-T solving only (cvxopt per T / memgeo batched): {ts_orc / ts_mem:.1f}x")
    print(f"ratio (oracle / memgeo, full analysis): {t_orc / t_mem:.1f}x")


if __name__ == "__main__":
    main()
