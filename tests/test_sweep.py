import numpy as np
import pandas as pd
import pytest

from memgeo.config import ProbeConfig, RunConfig, SweepConfig
from memgeo.geometry import analyze
from memgeo.probe import Probe, sample_manifolds
from memgeo.sweep import interpolation_threshold, peak_report, sweep_geometry, sweep_table, train_sweep, width_configs
from memgeo.train import run_path, train


def sweep_cfg(**kw):
    run = RunConfig(unverified_local_copy=True, train_per_class=20, test_per_class=10, eps=0.4, width=1,
                    epochs=3, batch_size=32, optimizer="adam", lr=3e-3, checkpoints="log")
    return SweepConfig(widths=(1, 2, 4), run=run, **kw)


def test_sweep_resumes_without_retraining_finished_widths(cifar_root, tmp_path, monkeypatch):
    monkeypatch.setenv("MEMGEO_DATA_ROOT", str(cifar_root))
    sw = sweep_cfg()
    cfgs = width_configs(sw)
    assert [c.width for c in cfgs] == [1, 2, 4]
    # An interrupted sweep: width 1 finished, width 2 cut off after one epoch, width 4 not started.
    train(cfgs[0], runs_dir=tmp_path, progress=False)
    train(cfgs[1], runs_dir=tmp_path, progress=False, stop_after=1)
    done_mtime = (run_path(cfgs[0], tmp_path) / "last.pt").stat().st_mtime_ns
    part_rows = len(pd.read_csv(run_path(cfgs[1], tmp_path) / "metrics.csv"))
    assert part_rows == 2
    runs = train_sweep(sw, runs_dir=tmp_path, progress=False)
    assert [r.done for r in runs] == [True, True, True]
    assert (run_path(cfgs[0], tmp_path) / "last.pt").stat().st_mtime_ns == done_mtime
    # The resumed width equals an uninterrupted one.
    fresh = train(cfgs[1], runs_dir=tmp_path / "fresh", progress=False)
    pd.testing.assert_frame_equal(runs[1].metrics.drop(columns="seconds"), fresh.metrics.drop(columns="seconds"))

    table = sweep_table(runs)
    assert table["width"].tolist() == [1, 2, 4]
    assert table["parameters"].is_monotonic_increasing
    assert table[["train_error", "test_error"]].stack().between(0, 1).all()
    probe = ProbeConfig(P=3, M=2, n_t=20, proj_dim=100)
    geo = sweep_geometry(runs, probe, progress=False)
    assert set(geo["position"]) == {"last", "last-1"} and set(geo["width"]) == {1, 2, 4}
    assert len(geo) == 3 * 2 * 4 and np.isfinite(geo["capacity"]).all()
    # Each width's rows are the geometry of its final model's last two layers: logits ("last") and
    # conv4 ("last-1"), equal to analyze() on the same features.
    for run in runs:
        g = geo[geo["width"] == run.config.width]
        assert dict(zip(g["layer"], g["position"])) == {"logits": "last", "conv4": "last-1"}
        assert (g["epoch"] == run.config.epochs).all()
        data = run.load_data()
        mset = sample_manifolds(data, probe.P, probe.M, run.config.seed)
        feats = Probe(probe.proj_dim, run.config.seed).features(run.load_model(run.config.epochs), data, mset,
                                                                "permuted", "conv4")
        res = analyze(feats, kappa=probe.kappa, n_t=probe.n_t, seed=run.config.seed, n_searches=probe.center_searches)
        row = g[(g["layer"] == "conv4") & (g["type"] == "permuted")].iloc[0]
        assert (row["capacity"], row["radius"], row["dimension"]) == (res.capacity, res.radius, res.dimension)


def test_threshold_and_peak_report():
    t = pd.DataFrame({"width": [1, 2, 4, 8, 16], "train_error": [0.5, 0.2, 0.005, 0.0, 0.0],
                      "test_error": [0.7, 0.6, 0.66, 0.58, 0.55]})
    assert interpolation_threshold(t) == 4
    rep = peak_report(t, 4)
    assert rep["local_peak_width"] == 4
    assert rep["local_peak_height"] == pytest.approx(0.06)
    assert rep["local_peak_above_widest"] == pytest.approx(0.11)
    assert rep["noise"] == pytest.approx(np.sqrt(2 * 0.7 * 0.3 / 10_000)) and rep["min_height"] == 2 * rep["noise"]
    assert peak_report(t, 4, sigmas=3.0)["min_height"] == pytest.approx(3 * rep["noise"])
    mono = t.assign(test_error=[0.7, 0.6, 0.55, 0.5, 0.45])
    assert peak_report(mono, 4)["local_peak_width"] is None
    assert interpolation_threshold(t.assign(train_error=0.3)) is None


def _long(errors: dict, train=None):
    """A sweep over seeds: errors[width] = test errors of seeds 0, 1, 2."""
    rows = []
    for w, errs in errors.items():
        for s, e in enumerate(errs):
            rows.append({"width": w, "seed": s, "parameters": 100 * w, "test_error": e,
                         "train_error": (train or {}).get(w, 0.0)})
    return pd.DataFrame(rows)


def test_width_summary_interval_and_fit():
    from memgeo.sweep import width_summary
    t = width_summary(_long({1: [0.5, 0.6, 0.7], 2: [0.4, 0.4, 0.4]}, train={1: 0.2, 2: 0.0}))
    assert t["test_error"].tolist() == pytest.approx([0.6, 0.4])
    # sd 0.1, t(0.975, 2) = 4.3027: half-width 0.2484
    assert t["test_lo"].iloc[0] == pytest.approx(0.6 - 0.24841, abs=1e-4)
    assert t["fits"].tolist() == [False, True] and t["seeds"].tolist() == [3, 3]


def test_neighbour_differences_are_paired_by_seed():
    from memgeo.sweep import neighbour_differences
    # seeds differ a lot between each other, but width 4 is worse than width 2 by exactly 0.05 in every seed
    long = _long({2: [0.3, 0.5, 0.7], 4: [0.35, 0.55, 0.75], 8: [0.3, 0.5, 0.7]})
    d = neighbour_differences(long)
    assert d[["narrower", "wider"]].values.tolist() == [[2, 4], [4, 8]]
    assert d["difference"].tolist() == pytest.approx([0.05, -0.05])
    assert d["lo"].iloc[0] == pytest.approx(0.05) and d["reading"].tolist() == ["wider worse", "wider better"]


def test_peak_stats_at_the_threshold_chosen_from_train_error():
    from memgeo.sweep import peak_stats, threshold_over_seeds
    long = _long({1: [0.6, 0.62, 0.61], 2: [0.55, 0.56, 0.54], 4: [0.65, 0.66, 0.64], 8: [0.5, 0.52, 0.51]},
                 train={1: 0.3, 2: 0.1, 4: 0.0, 8: 0.0})
    thr = threshold_over_seeds(long, tol=0.01)
    assert thr == 4
    s = peak_stats(long, thr)
    assert s["dd_peak_minus_widest"].tolist() == pytest.approx([0.15, 0.14, 0.13])
    assert s["dd_peak_minus_narrower"].tolist() == pytest.approx([0.10, 0.10, 0.10])   # best narrower: width 2
    assert (s["dd_best_narrower"] == 2).all()
    none = peak_stats(long, None)
    assert none["dd_peak_minus_widest"].isna().all() and none["dd_peak_minus_narrower"].isna().all()
    narrowest = peak_stats(long, 1)
    assert narrowest["dd_peak_minus_narrower"].isna().all() and narrowest["dd_peak_minus_widest"].notna().all()
