"""Command line: `python -m memgeo train|book ...` over the same functions the notebooks call."""
from __future__ import annotations

import argparse
import json
import os
import sys

from .config import ConfigError, configure, parse_set
from .engine import EXECUTORS, grid, parse_grid


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="cpu", help="smoke | cpu (default) | paper")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set eps=0.3 --set probe.M=20 (repeatable)")
    p.add_argument("--runs-dir", default=None, help="folder of run folders (default: runs/ in the repo)")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m memgeo", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_train = sub.add_parser("train", help="train (or reuse/resume) the preset's run; prints its folder last")
    _common(p_train)
    p_train.add_argument("--quiet", action="store_true", help="no progress bar")
    p_sweep = sub.add_parser("sweep", help="train a grid of runs (reused/resumed/trained); prints a table of their folders")
    _common(p_sweep)
    p_sweep.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...",
                         help="an axis of the grid over run fields, e.g. --grid seed=0,1,2 --grid eps=0.2,0.6")
    p_sweep.add_argument("--base", choices=["run", "sweep"], default="run",
                         help="vary the preset's main run (default) or its width sweep's run")
    p_sweep.add_argument("--executor", default="local", choices=list(EXECUTORS),
                         help="local (a process pool here, default), slurm (submitit job array), "
                              "submitit-local / submitit-debug (the slurm path on this machine)")
    p_sweep.add_argument("--max-parallel", type=int, default=None, metavar="N",
                         help="at most N runs at once (local workers or the array's parallelism)")
    p_sweep.add_argument("--slurm-partition", default=None)
    p_sweep.add_argument("--slurm-time", type=int, default=240, metavar="MIN", help="time limit per job; "
                         "a job that hits it is requeued and resumes (default 240)")
    p_sweep.add_argument("--slurm-gpus", type=int, default=1, metavar="N", help="GPUs per job (default 1)")
    p_sweep.add_argument("--slurm-cpus", type=int, default=8, metavar="N", help="CPUs per job (default 8)")
    p_sweep.add_argument("--slurm-mem-gb", type=int, default=None, metavar="GB")
    p_sweep.add_argument("--quiet", action="store_true", help="no progress bar")
    p_book = sub.add_parser("book", help="build the whole book with a preset (trains what is missing)")
    _common(p_book)
    p_book.add_argument("--keep-going", action="store_true", help="do not stop at the first notebook error")
    args = parser.parse_args(argv)
    try:
        overrides = parse_set(args.overrides)
        cfg = configure(args.preset, overrides)
        configs = None
        if args.command == "sweep":
            base = cfg.run if args.base == "run" else cfg.sweep.run
            axes = parse_grid(args.grid)
            configs = grid(base, axes)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.runs_dir:
        os.environ["MEMGEO_RUNS_DIR"] = os.path.abspath(args.runs_dir)
    if args.command == "train":
        from .data import DataError
        from .runs import CheckpointError, RunFolderError
        from .train import train
        try:
            run = train(cfg.run, progress=not args.quiet)
        except (ConfigError, DataError, CheckpointError, RunFolderError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        m = run.metrics.iloc[-1]
        print(f"{'trained ' + str(run.trained_now) + ' epoch(s)' if run.trained_now else 'reused the finished run'}; "
              f"epoch {int(m.epoch)}: test {m.acc_test:.3f}, permuted fitted to training labels "
              f"{m.acc_permuted_train:.3f}, early stop at epoch {run.early_stop_epoch}")
        print(run.path)
        return 0
    if args.command == "sweep":
        return _sweep(args, configs, axes)
    from .book import build_book
    return build_book(args.preset, overrides, keep_going=args.keep_going)


def _sweep(args, configs, axes) -> int:
    """Run a grid through the engine and print one line per run: axes, status, result, folder."""
    import pandas as pd

    from .data import DataError
    from .engine import EngineError, SlurmOptions, run_all
    from .train import CheckpointError
    slurm = SlurmOptions(partition=args.slurm_partition, time_min=args.slurm_time, gpus_per_task=args.slurm_gpus,
                         cpus_per_task=args.slurm_cpus, mem_gb=args.slurm_mem_gb)
    try:
        results = run_all(configs, executor=args.executor, max_parallel=args.max_parallel,
                          progress=not args.quiet, slurm=slurm, details=True)
    except (ConfigError, DataError, CheckpointError, EngineError, RuntimeError, ImportError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    rows = []
    for r in results:
        last = r.run.metrics.iloc[-1]
        rows.append({**{k: getattr(r.config, k) for k in axes}, "run": r.run.path.name, "status": r.status,
                     "epochs": int(last["epoch"]), "test_acc": round(float(last["acc_test"]), 4),
                     "memorized": round(float(last["acc_permuted_train"]), 4), "folder": str(r.run.path)})
    print(pd.DataFrame(rows).to_string(index=False))
    return 0
