"""Every training seed's report of one section, and their tables side by side: the pages' figures
over seeds (mean with its 95 % interval as a band or error bar, every seed drawn faintly) and the
claims' intervals (`memgeo.reports.intro`) are made from the same reports."""
from __future__ import annotations

from typing import Callable

import pandas as pd

from ..config import Preset
from ..gradients import ratios
from ..probe import EPOCH_ROLES
from . import Report
from .gradients import gradients_report
from .layers import layers_report
from .rewind import rewind_report

PER_SEED: dict[str, Callable[..., Report]] = {"layers": layers_report, "rewind": rewind_report,
                                              "gradients": gradients_report}


def seed_reports(p: Preset, section: str, progress: bool = False) -> dict[int, Report]:
    """Training seed -> that seed's report of `section` (one of PER_SEED; every report is cached,
    so this reads what the build computed)."""
    if section not in PER_SEED:
        raise ValueError(f"section {section!r} has no per-seed report; choose one of {sorted(PER_SEED)}")
    return {q.run.seed: PER_SEED[section](q, progress=progress) for q in p.replicas()}


def stacked(frames: dict[int, pd.DataFrame]) -> pd.DataFrame:
    """One table from every seed's table of the same shape, with a `seed` column first."""
    return pd.concat([f.assign(seed=s) for s, f in frames.items()], ignore_index=True).pipe(
        lambda d: d[["seed"] + [c for c in d.columns if c != "seed"]])


# --- each section's table over seeds -------------------------------------------------------------

def geometry_over_seeds(reports: dict[int, Report]) -> pd.DataFrame:
    """The layers' geometry of every seed at the three epochs every seed has in common by role
    (initialisation, its own early-stopping epoch, the end): seed, role, epoch, layer, depth,
    type, capacity, radius, dimension, center_correlation."""
    frames = {}
    for seed, r in reports.items():
        s = r.tables["summary"]
        epochs = dict(zip(EPOCH_ROLES, (int(s["epoch"].min()), int(r["early_stop"]), int(s["epoch"].max()))))
        parts = [s[s["epoch"] == e].assign(role=role) for role, e in epochs.items()]
        frames[seed] = pd.concat(parts, ignore_index=True)[
            ["role", "epoch", "layer", "depth", "type", "capacity", "radius", "dimension", "center_correlation"]]
    return stacked(frames)


def gradient_ratio_over_seeds(reports: dict[int, Report], part: str = "dependent") -> pd.DataFrame:
    """The whole network's ratio permuted / unpermuted of the mean gradients (`part`) against epoch,
    for every seed: seed, epoch, ratio, early_stop (that seed's)."""
    frames = {}
    for seed, r in reports.items():
        rat = ratios(r.tables["table"], part)
        frames[seed] = pd.DataFrame({"epoch": rat.index.astype(int), "ratio": rat.to_numpy(float),
                                     "early_stop": int(r.run.early_stop_epoch)})
    return stacked(frames)


def rewind_over_seeds(reports: dict[int, Report]) -> pd.DataFrame:
    """Every seed's rewinds to its early-stopping epoch and their parameter-matched controls:
    seed, mode, layer, layer_index, param_share, gap_recovered, gap_recovered_matched,
    memorization_removed, memorization_removed_matched."""
    cols = ["mode", "layer", "layer_index", "param_share", "gap_recovered", "gap_recovered_matched",
            "memorization_removed", "memorization_removed_matched"]
    return stacked({seed: r.tables["control"][cols] for seed, r in reports.items()})
