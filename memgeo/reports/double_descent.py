"""The double-descent section's report: the width sweep's errors, the interpolation threshold,
whether test error peaks (claim 4), and the geometry of the last layers against width."""
from __future__ import annotations

from dataclasses import replace

from ..book import describe
from ..config import Preset
from ..sweep import interpolation_threshold, peak_report, sweep_geometry, sweep_table, train_sweep
from ..verdicts import NOT, double_descent_verdict
from . import Report


def double_descent_report(p: Preset, progress: bool = True) -> Report:
    """Train (or reuse) one run per width, measure errors and the last layers' geometry (cached),
    and say whether a double descent shows. `tables`: table (one row per width) and geometry."""
    sw, th = p.sweep, p.thresholds
    runs = train_sweep(sw, progress=progress)
    table = sweep_table(runs)
    threshold = interpolation_threshold(table, th.interpolation_tol)
    r = sw.run
    g = {"dd_source": describe(p, run=r, widths=sw.widths), "dd_eps": r.eps, "dd_epochs": r.epochs,
         "dd_n_widths": len(sw.widths), "dd_opt": f"{r.optimizer} (lr {r.lr}, {r.schedule} schedule, batch {r.batch_size})",
         "dd_tol": th.interpolation_tol,
         "dd_threshold": "none of the widths" if threshold is None else f"width {threshold}"}
    rep = peak_report(table, threshold, th.peak_sigmas)
    for k, v in rep.items():
        if k != "threshold":
            g[f"dd_{k}"] = v if v is not None else "none"
    verdict = double_descent_verdict(rep, threshold, th)
    g.update(dd_verdict=verdict, dd_sigmas=th.peak_sigmas)
    if verdict != NOT:
        g["dd_peak_text"] = (f"a local test-error peak at width {rep['local_peak_width']}, {rep['local_peak_height']:.3f} "
                             f"above the best narrower model and {rep['local_peak_above_widest']:.3f} above the widest one")
    elif rep["local_peak_width"] is not None:
        g["dd_peak_text"] = (f"only a local bump at width {rep['local_peak_width']}, {rep['local_peak_height']:.3f} "
                             f"above the best narrower model: within the noise of the test set ({rep['min_height']:.3f})")
    else:
        g["dd_peak_text"] = "no local test-error peak: test error never rises with width"

    geo = sweep_geometry(runs, replace(p.probe, M=sw.analysis_M), progress=progress)
    last = geo[geo["position"] == "last"].pivot_table(index="width", columns="type", values="capacity")
    gap = last["permuted"] / last["restored"]
    g["dd_gap_narrow"] = float(gap.iloc[0])
    g["dd_gap_wide"] = float(gap.iloc[-1])
    g["dd_gap_threshold_text"] = (f"{gap.loc[threshold]:.2f} at the interpolation threshold" if threshold in gap.index
                                  else "(no width reaches the interpolation threshold)")
    jump = gap.diff().abs()
    g["dd_gap_jump_width"] = int(jump.idxmax()) if jump.notna().any() else -1

    where = "none" if threshold is None else f"width {threshold}"
    if rep["local_peak_width"]:
        measured = (f"interpolation threshold: {where}; largest local test-error peak "
                    f"{rep['local_peak_height']:.3f} above narrower models (at width {rep['local_peak_width']})")
    else:
        measured = f"interpolation threshold: {where}; no test-error peak"
    tables = {"table": table, "geometry": geo, "threshold": threshold}
    return Report(g, tables, {"double_descent": (measured, verdict)})
