"""The double-descent section's report: the width sweep's errors over training seeds, the
interpolation threshold, the paired comparisons of neighbouring widths, claim 4's statistics, and
the geometry of the last layers against width (for the page's own seed)."""
from __future__ import annotations

from dataclasses import replace

import pandas as pd

from ..book import describe
from ..claims import BY_KEY, part_table
from ..config import Preset
from ..sweep import (neighbour_differences, peak_stats, sweep_geometry, sweep_table, threshold_over_seeds,
                     train_sweep, width_summary)
from . import Report


def double_descent_report(p: Preset, progress: bool = True) -> Report:
    """Train (or reuse) one run per width and training seed, measure the final train error and the
    test error on the whole test split, and decide claim 4 on the paired statistics over seeds.

    `tables`: long (one row per width and seed), widths (per width: mean and 95 % interval),
    neighbours (paired differences of neighbouring widths), seed_stats (claim 4's statistics per
    seed), parts (the claim's parts with intervals and verdicts), table (the page's own seed),
    geometry (its last layers against width), threshold."""
    sw, th = p.sweep, p.thresholds
    own = None
    frames = []
    for q in p.replicas():
        runs = train_sweep(q.sweep, progress=progress)
        frames.append(sweep_table(runs))
        if q.sweep.run.seed == sw.run.seed:
            own = runs
    if own is None:     # the page's own seed is not among the replicated ones
        own = train_sweep(sw, progress=progress)
    long = pd.concat(frames, ignore_index=True)
    widths = width_summary(long, th.interpolation_tol)
    neighbours = neighbour_differences(long)
    threshold = threshold_over_seeds(long, th.interpolation_tol)
    seed_stats = peak_stats(long, threshold)
    parts = part_table(seed_stats, th, [BY_KEY["double_descent"]])
    verdict = parts["verdict"].iloc[0]

    r = sw.run
    g = {"dd_source": describe(p, run=r, widths=sw.widths), "dd_eps": r.eps,
         "dd_eps_effective": float(long["eps_effective"].mean()), "dd_epochs": r.epochs,
         "dd_n_widths": len(sw.widths), "dd_seeds": ", ".join(map(str, p.seeds)), "dd_n_seeds": len(p.seeds),
         "dd_opt": f"{r.optimizer} (lr {r.lr}, {r.schedule} schedule, batch {r.batch_size})",
         "dd_tol": th.interpolation_tol, "dd_n_test": int(long["n_test"].iloc[0]),
         "dd_threshold": "none of the widths" if threshold is None else f"width {threshold}",
         "dd_verdict": verdict}
    for part in parts.itertuples():
        g[f"{part.statistic}_mean"], g[f"{part.statistic}_lo"], g[f"{part.statistic}_hi"] = part.mean, part.lo, part.hi
    worse = neighbours[neighbours["lo"] > 0]
    g["dd_rises"] = (", ".join(f"{a} to {b}" for a, b in zip(worse["narrower"], worse["wider"]))
                     or "none: no wider model is worse than its narrower neighbour beyond the seeds' spread")
    g["dd_widest_train_error"] = float(widths["train_error"].iloc[-1])
    g["dd_narrow_train_error"] = float(widths["train_error"].iloc[0])
    if "dd_best_narrower" in seed_stats:
        g["dd_best_narrower"] = f"width {int(seed_stats['dd_best_narrower'].iloc[0])}"
    else:
        g["dd_best_narrower"] = "no narrower width"

    table = sweep_table(own)
    geo = sweep_geometry(own, replace(p.probe, M=sw.analysis_M), progress=progress)
    last = geo[geo["position"] == "last"].pivot_table(index="width", columns="type", values="capacity")
    gap = last["permuted"] / last["restored"]
    g["dd_gap_narrow"] = float(gap.iloc[0])
    g["dd_gap_wide"] = float(gap.iloc[-1])
    g["dd_gap_threshold_text"] = (f"{gap.loc[threshold]:.2f} at the interpolation threshold" if threshold in gap.index
                                  else "(no width reaches the interpolation threshold)")
    jump = gap.diff().abs()
    g["dd_gap_jump_width"] = int(jump.idxmax()) if jump.notna().any() else -1

    where = "none" if threshold is None else f"width {threshold}"
    measured = f"interpolation threshold (mean train error <= {th.interpolation_tol}): {where}"
    tables = {"long": long, "widths": widths, "neighbours": neighbours, "seed_stats": seed_stats, "parts": parts,
              "table": table, "geometry": geo, "threshold": threshold}
    return Report(g, tables, {"double_descent": (measured, verdict)})
