import math

import numpy as np
import pytest
import torch

from memgeo.config import ConfigError, ProbeConfig, RunConfig
from memgeo.data import load_data
from memgeo.geometry import analyze
from memgeo.geometry.centers import CENTER_SEARCHES
from memgeo.models import build_model
from memgeo.probe import Probe, geometry_cache, geometry_over_epochs, sample_manifolds, select_epochs
from memgeo.train import train


@pytest.fixture(scope="module")
def data(cifar_root):
    return load_data(RunConfig(unverified_local_copy=True, train_per_class=40, test_per_class=20, eps=0.5), cifar_root)


def test_manifold_types_counts_and_labels(data):
    ms = sample_manifolds(data, P=5, M=6, seed=0)
    assert len(ms.classes) == 5 and set(ms.index) == {"unpermuted", "permuted", "restored", "test"}
    perm = data.permuted.numpy()
    for p, c in enumerate(ms.classes):
        u, pe, r, t = (ms.index[k][p] for k in ("unpermuted", "permuted", "restored", "test"))
        assert all(len(i) == 6 and len(set(i)) == 6 for i in (u, pe, r, t))
        assert not perm[u].any() and (data.true_label.numpy()[u] == c).all()
        assert perm[pe].all() and (data.train_label.numpy()[pe] == c).all()     # by training label
        assert perm[r].all() and (data.true_label.numpy()[r] == c).all()        # by true label
        assert (data.y_test.numpy()[t] == c).all()
    again = sample_manifolds(data, P=5, M=6, seed=0)
    assert all(np.array_equal(a, b) for k in ms.index for a, b in zip(ms.index[k], again.index[k]))
    other = sample_manifolds(data, P=5, M=6, seed=1)
    assert not all(np.array_equal(a, b) for a, b in zip(ms.index["test"], other.index["test"]))


def test_too_few_examples_says_how_many(data):
    perm_counts = np.bincount(data.train_label.numpy()[data.permuted.numpy()], minlength=10)
    with pytest.raises(ConfigError, match=r"manifold type 'permuted': class \d+ has only \d+ examples"):
        sample_manifolds(data, P=10, M=int(perm_counts.min()) + 1, seed=0)
    with pytest.raises(ConfigError, match="P=11 manifolds but the dataset has 10 classes"):
        sample_manifolds(data, P=11, M=2, seed=0)


def test_probe_layers_projection_and_eval_mode(data):
    model = build_model(RunConfig(width=8)).train()
    ms = sample_manifolds(data, P=3, M=4, seed=0)
    pr = Probe(proj_dim=300, seed=0)
    feats = {l: pr.features(model, data, ms, "test", l) for l in model.layer_names}
    assert model.training                                    # mode restored after probing
    # Widths in layer order: input 3072, conv1 2048, conv2 1024, conv3 512 are projected to 300;
    # conv4 (64 x 2 x 2 = 256) and the logits keep their own.
    assert [f[0].shape[1] for f in feats.values()] == [300, 300, 300, 300, 256, 10]
    assert all(len(f) == 3 and f[0].shape[0] == 4 for f in feats.values())
    # Features are taken in eval mode: equal to a direct eval forward pass.
    x = ms.images(data, "test")
    with torch.no_grad():
        direct = model.eval()(data.normalise(x)).numpy()
    model.train()
    np.testing.assert_allclose(np.concatenate(feats["logits"]), direct, rtol=1e-5, atol=1e-5)
    # One projection per layer, reused: the same matrix object and identical outputs next time.
    proj = pr.projection("conv1", 2048)
    again = pr.features(model, data, ms, "test", "conv1")
    assert pr.projection("conv1", 2048) is proj
    np.testing.assert_array_equal(np.concatenate(again), np.concatenate(feats["conv1"]))


