"""SLURM through submitit (the optional extra `pip install memgeo[cluster]`): one job array per grid.

Each job trains one run. When SLURM signals a time limit or a preemption, submitit calls the job's
`checkpoint`, which resubmits the same call; the new job finds the run folder and resumes from its
last finished epoch (nothing else needs saving: `last.pt` is written after every epoch).
"""
from __future__ import annotations

import time
from pathlib import Path

try:
    import submitit
except ImportError as err:   # an optional extra: say how to get it
    raise ImportError("the slurm executor needs submitit: pip install 'memgeo[cluster]' "
                      "(or pip install submitit)") from err

from .config import RunConfig
from .paths import runs_dir as default_runs_dir
from .engine import usable_cpus
from .train import train


class TrainJob(submitit.helpers.Checkpointable):
    """A picklable job: train (or resume) one run; requeued as is on timeout or preemption."""

    def __init__(self, runs_dir: str):
        self.runs_dir = runs_dir

    def __call__(self, cfg: RunConfig) -> str:
        import torch
        print(f"[memgeo] job {submitit.JobEnvironment().job_id}: run {cfg.resolved().hash()}", flush=True)
        torch.set_num_threads(usable_cpus())
        run = train(cfg, runs_dir=self.runs_dir, progress=False)
        print(f"[memgeo] run {run.path.name}: {run.trained_now} epoch(s) trained in this job", flush=True)
        return str(run.path)


def make_executor(kind: str, folder: Path, max_parallel: int | None, opts):
    """A submitit executor: "slurm" (needs sbatch), "submitit-local" (processes here, with the
    same timeout/requeue machinery), "submitit-debug" (in this process, no requeue)."""
    if kind == "submitit-debug":
        return submitit.DebugExecutor(folder=folder)
    if kind == "submitit-local":
        ex = submitit.LocalExecutor(folder=folder, max_num_timeout=opts.max_requeues)
        ex.update_parameters(timeout_min=opts.time_min, gpus_per_node=0)
        return ex
    import shutil
    if shutil.which("sbatch") is None:
        raise RuntimeError("executor 'slurm' needs SLURM's sbatch on PATH (run from a login node); "
                           "use executor 'local' on a single machine")
    ex = submitit.AutoExecutor(folder=folder, cluster="slurm", slurm_max_num_timeout=opts.max_requeues)
    params = dict(timeout_min=opts.time_min, gpus_per_node=opts.gpus_per_task, tasks_per_node=1,
                  cpus_per_task=opts.cpus_per_task, name="memgeo")
    if opts.partition:
        params["slurm_partition"] = opts.partition
    if opts.mem_gb:
        params["mem_gb"] = opts.mem_gb
    if max_parallel:
        params["slurm_array_parallelism"] = max_parallel
    if opts.additional:
        params["slurm_additional_parameters"] = dict(opts.additional)
    ex.update_parameters(**params)
    return ex


def submit(cfgs: list[RunConfig], runs_dir, kind: str, max_parallel: int | None, opts) -> list:
    """Submit one job per config (one array); returns submitit jobs in the same order."""
    rd = Path(runs_dir or default_runs_dir()).resolve()
    folder = Path(opts.folder) if opts.folder else rd / "slurm" / "%j"
    ex = make_executor(kind, folder, max_parallel, opts)
    job = TrainJob(str(rd))
    if kind == "submitit-debug":
        return [ex.submit(job, cfg) for cfg in cfgs]
    return ex.map_array(job, cfgs)


def run_submitit(cfgs: list[RunConfig], runs_dir, kind: str, max_parallel: int | None, opts, report) -> None:
    """Submit `cfgs` and wait, calling report(k, path, error) as each job ends."""
    jobs = submit(cfgs, runs_dir, kind, max_parallel, opts)
    if kind == "submitit-debug":   # DebugExecutor runs a job when its result is asked for
        for k, job in enumerate(jobs):
            _collect(job, k, report)
        return
    print(f"[memgeo] submitted {len(jobs)} job(s): {jobs[0].job_id.split('_')[0] if jobs else ''}; "
          f"logs in {jobs[0].paths.folder if jobs else ''}", flush=True)
    left = dict(enumerate(jobs))
    while left:
        for k in [k for k, job in left.items() if job.done()]:
            _collect(left.pop(k), k, report)
        if left:
            time.sleep(5 if kind == "slurm" else 0.5)


def _collect(job, k: int, report) -> None:
    try:
        path = job.result()
    except Exception as err:   # submitit's message ends with the job's own error line
        last = (str(err).strip().splitlines() or [""])[-1]
        report(k, None, f"job {job.job_id} failed: {type(err).__name__}: {last}")
    else:
        report(k, path, None)
