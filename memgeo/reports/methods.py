"""The methods page's report: memgeo's capacity against exact results, and simulated against
mean-field capacity (`memgeo.checks`; synthetic data only)."""
from __future__ import annotations

import math
import time

from ..checks import exact_checks, exact_curves, polygon_numbers, simulated_checks
from ..config import Preset
from . import Report


def methods_report(p: Preset) -> Report:
    """The checks at the preset's sizes (`p.checks`). `tables`: checks (with the relative error),
    curves (the figure's, at a quarter of the t-vectors) and simulated (clouds, with the relative
    difference; the random points' row is glued)."""
    n_t, n_dich = p.checks.n_t, p.checks.n_dichotomies
    g = {"n_t_check": n_t}
    t0 = time.time()
    checks = exact_checks(n_t)
    checks["rel. error"] = (checks["memgeo"] - checks["exact"]).abs() / checks["exact"]
    g["max_rel_error"] = float(checks["rel. error"].max())
    # Relative standard error of 1/mean(F) for points: std(F)/mean(F) = sqrt(5) for F = [t0]_-^2.
    g["mc_error"] = math.sqrt(5 / n_t)
    g["checks_seconds"] = time.time() - t0

    curves = exact_curves(n_t // 4)
    g.update(polygon_numbers(curves))
    g["n_t_fig"] = n_t // 4

    t0 = time.time()
    simtab = simulated_checks(n_dich)
    g["sim_points"] = float(simtab["simulated"].iloc[0])
    g["sim_points_err"] = float(simtab["sim. error"].iloc[0])
    simtab = simtab.iloc[1:].reset_index(drop=True)
    simtab["rel. difference"] = (simtab["simulated"] - simtab["mean-field"]).abs() / simtab["mean-field"]
    g["sim_max_dev"] = float(simtab["rel. difference"].max())
    g["sim_seconds"] = time.time() - t0
    return Report(g, {"checks": checks, "curves": curves, "simulated": simtab})