def test_geometry_table_is_cached_and_tidy(cifar_root, tmp_path, monkeypatch):
    cfg = RunConfig(unverified_local_copy=True, train_per_class=40, test_per_class=20, eps=0.5, width=4,
                    epochs=2, batch_size=32)
    run = train(cfg, runs_dir=tmp_path, data_root=cifar_root, progress=False)
    monkeypatch.setenv("MEMGEO_DATA_ROOT", str(cifar_root))
    probe = ProbeConfig(P=3, M=5, n_t=20, proj_dim=200, epochs="0,2")
    assert select_epochs(run, probe) == [0, 2]
    s, pm = geometry_over_epochs(run, probe, layers=["conv2", "logits"], progress=False)
    assert len(s) == 2 * 2 * 4 and len(pm) == len(s) * 3
    assert set(s.columns) >= {"epoch", "layer", "type", "capacity", "radius", "dimension",
                              "center_correlation", "K"}
    assert np.isfinite(s[["capacity", "radius", "dimension"]].to_numpy()).all()
    file = next((run.path / "geometry").glob("*/summary.csv"))
    assert file.parent.name == geometry_cache(run, probe).key
    mtime = file.stat().st_mtime
    s2, _ = geometry_over_epochs(run, probe, layers=["conv2", "logits"], progress=False)
    assert file.stat().st_mtime == mtime                  # nothing recomputed
    assert s2.equals(s)
    with pytest.raises(ConfigError, match="no checkpoint"):
        select_epochs(run, ProbeConfig(P=3, M=5, epochs="0,7"))


def test_geometry_table_rows_equal_a_direct_analysis(cifar_root, tmp_path, monkeypatch):
    """A row of the cached table is analyze() on the same features: the manifolds drawn with the
    run's seed, the layer's fixed projection, the probe's n_t, kappa and center searches (the
    best of them is never more correlated than the single search that analyze() runs alone)."""
    cfg = RunConfig(unverified_local_copy=True, train_per_class=40, test_per_class=20, eps=0.5, width=4,
                    epochs=2, batch_size=32, seed=3)
    run = train(cfg, runs_dir=tmp_path, data_root=cifar_root, progress=False)
    monkeypatch.setenv("MEMGEO_DATA_ROOT", str(cifar_root))
    probe = ProbeConfig(P=3, M=5, n_t=30, kappa=0.1, proj_dim=200, epochs="2")
    s, pm = geometry_over_epochs(run, probe, layers=["conv1", "conv4"], progress=False)
    data = run.load_data()
    mset = sample_manifolds(data, probe.P, probe.M, seed=3)
    model = run.load_model(2)
    for layer, kind in (("conv1", "permuted"), ("conv4", "test")):
        feats = Probe(probe.proj_dim, seed=3).features(model, data, mset, kind, layer)
        res = analyze(feats, kappa=probe.kappa, n_t=probe.n_t, seed=3, n_searches=probe.center_searches)
        single = analyze(feats, kappa=probe.kappa, n_t=probe.n_t, seed=3)
        assert probe.center_searches == CENTER_SEARCHES == 5      # the config's default is the geometry's
        assert res.residual_correlation <= single.residual_correlation + 1e-12
        row = s[(s["layer"] == layer) & (s["type"] == kind)].iloc[0]
        assert row["features"] == feats[0].shape[1] == (200 if layer == "conv1" else 32 * 2 * 2)
        for q in ("capacity", "radius", "dimension", "center_correlation", "K"):
            assert row[q] == getattr(res, q), q
        per = pm[(pm["layer"] == layer) & (pm["type"] == kind)]
        assert per["manifold"].tolist() == list(mset.classes)
        np.testing.assert_array_equal(per["capacity"].to_numpy(), res.per_manifold.capacity)
        np.testing.assert_array_equal(per["radius"].to_numpy(), res.per_manifold.radius)


