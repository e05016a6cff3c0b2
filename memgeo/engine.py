"""Many runs through one engine: a grid of configurations, and one function that gets their runs.

    configs = grid(base, {"width": [4, 8], "seed": [0, 1, 2]})      # 6 RunConfigs
    runs = run_all(configs)                                          # list of Runs, same order

`run_all` reuses finished runs without starting anything, resumes cut-off ones and trains missing
ones, on an executor:
  - "local" (default, nothing to install): a pool of processes sized to the machine. On a CPU,
    as many single-thread workers as there are usable cores (small models train faster as
    parallel one-thread processes than one after another on all cores); with CUDA GPUs visible,
    one worker per GPU, each pinned to its device. A single pending run trains in this process.
  - "slurm": one SLURM job array per grid through submitit (the optional extra
    `memgeo[cluster]`); a job that hits its time limit is requeued and resumes from its last
    epoch (memgeo runs resume). "submitit-local" and "submitit-debug" run the same path on this
    machine (for tests and for trying a grid before a cluster).
Two processes asking for the same run never collide: `train` holds a lock per run folder.
"""
from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, replace
from typing import Any, Iterable, Mapping, Sequence

from .config import ConfigError, RunConfig, apply_overrides
from .train import Run, finished_run, open_run, run_path, train

EXECUTORS = ("local", "slurm", "submitit-local", "submitit-debug")


class EngineError(RuntimeError):
    """Some runs of a grid failed; the message lists each one with its error (the others finished)."""


def grid(base: RunConfig, axes: Mapping[str, Iterable[Any]] | None = None) -> list[RunConfig]:
    """Every combination of the axes' values applied to `base`, the last axis varying fastest.

    Values are coerced like any override (`{"eps": [1, "0.5"]}` gives eps 1.0 and 0.5); an unknown
    field or an empty axis is a ConfigError naming it."""
    axes = {k: list(v) if not isinstance(v, (str, bytes)) else [v] for k, v in (axes or {}).items()}
    for key, values in axes.items():
        if not values:
            raise ConfigError(f"grid axis {key!r} has no values")
    keys = list(axes)
    return [apply_overrides(base, dict(zip(keys, combo))) for combo in itertools.product(*axes.values())]


def parse_grid(items: Sequence[str]) -> dict[str, list[str]]:
    """["seed=0,1,2", "eps=0.2,0.6"] from the command line -> {"seed": ["0","1","2"], ...}."""
    out: dict[str, list[str]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        vals = [v.strip() for v in values.split(",") if v.strip()]
        if not sep or not key.strip() or not vals:
            raise ConfigError(f"--grid {item!r}: write key=v1,v2,..., e.g. --grid seed=0,1,2")
        if key.strip() in out:
            raise ConfigError(f"--grid {key.strip()!r} is given twice: list all its values in one --grid")
        out[key.strip()] = vals
    return out


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask, e.g. a SLURM allocation), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:   # not on Linux
        return max(1, os.cpu_count() or 1)


def estimated_cost(cfg: RunConfig) -> float:
    """A rough relative cost, to start the longest runs first (compute grows ~ width^2)."""
    return cfg.epochs * (cfg.train_per_class or 5000) * float(cfg.width) ** 2


@dataclass(frozen=True)
class SlurmOptions:
    """How the "slurm" executor asks for resources (one job per run, one array per grid)."""

    partition: str | None = None
    time_min: int = 240             # per job; a job that hits it is requeued and resumes
    gpus_per_task: int = 1
    cpus_per_task: int = 8
    mem_gb: int | None = None
    max_requeues: int = 20          # timeouts/preemptions tolerated per job
    folder: str | None = None       # submitit's logs and pickles (default: <runs>/slurm)
    additional: tuple[tuple[str, str], ...] = ()   # extra #SBATCH options, e.g. (("account", "x"),)


@dataclass
class GridResult:
    """What `run_all` did for one config: the run and whether it was reused or trained."""

    config: RunConfig
    run: Run
    status: str        # "reused" (finished before), "trained" (trained or resumed here)


