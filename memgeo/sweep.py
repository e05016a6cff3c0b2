"""Width sweeps for double descent: one ordinary run per width (reused if present, resumed if cut off).

Per width: final train error against the training labels (noisy labels included), test error,
and the geometry of the last layers at the end of training for every manifold type. The
interpolation threshold is the smallest width whose final train error is at most
`INTERPOLATION_TOL` (`config.Thresholds.interpolation_tol`); whether the sweep shows a double
descent is decided by `verdicts.double_descent_verdict`.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd

from .config import ProbeConfig, RunConfig, SweepConfig, Thresholds
from .runs import Run
from .verdicts import double_descent_verdict  # noqa: F401  (the rule lives in memgeo.verdicts)

INTERPOLATION_TOL = Thresholds().interpolation_tol   # train error (vs training labels) that counts as fitting
PEAK_SIGMAS = Thresholds().peak_sigmas   # a peak must exceed this many standard errors of a test-error difference


def width_configs(sweep: SweepConfig) -> list[RunConfig]:
    """The run config of every width in the sweep, in order."""
    return [replace(sweep.run, width=w) for w in sweep.widths]


def train_sweep(sweep: SweepConfig, runs_dir=None, progress: bool = True, executor: str = "local",
                max_parallel: int | None = None) -> list[Run]:
    """Train (or reuse, or resume) every width, through the engine (`memgeo.engine.run_all`).

    Each width is its own run folder, so an interrupted sweep continues where it stopped and
    finished widths are never retrained; on a CPU the widths train in parallel one-thread
    processes, on GPUs one per device.
    """
    from .engine import run_all
    return run_all(width_configs(sweep), executor=executor, max_parallel=max_parallel,
                   runs_dir=runs_dir, progress=progress)


def sweep_table(runs: list[Run]) -> pd.DataFrame:
    """One row per width: parameters, final train error (vs training labels), test error, best test."""
    rows = []
    for run in runs:
        meta = run.meta
        f = meta["eps_effective"]
        m = run.metrics
        last = m.iloc[-1]
        train_acc = (1 - f) * last["acc_unpermuted"] + f * last["acc_permuted_train"]
        from .models import build_model
        n_params = sum(p.numel() for p in build_model(run.config, run.num_classes).parameters())
        rows.append({"width": run.config.width, "parameters": n_params, "train_error": 1 - train_acc,
                     "test_error": 1 - last["acc_test"], "best_test_error": 1 - m["acc_test"].max(),
                     "memorized": last["acc_permuted_train"], "epochs": int(last["epoch"]),
                     "n_test": meta["n_test"], "run": run.path.name})
    return pd.DataFrame(rows).sort_values("width").reset_index(drop=True)


def interpolation_threshold(table: pd.DataFrame, tol: float = INTERPOLATION_TOL):
    """Smallest width whose final train error is <= tol (None if no width interpolates)."""
    fit = table[table["train_error"] <= tol]
    return int(fit["width"].min()) if len(fit) else None


def peak_report(table: pd.DataFrame, threshold, sigmas: float = PEAK_SIGMAS) -> dict:
    """Is there a test-error peak? Its height above the best smaller width and above the widest
    model, its position relative to the interpolation threshold, and the noise it must exceed
    (`min_height`: `sigmas` standard errors of the difference of two test errors)."""
    t = table.sort_values("width").reset_index(drop=True)
    i = int(t["test_error"].idxmax())
    # a peak must be interior: some narrower model is better and the widest is better
    interior = 0 < i < len(t) - 1
    before = float(t["test_error"].iloc[:i].min()) if i > 0 else float("nan")
    out = {"peak_width": int(t["width"].iloc[i]), "peak_test_error": float(t["test_error"].iloc[i]),
           "above_smaller": float(t["test_error"].iloc[i] - before) if i > 0 else float("nan"),
           "above_widest": float(t["test_error"].iloc[i] - t["test_error"].iloc[-1]),
           "threshold": threshold, "interior": interior}
    # a local peak anywhere after the smallest width (the global max is usually the narrowest model)
    te = t["test_error"].to_numpy()
    local = [j for j in range(1, len(te) - 1) if te[j] > te[j - 1] and te[j] >= te[j + 1]]
    out["local_peaks"] = [int(t["width"].iloc[j]) for j in local]
    # Standard error of the difference of two test errors near the peak (independent models,
    # same test set: an upper bound), used to tell a peak from noise.
    p = float(t["test_error"].iloc[i])
    n_test = int(t["n_test"].iloc[0]) if "n_test" in t else 10_000
    out["noise"] = float(np.sqrt(2 * p * (1 - p) / n_test))
    out["min_height"] = sigmas * out["noise"]
    if local:
        j = max(local, key=lambda k: te[k] - min(te[:k]))
        out["local_peak_width"] = int(t["width"].iloc[j])
        out["local_peak_height"] = float(te[j] - te[:j].min())
        out["local_peak_above_widest"] = float(te[j] - te[-1])
    else:
        out["local_peak_width"] = None
        out["local_peak_height"] = 0.0
        out["local_peak_above_widest"] = 0.0
    return out


def sweep_geometry(runs: list[Run], probe: ProbeConfig, layers_from_end: int = 2, progress: bool = True) -> pd.DataFrame:
    """Geometry of the last `layers_from_end` layers at the final epoch of every width, per type."""
    from .probe import geometry_over_epochs
    frames = []
    for run in runs:
        model_layers = run.meta["layers"]
        last = run.checkpoint_epochs[-1]
        s, _ = geometry_over_epochs(run, probe, epochs=[last], layers=model_layers[-layers_from_end:],
                                    progress=False)
        s = s.assign(width=run.config.width, position=s["layer"].map(
            {l: f"last{'' if k == 0 else f'-{k}'}" for k, l in enumerate(reversed(model_layers))}))
        frames.append(s)
    return pd.concat(frames, ignore_index=True)