def test_cached_geometry_is_keyed_by_settings_seed_and_engine_version(tmp_path):
    # results of an engine that gives other numbers must not be reused
    from types import SimpleNamespace
    from memgeo.geometry import ENGINE_VERSION
    run = SimpleNamespace(path=tmp_path, config=RunConfig())
    p = ProbeConfig()
    a = geometry_cache(run, p)
    assert a.key == geometry_cache(run, p).key and a.version == ENGINE_VERSION
    assert a.key != geometry_cache(SimpleNamespace(path=tmp_path, config=RunConfig(seed=1)), p).key
    assert a.key != geometry_cache(run, ProbeConfig(M=49)).key
    assert a.key != geometry_cache(run, ProbeConfig(center_searches=1)).key
    assert a.key == geometry_cache(run, ProbeConfig(max_epochs=3, sim_dichotomies=7)).key   # not in the numbers
    assert a.folder == tmp_path / "geometry" / a.key


def test_sim_rows_drop_logits_and_repeated_input_and_give_the_statistics():
    import pandas as pd

    from memgeo.probe import sim_rows, sim_statistics
    sim = pd.DataFrame({
        "epoch": [0, 0, 0, 5, 5, 5, 9, 9, 9], "layer": ["input", "conv1", "logits"] * 3,
        "depth": [0, 1, 2] * 3, "type": ["test"] * 9,
        "capacity_meanfield": [0.05, 0.06, 0.5, 0.05, 0.08, 1.0, 0.05, 0.10, 1.5],
        "capacity_simulated": [0.045, 0.051, 0.0, 0.045, 0.072, 0.0, 0.045, 0.095, 0.0],
        "features": [3072, 2048, 10] * 3})
    rows = sim_rows(sim, P=10)
    # logits: 10 features < 2 x 10 / alpha for every alpha < 2; input: only at epoch 0
    assert rows["retained"].tolist() == [True, True, False, False, True, False, False, True, False]
    assert rows.loc[3, "excluded"] == "repeat of an unchanged layer"
    assert rows.loc[2, "excluded"].startswith("features <")
    # a layer with too few features for its capacity: N = 300 < 2 x 10 / 0.05 = 400
    assert not sim_rows(sim.assign(features=300), P=10)["retained"].iloc[0]
    control = pd.DataFrame({"P": [10, 10, 10, 50, 100], "deviation": [-0.2, -0.1, -0.15, 0.01, -0.04]})
    st = sim_statistics(rows, control)
    # retained deviations: -0.1, -0.15, -0.1, -0.05
    assert st["sim_n_rows"] == 4
    assert st["sim_median_abs_dev"] == pytest.approx(0.1)
    assert st["sim_signed_median_dev"] == pytest.approx(-0.1)
    assert (st["sim_control_p10"], st["sim_control_p50"], st["sim_control_p100"]) == pytest.approx((0.15, 0.01, 0.04))
    assert {"sim_median_abs_dev", "sim_signed_median_dev", "sim_n_rows", "sim_control_p10", "sim_control_p50",
            "sim_control_p100"} <= set(st)
    assert math.isnan(st["sim_unseparable"]) and math.isnan(st["sim_control_sep_p10"])   # not in these tables
    # the test of unseparable dichotomies: their share and the deviation of the separable ones
    sim2 = sim.assign(unseparable=[0.2, 0.4, 1.0] * 3,
                      capacity_simulated_separable=sim["capacity_meanfield"] * np.tile([1.0, 0.98, np.nan], 3))
    control2 = control.assign(unseparable=[0.1, 0.3, 0.2, 0.0, 0.0],
                              capacity_meanfield=[0.2] * 5, capacity_simulated_separable=[0.19, 0.21, 0.2, 0.2, 0.2])
    st2 = sim_statistics(sim_rows(sim2, P=10), control2)
    assert st2["sim_median_abs_dev"] == st["sim_median_abs_dev"]
    assert st2["sim_unseparable"] == pytest.approx((0.2 + 0.4 + 0.4 + 0.4) / 4)        # the retained rows
    assert st2["sim_median_abs_dev_separable"] == pytest.approx(0.02)                 # 0, 0.02, 0.02, 0.02
    assert st2["sim_control_unseparable_p10"] == pytest.approx(0.2)
    assert st2["sim_control_sep_p10"] == pytest.approx(0.05) and st2["sim_control_sep_p100"] == 0.0
