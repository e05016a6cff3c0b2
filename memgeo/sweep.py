"""Width sweeps for double descent: one ordinary run per width (reused if present, resumed if cut off).

Per width: final train error against the training labels (noisy labels included), test error,
and the geometry of the last layers at the end of training for every manifold type. The
interpolation threshold is the smallest width whose final train error is at most
`INTERPOLATION_TOL` (`config.Thresholds.interpolation_tol`); whether the sweep shows a double
descent is decided over training seeds by `memgeo.claims` on the paired statistics of `peak_stats`.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd

from .config import ProbeConfig, RunConfig, SweepConfig, Thresholds
from .claims import interval
from .heldout import full_test_accuracy, full_test_cache
from .runs import Run

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
    """One row per width: parameters, final train error (vs training labels), final test error on
    the whole test split (`memgeo.heldout`; the curves' subset error beside it), best test."""
    rows = []
    for run in runs:
        meta = run.meta
        f = meta["eps_effective"]
        m = run.metrics
        last = m.iloc[-1]
        train_acc = (1 - f) * last["acc_unpermuted"] + f * last["acc_permuted_train"]
        from .models import build_model
        n_params = sum(p.numel() for p in build_model(run.config, run.num_classes).parameters())
        end = int(last["epoch"])
        test_acc = float(full_test_accuracy(run, [end]).iloc[0])
        full = full_test_cache(run).read("table").set_index("epoch")     # n_test beside the accuracy
        rows.append({"width": run.config.width, "seed": run.config.seed, "parameters": n_params,
                     "train_error": 1 - train_acc, "test_error": 1 - test_acc,
                     "test_error_curve": 1 - last["acc_test"], "best_test_error": 1 - m["acc_test"].max(),
                     "memorized": last["acc_permuted_train"], "epochs": end,
                     "n_test": int(full.loc[end, "n_test"]), "eps_effective": f, "run": run.path.name})
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


# ---------------------------------------------------------------------------------------------
# Over training seeds: every width trained once per seed; seeds pair the comparisons

def width_summary(long: pd.DataFrame, tol: float = INTERPOLATION_TOL) -> pd.DataFrame:
    """One row per width: seeds, mean train and test error with the 95 % interval of the test
    error over seeds, and whether the mean train error is within `tol` (fits the noisy set)."""
    rows = []
    for w, d in long.groupby("width"):
        iv = interval(d["test_error"])
        rows.append({"width": int(w), "seeds": iv["n"], "parameters": int(d["parameters"].iloc[0]),
                     "train_error": float(d["train_error"].mean()), "test_error": iv["mean"],
                     "test_lo": iv["lo"], "test_hi": iv["hi"], "fits": bool(d["train_error"].mean() <= tol)})
    return pd.DataFrame(rows)


def paired(long: pd.DataFrame, a: int, b: int, column: str = "test_error") -> pd.Series:
    """Per seed: `column` at width a minus at width b (seeds present at both)."""
    t = long.pivot_table(index="seed", columns="width", values=column)
    return (t[a] - t[b]).dropna()


def neighbour_differences(long: pd.DataFrame) -> pd.DataFrame:
    """Paired comparison of neighbouring widths: test error of the wider minus the narrower, per
    seed, as a mean with its 95 % interval (an interval above 0: the wider model is worse)."""
    widths = sorted(long["width"].unique())
    rows = []
    for a, b in zip(widths[:-1], widths[1:]):
        iv = interval(paired(long, b, a))
        rows.append({"narrower": int(a), "wider": int(b), "seeds": iv["n"], "difference": iv["mean"],
                     "lo": iv["lo"], "hi": iv["hi"],
                     "reading": ("wider worse" if iv["lo"] > 0 else "wider better" if iv["hi"] < 0
                                 else "no difference beyond the seeds' spread")})
    return pd.DataFrame(rows)


def threshold_over_seeds(long: pd.DataFrame, tol: float = INTERPOLATION_TOL):
    """The interpolation threshold: the smallest width whose train error, averaged over seeds, is
    at most `tol` (None if none). Chosen from training error only, never from test error."""
    return interpolation_threshold(width_summary(long, tol), tol)


def peak_stats(long: pd.DataFrame, threshold) -> pd.DataFrame:
    """Per seed, the two paired statistics claim 4 is decided on: test error at the interpolation
    threshold minus the widest model's (`dd_peak_minus_widest`), and minus that of the narrower
    width with the lowest mean test error (`dd_peak_minus_narrower`); nan when undefined (no
    threshold, or it is the narrowest width)."""
    seeds = sorted(long["seed"].unique())
    nan = float("nan")
    out = pd.DataFrame({"seed": seeds, "dd_peak_minus_widest": nan, "dd_peak_minus_narrower": nan,
                        "dd_threshold": nan if threshold is None else float(threshold)})
    if threshold is None:
        return out
    widths = sorted(long["width"].unique())
    widest = widths[-1]
    if threshold != widest:
        out["dd_peak_minus_widest"] = paired(long, threshold, widest).reindex(seeds).to_numpy()
    narrower = [w for w in widths if w < threshold]
    if narrower:
        means = long[long["width"].isin(narrower)].groupby("width")["test_error"].mean()
        best = int(means.idxmin())
        out["dd_peak_minus_narrower"] = paired(long, threshold, best).reindex(seeds).to_numpy()
        out["dd_best_narrower"] = best
    return out