def run_all(configs: Sequence[RunConfig], executor: str = "local", max_parallel: int | None = None,
            runs_dir=None, progress: bool = True, slurm: SlurmOptions | None = None,
            details: bool = False):
    """Get the runs of all `configs` (same order): reuse finished, resume cut-off, train missing.

    `max_parallel` caps the workers (local) or the array's parallelism (slurm). Runs that fail do
    not stop the others; an EngineError lists them at the end. With `details`, returns GridResults.
    """
    if executor not in EXECUTORS:
        raise ConfigError(f"executor={executor!r}: choose one of {', '.join(EXECUTORS)}")
    if max_parallel is not None and max_parallel < 1:
        raise ConfigError(f"max_parallel={max_parallel} must be >= 1")
    configs = list(configs)
    # On this machine "auto" precision resolves as the local workers will; a cluster's compute
    # nodes decide for themselves, so there runs are keyed after they trained.
    if executor == "local":
        configs = [c.resolved() for c in configs]
    results: dict[int, GridResult] = {}
    pending: dict[str, list[int]] = {}
    for i, cfg in enumerate(configs):
        done = finished_run(run_path(cfg, runs_dir), cfg) if cfg.precision != "auto" else None
        if done is not None:
            results[i] = GridResult(cfg, done, "reused")
        else:
            key = repr(cfg) if cfg.precision == "auto" else cfg.hash()
            pending.setdefault(key, []).append(i)   # the same run asked twice trains once
    todo = sorted(pending.values(), key=lambda idx: -estimated_cost(configs[idx[0]]))
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(configs), initial=len(results), desc=f"runs ({executor})", unit="run")

    failures: list[str] = []

    def report(k: int, path: str | None, err: str | None) -> None:
        """Called as each pending run ends (in any order)."""
        idx = todo[k]
        if err is None:
            run = open_run(path)
            for i in idx:
                results[i] = GridResult(configs[i], run, "trained")
        else:
            failures.append(f"  {_describe(configs[idx[0]])}: {err}")
        if bar is not None:
            bar.update(len(idx))

    if todo:
        todo_cfgs = [configs[idx[0]] for idx in todo]
        if executor == "local":
            _run_local(todo_cfgs, runs_dir, max_parallel, progress, report)
        else:
            from .cluster import run_submitit
            run_submitit(todo_cfgs, runs_dir, executor, max_parallel, slurm or SlurmOptions(), report)
    if bar is not None:
        bar.close()
    if failures:
        raise EngineError(f"{len(failures)} of {len(todo)} runs failed (the others are done and kept):\n"
                          + "\n".join(failures))
    ordered = [results[i] for i in range(len(configs))]
    return ordered if details else [r.run for r in ordered]


def _describe(cfg: RunConfig) -> str:
    return f"{cfg.model} width {cfg.width} eps {cfg.eps} seed {cfg.seed}"


# ---------------------------------------------------------------------------------------------
# The local pool

def _gpu_ids() -> list[str]:
    import torch
    if not torch.cuda.is_available():
        return []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible:
        return [v.strip() for v in visible.split(",") if v.strip()][: torch.cuda.device_count()]
    return [str(i) for i in range(torch.cuda.device_count())]


def pool_plan(n_runs: int, max_parallel: int | None, uses_gpu: bool) -> tuple[int, int, list[str]]:
    """(workers, torch threads per worker, GPU ids) for `n_runs` pending runs on this machine."""
    gpus = _gpu_ids() if uses_gpu else []
    cpus = usable_cpus()
    slots = len(gpus) if gpus else cpus
    workers = max(1, min(n_runs, slots, max_parallel or slots))
    threads = max(1, cpus // workers)
    return workers, threads, gpus[:workers]


def _init_worker(gpu_queue, threads: int) -> None:
    if gpu_queue is not None:
        # Before any CUDA call in this fresh process: it then sees exactly one GPU, as cuda:0.
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu_queue.get()
    import torch
    torch.set_num_threads(threads)


def _train_in_worker(cfg: RunConfig, runs_dir) -> str:
    return str(train(cfg, runs_dir=runs_dir, progress=False).path)


def _run_local(cfgs: list[RunConfig], runs_dir, max_parallel, progress: bool, report) -> None:
    from .precision import device_kind
    uses_gpu = any(device_kind(c.device) == "cuda" for c in cfgs)
    workers, threads, gpus = pool_plan(len(cfgs), max_parallel, uses_gpu)
    if workers == 1 and not gpus:
        for k, cfg in enumerate(cfgs):
            try:
                path = str(train(cfg, runs_dir=runs_dir, progress=progress).path)
            except Exception as err:   # reported with the others at the end
                report(k, None, f"{type(err).__name__}: {err}")
            else:
                report(k, path, None)
        return
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed
    ctx = mp.get_context("spawn")   # fresh processes: no inherited threads, CUDA state or locks
    queue = None
    if gpus:
        queue = ctx.Queue()
        for g in gpus:
            queue.put(g)
    if progress:
        where = f"one GPU each ({', '.join(gpus)})" if gpus else f"{threads} thread(s) each"
        print(f"[memgeo] {len(cfgs)} run(s) on {workers} worker process(es), {where}", flush=True)
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker, initargs=(queue, threads)) as pool:
        futures = {pool.submit(_train_in_worker, cfg, runs_dir): k for k, cfg in enumerate(cfgs)}
        for fut in as_completed(futures):
            try:
                path = fut.result()
            except Exception as err:
                report(futures[fut], None, f"{type(err).__name__}: {err}")
            else:
                report(futures[fut], path, None)
