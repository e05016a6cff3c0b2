"""Thread plumbing (memgeo.geometry.parallel)."""
import threading

import numpy as np
import pytest
import torch

from memgeo.geometry.parallel import (TaskQueue, WorkerPool, cpu_workers, split_by_cost,
                                      thread_limits)


def test_split_groups_are_contiguous_and_balanced():
    groups = split_by_cost(np.ones(10), 3)
    assert [x.tolist() for x in groups] == [[0, 1, 2], [3, 4, 5, 6], [7, 8, 9]]
    assert [x.tolist() for x in split_by_cost([1.0, 1.0], 5)] == [[0], [1]]   # never empty
    assert [x.tolist() for x in split_by_cost([100.0, 1, 1, 1, 1], 2)] == [[0], [1, 2, 3, 4]]
    assert [x.tolist() for x in split_by_cost([1.0, 1, 1, 1, 100], 2)] == [[0, 1, 2, 3], [4]]
    assert [x.tolist() for x in split_by_cost([3.0], 4)] == [[0]]


def test_cpu_workers():
    assert cpu_workers(3) == 3
    assert cpu_workers(None) >= 1
    with pytest.raises(ValueError, match="num_workers must be >= 1"):
        cpu_workers(0)


@pytest.mark.parametrize("n", [1, 3])
def test_pool_map_and_task_queue(n):
    seen = []
    with WorkerPool(n) as pool:
        assert pool.map(lambda x: x * x, [1, 2, 3, 4]) == [1, 4, 9, 16]

        def task(i):
            seen.append((i, threading.get_ident()))
            if i in (5, 2):
                raise KeyError(i)

        queue = TaskQueue(task, 8)
        waits = [pool.submit(queue) for _ in range(pool.n - 1)]
        queue()
        for w in waits:
            w()
    assert sorted(i for i, _ in seen) == list(range(8))      # every task once
    with pytest.raises(KeyError, match="2"):                 # the lowest failing index
        queue.raise_first()
    with WorkerPool(n) as pool, pytest.raises(ZeroDivisionError):
        pool.map(lambda x: 1 / x, [1, 0, 2])


def test_thread_limits_restore():
    old = torch.get_num_threads()
    with thread_limits(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == old
    with pytest.raises(ValueError, match=">= 1"):
        thread_limits(0)
