"""Width sweeps for double descent: one ordinary run per width (reused if present, resumed if cut off)."""
from __future__ import annotations

from dataclasses import replace

from .config import RunConfig, SweepConfig
from .train import Run, train


def width_configs(sweep: SweepConfig) -> list[RunConfig]:
    """The run config of every width in the sweep, in order."""
    return [replace(sweep.run, width=w) for w in sweep.widths]


def train_sweep(sweep: SweepConfig, runs_dir=None, progress: bool = True) -> list[Run]:
    """Train (or reuse, or resume) every width. Independent processes may share the work: each
    width is its own run folder, so running this twice in parallel only repeats unfinished widths."""
    return [train(cfg, runs_dir=runs_dir, progress=progress) for cfg in width_configs(sweep)]
