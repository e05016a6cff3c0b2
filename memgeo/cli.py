"""Command line: `python -m memgeo train|book ...` over the same functions the notebooks call."""
from __future__ import annotations

import argparse
import json
import os
import sys

from .config import ConfigError, configure, parse_set


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
    p_book = sub.add_parser("book", help="build the whole book with a preset (trains what is missing)")
    _common(p_book)
    p_book.add_argument("--keep-going", action="store_true", help="do not stop at the first notebook error")
    args = parser.parse_args(argv)
    try:
        overrides = parse_set(args.overrides)
        cfg = configure(args.preset, overrides)
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
        print(f"epoch {int(m.epoch)}: test {m.acc_test:.3f}, permuted fitted to training labels "
              f"{m.acc_permuted_train:.3f}, early stop at epoch {run.early_stop_epoch}")
        print(run.path)
        return 0
    from .book import build_book
    return build_book(args.preset, overrides, keep_going=args.keep_going)
