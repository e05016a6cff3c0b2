"""memgeo.checks: the methods page's checks against exact results, cached under <runs>/cache."""
import numpy as np
import pandas as pd

from memgeo import checks


def test_exact_checks_are_close_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("MEMGEO_RUNS_DIR", str(tmp_path))
    t = checks.exact_checks(2000)
    assert len(t) == len(checks.KAPPAS) + len(checks.RADII) + len(checks.SIMPLICES)
    rel = (t["memgeo"] - t["exact"]).abs() / t["exact"]
    assert rel.max() < 0.15                                      # Monte Carlo error ~ sqrt(5 / 2000) = 5 %
    assert t.loc[t["object"] == "simplex, m=10", "exact"].item() == 0.2
    files = list((tmp_path / "cache" / "methods-exact").glob("*/table.csv"))
    assert len(files) == 1
    monkeypatch.setattr(checks.G, "capacity_from_points", lambda *a, **k: 1 / 0)   # a second call reads
    pd.testing.assert_frame_equal(checks.exact_checks(2000), t)


def test_polygons_never_fall_below_the_disk():
    curves = checks.exact_curves(300)
    nums = checks.polygon_numbers(curves)
    assert nums["polygon_never_below"] is True and 0 <= nums["polygon32_gap"] < 0.1
    assert np.allclose(curves["points_exact"][0], 2.0)          # points at kappa = 0: Cover's 2
    assert list(curves["polygons"]) == list(checks.POLYGONS)
