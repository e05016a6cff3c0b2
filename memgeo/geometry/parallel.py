"""Thread plumbing of the CPU work: how many threads, contiguous groups of manifolds of equal
cost, a pool whose threads each use one BLAS and one torch thread, a shared task queue, and
temporary torch/BLAS thread limits.

Numpy's BLAS calls and large ufuncs release the GIL, and so does the compiled center search:
threads, not processes, so the manifolds are never copied.
"""
from __future__ import annotations

import os
import threading

import numpy as np
import torch


def cpu_workers(num_workers) -> int:
    """Threads for the per-manifold work: ``num_workers`` if given, else the CPUs this process
    may use."""
    if num_workers is None:
        try:
            num_workers = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            num_workers = os.cpu_count() or 1
    n = int(num_workers)
    if n < 1:
        raise ValueError(f"num_workers must be >= 1, got {num_workers}")
    return n


def split_by_cost(costs, n: int) -> list:
    """Contiguous index groups of roughly equal total cost (at most n, none empty)."""
    costs = np.asarray(costs, dtype=np.float64)
    n = max(1, min(int(n), costs.size))
    # boundary k where the running cost is nearest to k/n of the total
    cum = np.concatenate([[0.0], np.cumsum(costs)])
    targets = cum[-1] * np.arange(1, n) / n
    i = np.searchsorted(cum, targets)                 # cum[i-1] < target <= cum[i]
    edges = np.where(cum[i] - targets <= targets - cum[i - 1], i, i - 1)
    bounds = [0, *sorted(set(int(e) for e in edges if 0 < e < costs.size)), costs.size]
    return [np.arange(a, b) for a, b in zip(bounds[:-1], bounds[1:])]


class thread_limits:
    """Temporarily limit torch and BLAS (via threadpoolctl when installed) CPU threads."""

    def __init__(self, n: int):
        self.n = int(n)
        if self.n < 1:
            raise ValueError("num_threads must be >= 1")

    def __enter__(self):
        # Load scipy's BLAS (the compiled kernels call it) before limiting, so it is limited too.
        # BLAS/OpenMP limits are taken before torch's, and restored before torch's: torch's
        # thread count is OpenMP's, and a limit recorded after torch.set_num_threads would
        # restore the lowered value.
        import scipy.linalg  # noqa: F401
        self.old = torch.get_num_threads()
        try:
            from threadpoolctl import threadpool_limits
            self.tp = threadpool_limits(self.n)
        except ImportError:
            self.tp = None
        torch.set_num_threads(self.n)
        return self

    def __exit__(self, *exc):
        if self.tp is not None:
            self.tp.restore_original_limits()
        torch.set_num_threads(self.old)
        return False


class WorkerPool:
    """``n - 1`` worker threads plus the calling thread, each limited to one BLAS and one torch
    thread while it lasts (numpy's BLAS calls and large ufuncs release the GIL, and the
    compiled center search does too). n = 1: everything runs in the calling thread with the
    threads configured outside."""

    def __init__(self, n: int):
        self.n = int(n)

    def __enter__(self):
        if self.n > 1:
            from concurrent.futures import ThreadPoolExecutor
            self._limits = thread_limits(1).__enter__()
            self._ex = ThreadPoolExecutor(max_workers=self.n - 1)
        return self

    def __exit__(self, *exc):
        if self.n > 1:
            self._ex.shutdown(wait=True)
            self._limits.__exit__(*exc)
        return False

    def submit(self, fn, *args):
        """Run fn(*args) in a worker (in the caller when n = 1); returns a result getter."""
        if self.n == 1:
            out = fn(*args)
            return lambda: out
        return self._ex.submit(fn, *args).result

    def map(self, fn, items) -> list:
        """[fn(x) for x in items], the last item in the calling thread; errors re-raised in
        item order."""
        items = list(items)
        if self.n == 1 or len(items) == 1:
            return [fn(x) for x in items]
        futs = [self._ex.submit(fn, x) for x in items[:-1]]
        last = None
        try:
            last = fn(items[-1])
        finally:
            outs = [f.result() for f in futs]      # waits for all; raises the first error
        return outs + [last]


class TaskQueue:
    """Per-manifold tasks taken in order by whichever thread is free (a shared counter)."""

    def __init__(self, fn, n_tasks: int):
        self.fn, self.n = fn, int(n_tasks)
        self.next = 0
        self.lock = threading.Lock()
        self.errors = {}

    def __call__(self):
        """Take and run tasks until none is left (errors are kept per task)."""
        while True:
            with self.lock:
                i = self.next
                self.next += 1
            if i >= self.n:
                return
            try:
                self.fn(i)
            except Exception as e:                     # noqa: BLE001 - re-raised by raise_first
                self.errors[i] = e

    def raise_first(self):
        """Re-raise the error of the lowest-numbered task that failed, if any."""
        if self.errors:
            raise self.errors[min(self.errors)]
