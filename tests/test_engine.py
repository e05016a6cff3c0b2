"""The engine: grids, the local pool (reuse, resume, dedup, failures), the submitit path with a
requeue, and two real processes asking for the same run."""
import os
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch

from memgeo import engine
from memgeo.config import ConfigError, RunConfig
from memgeo.engine import EngineError, grid, parse_grid, pool_plan, run_all
from memgeo.train import open_run, run_path, train


def small(**kw):
    base = dict(unverified_local_copy=True, train_per_class=20, test_per_class=10, eps=0.5, width=4,
                epochs=3, batch_size=32, lr=0.05, precision="fp32")
    base.update(kw)
    return RunConfig(**base)


def states_equal(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture
def data_env(cifar_root, monkeypatch):
    # Worker processes (spawned pool, submitit jobs) find the data through the environment.
    monkeypatch.setenv("MEMGEO_DATA_ROOT", str(cifar_root))
    return cifar_root


def test_grid_is_the_product_with_coerced_values():
    cfgs = grid(small(), {"width": [2, "4"], "eps": [1, 0.25], "seed": [0]})
    assert [(c.width, c.eps, c.seed) for c in cfgs] == [(2, 1.0, 0), (2, 0.25, 0), (4, 1.0, 0), (4, 0.25, 0)]
    assert isinstance(cfgs[0].eps, float) and cfgs[0].hash() == small(width=2, eps=1.0).hash()
    assert grid(small()) == [small()]
    with pytest.raises(ConfigError, match="unknown config key"):
        grid(small(), {"seeds": [1]})
    with pytest.raises(ConfigError, match="grid axis 'seed' has no values"):
        grid(small(), {"seed": []})


def test_parse_grid_messages():
    assert parse_grid(["seed=0,1,2", "eps = 0.2, 0.6"]) == {"seed": ["0", "1", "2"], "eps": ["0.2", "0.6"]}
    for bad in (["seed"], ["seed="], ["=1"]):
        with pytest.raises(ConfigError, match="write key=v1,v2"):
            parse_grid(bad)
    with pytest.raises(ConfigError, match="given twice"):
        parse_grid(["seed=0", "seed=1"])


def test_pool_plan_sizes_to_the_machine(monkeypatch):
    monkeypatch.setattr(engine, "usable_cpus", lambda: 8)
    monkeypatch.setattr(engine, "_gpu_ids", lambda: [])
    assert pool_plan(20, None, False) == (8, 1, [])       # one single-thread worker per core
    assert pool_plan(3, None, False) == (3, 2, [])        # fewer runs: the cores are shared out
    assert pool_plan(20, 2, False) == (2, 4, [])
    assert pool_plan(1, None, False) == (1, 8, [])
    monkeypatch.setattr(engine, "_gpu_ids", lambda: ["0", "3"])
    assert pool_plan(5, None, True) == (2, 4, ["0", "3"])  # one worker per visible GPU
    assert pool_plan(1, None, True) == (1, 8, ["0"])


def test_run_all_reuses_resumes_trains_and_dedups(data_env, tmp_path):
    cfgs = grid(small(), {"seed": [0, 1, 2]})
    finished = train(cfgs[0], runs_dir=tmp_path, progress=False)
    mtime = (finished.path / "last.pt").stat().st_mtime_ns
    threads = torch.get_num_threads()
    torch.set_num_threads(1)         # as the pool's workers train (results depend on it in the last bits)
    try:
        train(cfgs[1], runs_dir=tmp_path, progress=False, stop_after=1)  # cut off after epoch 1
    finally:
        torch.set_num_threads(threads)
    results = run_all(cfgs + [cfgs[2]], runs_dir=tmp_path, progress=False, details=True)
    assert [r.status for r in results] == ["reused", "trained", "trained", "trained"]
    assert [r.run.path for r in results] == [run_path(c, tmp_path) for c in cfgs + [cfgs[2]]]
    assert all(r.run.done for r in results)
    assert (finished.path / "last.pt").stat().st_mtime_ns == mtime                # not retrained
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == sorted(c.hash() for c in cfgs)
    # The resumed run (trained in a one-thread worker) equals one trained straight through with
    # the same thread count: resuming is exact.
    ref_dir = tmp_path / "ref"
    torch.set_num_threads(1)
    try:
        ref = train(cfgs[1], runs_dir=ref_dir, progress=False)
    finally:
        torch.set_num_threads(threads)
    pd.testing.assert_frame_equal(ref.metrics.drop(columns="seconds"), results[1].run.metrics.drop(columns="seconds"))
    assert states_equal(ref.load_state(3), results[1].run.load_state(3))
    # Asking again: everything is reused, nothing starts.
    again = run_all(cfgs, runs_dir=tmp_path, progress=False, details=True)
    assert [r.status for r in again] == ["reused"] * 3


def test_failed_runs_are_listed_and_the_others_finish(data_env, tmp_path):
    good, bad = small(seed=0), small(seed=1, model="resnet18", width=1, dataset="cifar100",
                                     unverified_local_copy=False)
    with pytest.raises(EngineError, match=r"(?s)1 of 2 runs failed.*resnet18 width 1.*CIFAR-100") as err:
        run_all([good, bad], runs_dir=tmp_path, progress=False)
    assert "DataError" in str(err.value)
    assert open_run(run_path(good, tmp_path)).done


def test_run_all_rejects_bad_executor_and_parallelism(tmp_path):
    with pytest.raises(ConfigError, match="executor='pbs'"):
        run_all([small()], executor="pbs", runs_dir=tmp_path)
    with pytest.raises(ConfigError, match="max_parallel=0"):
        run_all([small()], max_parallel=0, runs_dir=tmp_path)


def test_submitit_debug_executor_trains_through_the_cluster_path(data_env, tmp_path):
    cfgs = grid(small(), {"seed": [0, 1]})
    results = run_all(cfgs, executor="submitit-debug", runs_dir=tmp_path, progress=False, details=True)
    assert [r.status for r in results] == ["trained", "trained"]
    assert all(r.run.done for r in results)
    assert (tmp_path / "slurm").is_dir()     # submitit's logs live beside the runs


def test_submitit_job_requeued_on_timeout_resumes_its_run(data_env, tmp_path):
    """A job that gets SLURM's time-limit signal is requeued; the new attempt resumes the run from
    its last epoch, and the result equals an uninterrupted run."""
    from memgeo import cluster
    from memgeo.engine import SlurmOptions
    cfg = small(epochs=40, train_per_class=40)
    jobs = cluster.submit([cfg], tmp_path, "submitit-local", None, SlurmOptions(time_min=30, max_requeues=3))
    metrics = run_path(cfg, tmp_path) / "metrics.csv"
    deadline = time.time() + 240
    while time.time() < deadline:
        if metrics.exists() and len(pd.read_csv(metrics)) >= 4 and not jobs[0].done():
            break
        time.sleep(0.2)
    else:
        pytest.fail(f"the job did not start training in time:\n{jobs[0].stdout()}\n{jobs[0].stderr()}")
    rows_at_signal = len(pd.read_csv(metrics))
    # What SLURM sends before a time limit or on preemption (submitit's USR2), to the job's task.
    import signal

    import psutil
    tasks = psutil.Process(jobs[0]._process.pid).children(recursive=True)
    assert len(tasks) == 1
    tasks[0].send_signal(signal.SIGUSR2)
    path = jobs[0].result()
    out = jobs[0].stdout() or ""
    assert out.count("[memgeo] job ") == 2, out      # two attempts of the same job
    trained_after = [int(l.split(": ")[1].split()[0]) for l in out.splitlines() if "epoch(s) trained in this job" in l]
    assert len(trained_after) == 1 and 0 < trained_after[0] <= 40 - (rows_at_signal - 1)
    run = open_run(path)
    assert run.done and run.metrics["epoch"].tolist() == list(range(41))
    ref = train(cfg, runs_dir=tmp_path / "ref", progress=False)   # same thread count as the job
    pd.testing.assert_frame_equal(ref.metrics.drop(columns="seconds"), run.metrics.drop(columns="seconds"))
    assert states_equal(ref.load_state(40), run.load_state(40))


LOCK_SCRIPT = """
import sys, torch
from memgeo.config import RunConfig
from memgeo.train import train
torch.set_num_threads(1)
cfg = RunConfig(unverified_local_copy=True, train_per_class=20, test_per_class=10, width=4, epochs=8,
                batch_size=32, lr=0.05, precision="fp32")
run = train(cfg, runs_dir=sys.argv[1], progress=True)
print("TRAINED", run.trained_now, run.path)
"""


def test_two_processes_asking_for_the_same_run_train_it_once(data_env, tmp_path):
    procs = [subprocess.Popen([sys.executable, "-c", LOCK_SCRIPT, str(tmp_path)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    trained = sorted(int(o[0].split("TRAINED ")[1].split()[0]) for o in outs)
    assert trained == [0, 8], outs        # one trained all 8 epochs, the other reused the result
    paths = {o[0].split("TRAINED ")[1].split()[1] for o in outs}
    assert len(paths) == 1
    run = open_run(paths.pop())
    assert run.done and run.metrics["epoch"].tolist() == list(range(9)) and run.checkpoint_epochs == list(run.config.checkpoint_epochs())
    assert [p.name for p in tmp_path.iterdir() if ".creating-" in p.name or ".tmp-" in p.name] == []


def test_sweep_command_runs_a_seed_grid(data_env, tmp_path):
    r = subprocess.run([sys.executable, "-m", "memgeo", "sweep", "--preset", "smoke", "--quiet", "--runs-dir",
                        str(tmp_path), "--set", "unverified_local_copy=1", "--set", "train_per_class=10",
                        "--set", "test_per_class=5", "--set", "epochs=1", "--grid", "seed=0,1,2"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert lines[0].split()[:3] == ["seed", "run", "status"]
    rows = [l.split() for l in lines[1:]]
    assert [row[0] for row in rows] == ["0", "1", "2"] and {row[2] for row in rows} == {"trained"}
    assert all(open_run(row[-1]).done for row in rows)
    r2 = subprocess.run([sys.executable, "-m", "memgeo", "sweep", "--preset", "smoke", "--quiet", "--runs-dir",
                         str(tmp_path), "--set", "unverified_local_copy=1", "--set", "train_per_class=10",
                         "--set", "test_per_class=5", "--set", "epochs=1", "--grid", "seed=0,1,2"],
                        capture_output=True, text=True, timeout=300)
    assert [l.split()[2] for l in r2.stdout.strip().splitlines()[1:]] == ["reused"] * 3
    bad = subprocess.run([sys.executable, "-m", "memgeo", "sweep", "--preset", "smoke", "--grid", "seed"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--grid 'seed': write key=v1,v2" in bad.stderr
