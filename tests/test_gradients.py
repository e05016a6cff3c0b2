from collections import OrderedDict
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from memgeo import gradients as G
from memgeo.cache import ResultCache
from memgeo.config import ConfigError, RunConfig, configure
from memgeo.models import BlockNet
from memgeo.train import train


@pytest.fixture(scope="module")
def tiny_run(cifar_root, tmp_path_factory):
    cfg = RunConfig(unverified_local_copy=True, train_per_class=20, test_per_class=10, eps=0.5, width=4,
                    epochs=3, batch_size=32, lr=0.05)
    run = train(cfg, runs_dir=tmp_path_factory.mktemp("runs"), data_root=cifar_root, progress=False)
    return run, run.load_data(root=cifar_root)


def test_parts_sum_to_the_loss_gradient_and_match_autograd(tiny_run):
    run, data = tiny_run
    model = run.load_model(2).double()
    data = data.to("cpu")
    data.mean, data.std = data.mean.double(), data.std.double()
    idx = G.gradient_sample(data, 36, seed=1)
    perm = data.permuted.numpy()[idx]
    assert 0 < perm.sum() < len(idx)
    fn = G.parts_grad_fn(model, data, batch_size=16)          # 3 chunks, the last one short
    split = G.gradient_split(fn, idx, perm)
    assert set(split.parts) == set(G.PARTS)

    x = data.normalise(data.x_train[idx], dtype=torch.float64)
    y = data.train_label[idx]
    names = [n for n, _ in model.named_parameters()]
    grad = lambda f: dict(zip(names, torch.autograd.grad(f, list(model.parameters()))))   # noqa: E731
    full = grad(F.cross_entropy(model(x), y, reduction="sum"))     # eval mode: running BN statistics
    layers = G.layer_parameters(model)
    nu, npm = int((~perm).sum()), int(perm.sum())
    for layer, params in layers.items():
        want = torch.cat([full[n].reshape(-1) for n in params])
        got = nu * split.mean("unpermuted", layer) + npm * split.mean("permuted", layer)
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)
        parts = sum(nu * split.mean("unpermuted", layer, q) + npm * split.mean("permuted", layer, q)
                    for q in ("dependent", "independent"))
        torch.testing.assert_close(parts, want, rtol=1e-9, atol=1e-12)

    # one example's label-dependent part is the gradient of mean_c z_c - z_y
    g = G.per_example_parts(model, x[:2], y[:2])
    z = model(x[1:2])[0]
    gk = grad(z.mean() - z[y[1]])
    torch.testing.assert_close(g["dependent/logits"][1], torch.cat([gk[n].reshape(-1) for n in layers["logits"]]))

    t = split.table()
    assert len(t) == 3 * (len(layers) + 1) and set(t["part"]) == set(G.PARTS)
    assert (t["n_unpermuted"] + t["n_permuted"] == len(idx)).all()
    np.testing.assert_allclose(t["ratio"], t["mean_permuted"] / t["mean_unpermuted"])
    assert t["cosine"].between(-1, 1).all()
    assert t[["coherence_unpermuted", "coherence_permuted"]].stack().between(0, 1 + 1e-12).all()
    tot = t[t["part"] == "total"].set_index("layer")
    assert tot.loc[G.ALL, "mean_all"] == pytest.approx(np.sqrt((tot["mean_all"].drop(G.ALL) ** 2).sum()))


def linear_softmax(C=10, d=6, seed=0, zero=False):
    torch.manual_seed(seed)
    lin = nn.Linear(d, C).double()
    if zero:
        nn.init.zeros_(lin.weight), nn.init.zeros_(lin.bias)
    return BlockNet(OrderedDict(logits=lin), "linear").eval()


def test_label_dependent_part_of_a_linear_softmax_model_by_hand():
    C, d, n = 4, 3, 8
    model = linear_softmax(C, d)
    h = torch.randn(n, d).double()
    y = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    perm = np.array([False] * 4 + [True] * 4)
    g = G.per_example_parts(model, h, y)
    p = model(h).softmax(1).detach()
    u, e = torch.full((C,), 1 / C).double(), torch.eye(C).double()[y]
    dep = torch.cat([torch.einsum("nc,nd->ncd", u - e, h).reshape(n, -1), u - e], 1)   # (u - e_y) h^T, u - e_y
    ind = torch.cat([torch.einsum("nc,nd->ncd", p - u, h).reshape(n, -1), p - u], 1)   # (p - u) h^T, p - u
    torch.testing.assert_close(g["dependent/logits"], dep)
    torch.testing.assert_close(g["independent/logits"], ind)
    torch.testing.assert_close(g["total/logits"], dep + ind)
    # the group means, their ratio and cosine, by hand
    split = G.gradient_split(lambda i: G.per_example_parts(model, h[i], y[i]), np.arange(n), perm, batch_size=3)
    row = split.table().set_index(["part", "layer"]).loc[("dependent", "logits")]
    mu, mp = dep[:4].mean(0), dep[4:].mean(0)
    assert row["mean_unpermuted"] == pytest.approx(float(mu.norm()))
    assert row["ratio"] == pytest.approx(float(mp.norm() / mu.norm()))
    assert row["cosine"] == pytest.approx(float(mu @ mp / (mu.norm() * mp.norm())))
    assert row["coherence_permuted"] == pytest.approx(float(mp.norm() ** 2 / dep[4:].pow(2).sum(1).mean()))


def test_batchnorm_is_recomputed_at_initialisation_only(tiny_run):
    run, data = tiny_run
    ident = G.model_at(run, 0, data, "saved")
    fresh = G.model_at(run, 0, data, "recompute_init")
    bn_id, bn = (next(m for m in mdl.modules() if isinstance(m, nn.BatchNorm2d)) for mdl in (ident, fresh))
    assert float(bn_id.running_mean.abs().max()) == 0.0 and float(bn_id.running_var.min()) == 1.0   # identity
    seen = []
    hook = bn.register_forward_pre_hook(lambda m, a: seen.append(a[0].detach()))
    with torch.no_grad():
        fresh(data.normalise(data.x_train))
    hook.remove()
    var, mean = torch.var_mean(seen[0].double(), (0, 2, 3))          # the first BatchNorm's input, all images
    torch.testing.assert_close(bn.running_mean.double(), mean, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(bn.running_var.double(), var, rtol=1e-4, atol=1e-6)
    assert float(var.mean()) < 0.5          # far from the placeholder variance 1: the identity shrinks activations
    idx = np.arange(len(data.x_train))
    assert G.output_uniformity(fresh, data, idx)["logit_std"] > 1.5 * G.output_uniformity(ident, data, idx)["logit_std"]
    s = G.GradientSettings(n_examples=60, batch_size=32)
    r = {bn: G.epoch_rows(run, 0, data, s, bn).set_index(["part", "layer"]).loc[("dependent", G.ALL), "ratio"]
         for bn in ("saved", "recompute_init")}
    assert abs(r["saved"] - r["recompute_init"]) > 0.01             # BN recomputation changes the epoch-0 number
    later = [G.epoch_rows(run, 2, data, s, bn)["ratio"] for bn in ("saved", "recompute_init")]
    pd.testing.assert_series_equal(*later)                          # later epochs keep their own statistics
    with pytest.raises(ConfigError, match="bn="):
        G.model_at(run, 0, data, "identity")


def test_sizes_are_multiples_of_the_class_count():
    assert G.class_sizes((8, 16, 32), 10) == (10, 20, 30)
    assert G.class_sizes((16, 32, 64, 128, 256, 512), 10) == (20, 30, 60, 130, 260, 510)
    cpu_like = (20, 40, 80, 160, 320, 640)
    assert G.class_sizes(cpu_like, 10, strict=True) == cpu_like
    with pytest.raises(ConfigError, match="multiples of the class count 10"):
        G.class_sizes((8, 16, 32), 10, strict=True)
    with pytest.raises(ConfigError, match="fewer than two"):
        G.class_sizes((3, 12), 10)


def _const_fn(vectors):
    def fn(idx):
        return {"w": vectors[torch.as_tensor(idx)]}
    return fn


def test_coherence_identical_and_orthogonal():
    n = 12
    same = torch.randn(1, 30).double().repeat(n, 1)
    orth = torch.diag(torch.rand(n).double() + 0.5)           # orthogonal, unequal norms
    assert G.coherence(same) == pytest.approx(1.0)
    assert G.coherence(orth) == pytest.approx(1 / n)
    # the same through the subset machinery and the split table
    vecs = torch.cat([same, torch.cat([orth, torch.zeros(n, 30 - n).double()], 1)])
    split = G.gradient_split(_const_fn(vecs), np.arange(2 * n), np.r_[np.zeros(n), np.ones(n)].astype(bool),
                             batch_size=5)
    row = split.table().set_index("layer").loc["w"]
    assert row["coherence_unpermuted"] == pytest.approx(1.0)
    assert row["coherence_permuted"] == pytest.approx(1 / n)
    assert row["mean_unpermuted"] == pytest.approx(float(same[0].norm()))


def test_balanced_order_and_stratified_sample():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(5), [30, 20, 25, 40, 10])
    order = G.balanced_order(labels, rng)
    assert sorted(order) == list(range(len(labels)))
    for n in (1, 7, 23, 50):                     # every prefix balanced within one while all labels last
        counts = np.bincount(labels[order[:n]], minlength=5)
        assert counts.max() - counts.min() <= 1
    idx = G.stratified_sample(labels, 25, rng)
    assert len(set(idx)) == 25 and list(np.bincount(labels[idx])) == [6, 4, 5, 8, 2]


def test_fixed_sample_has_the_composition_of_the_training_subset(tiny_run):
    _, data = tiny_run
    idx = G.gradient_sample(data, 100, seed=0)
    assert len(set(idx)) == 100 and (G.gradient_sample(data, 100, seed=0) == idx).all()
    perm = data.permuted.numpy()
    assert abs(perm[idx].sum() - perm.mean() * 100) <= 1 + 20 * 0.5   # proportional (largest remainders)
    assert (G.gradient_sample(data, 0) == np.arange(len(perm))).all()


def linear_readout(C=10, d=32, N=4000, seed=0):
    """A zero-initialised linear softmax readout (outputs exactly uniform) on features with a
    common offset (as after a ReLU). The first N/2 examples' features are centred on their label's
    class mean (unpermuted: coherent); the rest are independent of their labels (permuted)."""
    rng = np.random.default_rng(seed)
    y = np.tile(np.arange(C), N // C)
    means = rng.normal(size=(C, d))
    h = rng.normal(size=(N, d)) * 0.5 + 1.0
    h[: N // 2] += means[y[: N // 2]]
    model = linear_softmax(C, d, zero=True)
    H, Y = torch.as_tensor(h), torch.as_tensor(y)
    fn = lambda i: G.per_example_parts(model, H[torch.as_tensor(i)], Y[torch.as_tensor(i)])   # noqa: E731
    pools = {"unpermuted": np.arange(N // 2), "permuted": np.arange(N // 2, N)}
    # E[(u - e_y) h^T] of the unpermuted examples, weights then bias (the bias part is 0)
    mu = (np.full(C, 1.0 / C)[:, None] * (means.mean(0) + 1)[None] - (means + 1) / C)
    return fn, pools, float((mu ** 2).sum()), y


def test_scaling_on_a_linear_readout_with_random_features():
    fn, pools, mu2, y = linear_readout()
    sizes = (20, 40, 80, 160, 320, 640)
    table = G.scaling_table(fn, pools, sizes, repeats=6, seed=0, batch_size=500, labels=y)
    assert set(table["n"]) == set(sizes) and set(table["part"]) == set(G.PARTS)
    assert len(table) == 3 * 2 * 2 * 6 * len(sizes)          # parts x layers (logits, all) x groups x repeats x n
    np.testing.assert_allclose(table["mean"], table["norm"] / table["n"])
    slopes = G.fit_slopes(table).set_index(["part", "layer"]).loc[("dependent", "logits")]
    assert slopes["slope_unpermuted"] == pytest.approx(0.0, abs=0.05)     # coherent: the mean converges
    assert slopes["slope_permuted"] == pytest.approx(-0.5, abs=0.05)      # incoherent: ~ n^(-1/2)
    comp = G.fit_two_components(table).set_index(["part", "layer", "group"])
    assert comp.loc[("dependent", "logits", "unpermuted"), "mu2"] == pytest.approx(mu2, rel=0.1)
    assert abs(comp.loc[("dependent", "logits", "permuted"), "mu2"]) < 0.02 * mu2
    assert comp.loc[("dependent", "logits", "unpermuted"), "coherent_share"] > 0.95
    assert comp.loc[("dependent", "logits", "permuted"), "coherent_share"] < 0.1
    # uniform outputs: no label-independent part; every balanced subset of the label-dependent part
    # sums the mean feature to zero, so the shared offset does not make the permuted group coherent
    assert table[table["part"] == "independent"]["norm"].max() < 1e-9
    fitted = G.model_mean_norm(G.fit_two_components(table), "dependent", "logits", "unpermuted", 640)
    assert float(fitted) == pytest.approx(np.sqrt(mu2), rel=0.1)
    pool, member, keys = G.nested_subsets(pools, sizes, 2, seed=0, labels=y)
    assert (member.sum(1) == [k[2] for k in keys]).all() and ((member[1] >= member[0]) & (member[0] <= 1)).all()
    assert set(np.bincount(y[pool[member[3] > 0]], minlength=10)) == {16}     # n = 160: exactly n / C per label
    with pytest.raises(ConfigError, match="scaling test needs"):
        G.nested_subsets({"a": np.arange(10)}, (4, 16), 1)


def test_epochs_are_cached_and_the_key_names_what_is_computed(tiny_run, monkeypatch):
    run, data = tiny_run
    s = G.GradientSettings(n_examples=40, epochs="auto", max_epochs=3, sizes=(10, 20), repeats=2, batch_size=16)
    assert G.select_epochs(run, s)[0] == 0 and G.select_epochs(run, s)[-1] == 3
    calls = []
    real = G.epoch_rows
    monkeypatch.setattr(G, "epoch_rows", lambda *a, **k: calls.append(a[1]) or real(*a, **k))
    first = G.gradients_over_epochs(run, s, epochs=[0, 2], data=data)
    assert calls == [0, 2] and sorted(first["epoch"].unique()) == [0, 2]
    entry = G.epochs_cache(run, s)
    assert entry.path().exists() and entry.folder.parent == run.path / "gradients"
    pd.testing.assert_frame_equal(G.gradients_over_epochs(run, s, epochs=[0, 2], data=data), first)
    assert calls == [0, 2]
    more = G.gradients_over_epochs(run, s, epochs=[0, 1, 2], data=data)
    assert calls == [0, 2, 1]
    pd.testing.assert_frame_equal(more[more["epoch"] != 1].reset_index(drop=True), first)
    identity = G.gradients_over_epochs(run, s, epochs=[0], data=data, bn="saved")
    assert calls == [0, 2, 1, 0] and not np.allclose(identity["ratio"], first[first["epoch"] == 0]["ratio"])
    # the key: batch size and threads out; sample, seed, BatchNorm mode and the code's version in
    key = lambda bn="recompute_init", **kw: G.epochs_cache(run, G.GradientSettings(**kw), bn).key   # noqa: E731
    assert key(n_examples=40, batch_size=8, num_threads=2) == entry.key
    assert len({entry.key, key(n_examples=41), key(n_examples=40, seed=1), key("saved", n_examples=40)}) == 4
    old = ResultCache.of_run(run, "gradients", {"table": "epochs", "n_examples": 40, "bn": "recompute_init"},
                             seed=0, version=G.CACHE_VERSION - 1)
    assert old.key != entry.key and G.CACHE_VERSION >= 3
    # the scaling test: sizes made multiples of the class count, the key holds the sizes used
    t = G.scaling_at_epoch(run, G.GradientSettings(sizes=(8, 16), repeats=2, pool_factor=1, batch_size=32), data=data)
    assert sorted(t["n"].unique()) == [10, 20] and (t["epoch"] == 0).all() and set(t["group"]) == set(G.GROUPS)
    monkeypatch.setattr(G, "scaling_table", lambda *a, **k: pytest.fail("recomputed"))
    same = G.scaling_at_epoch(run, G.GradientSettings(sizes=(10, 20), repeats=2, pool_factor=1), data=data)
    pd.testing.assert_frame_equal(same, t)
    assert G.scaling_cache(run, s, (10, 20)).key != G.scaling_cache(run, s, (10, 20), "saved").key
    with pytest.raises(ConfigError, match="no checkpoint"):
        G.select_epochs(run, G.GradientSettings(epochs="0,99"))
    with pytest.raises(ConfigError, match="multiples"):
        G.scaling_at_epoch(run, G.GradientSettings(sizes=(8, 16)), data=data, strict_sizes=True)


def synthetic_history():
    """An epoch table (whole network, three parts) and metrics: early stop at 2, memorization 4-6."""
    dep = {0: 0.3, 1: 0.6, 2: 0.8, 4: 1.2, 6: 1.6, 8: 2.0}
    rows = [{"epoch": e, "part": part, "layer": G.ALL, "ratio": r * f, "n": 100, "n_unpermuted": 40,
             "n_permuted": 60, "cosine": -0.1, "coherence_unpermuted": 0.02, "coherence_permuted": 0.01}
            for e, r in dep.items() for part, f in (("dependent", 1.0), ("total", 2.0), ("independent", 3.0))]
    metrics = pd.DataFrame({"epoch": range(9), "acc_unpermuted": np.linspace(0.1, 1, 9),
                            "acc_permuted_train": [0.1, 0.1, 0.1, 0.1, 0.3, 0.5, 0.95, 0.99, 1.0]})
    return pd.DataFrame(rows), metrics


def test_phases_and_claim_statistics_on_a_synthetic_history():
    table, metrics = synthetic_history()
    ph = G.phase_epochs(sorted(table["epoch"].unique()), metrics, early_stop=2)
    assert ph == {"learning": [1, 2], "memorizing": [4, 6]}      # not epoch 0; 0.25 <= memorized < 0.99
    fn, pools, _, y = linear_readout(N=800)
    scaling = G.scaling_table(fn, pools, (20, 40, 80), repeats=2, labels=y)
    init = table[table["epoch"] == 0]
    identity = init.assign(ratio=init["ratio"] * 0.5)
    st = G.claim_stats(table, init, identity, scaling, metrics, early_stop=2)
    assert tuple(st) == G.STATS
    assert st["gradient_ratio_init"] == pytest.approx(0.3) and st["gradient_ratio_init_total"] == pytest.approx(0.6)
    assert st["gradient_ratio_init_identity_bn"] == pytest.approx(0.15)
    assert st["gradient_ratio_learning"] == pytest.approx(0.7) and st["gradient_ratio_memorizing"] == pytest.approx(1.4)
    assert st["gradient_growth"] == pytest.approx(2.0)
    assert st["gradient_slope_permuted"] < -0.3 and abs(st["gradient_slope_unpermuted"]) < 0.1
    assert 0 <= st["gradient_coherent_share_permuted"] < 0.3 < 0.9 < st["gradient_coherent_share_unpermuted"] <= 1
    late = G.claim_stats(table, init, identity, scaling, metrics, early_stop=8)     # no memorization phase seen
    assert np.isnan(late["gradient_ratio_memorizing"]) and np.isnan(late["gradient_growth"])
    assert np.isnan(G.claim_stats(table, init, identity, scaling, metrics, early_stop=0)["gradient_growth"])


def test_settings_follow_the_preset():
    assert configure("cpu").gradients.n_examples == 1000
    assert G.settings_for(configure("cpu"), repeats=2) == replace(configure("cpu").gradients, repeats=2)
    assert configure("smoke", {"gradients.repeats": "5"}).gradients.repeats == 5
    for name in ("smoke", "cpu", "paper"):         # every preset's sizes give a valid scaling test
        assert len(G.class_sizes(configure(name).gradients.sizes, 10)) >= 2
    with pytest.raises(ConfigError):
        G.GradientSettings(sizes=())


def test_output_uniformity_at_init_is_cached_per_bn_mode(tiny_run):
    run, data = tiny_run
    s = G.GradientSettings(n_examples=60, batch_size=32)
    u = G.uniformity_at_init(run, data, s)
    sample = G.gradient_sample(data, s.n_examples, s.seed)
    for bn in ("saved", "recompute_init"):
        direct = G.output_uniformity(G.model_at(run, 0, data, bn), data, sample)
        for k, v in direct.items():
            assert u.loc[bn, k] == pytest.approx(v, rel=1e-6), (bn, k)
    assert u.loc["recompute_init", "logit_std"] > u.loc["saved", "logit_std"]
    files = list((run.path / "gradients").glob("*/table.csv"))
    stamp = {f: f.stat().st_mtime_ns for f in files}
    assert G.uniformity_at_init(run, data, s).equals(u)          # read back, nothing recomputed
    assert {f: f.stat().st_mtime_ns for f in files} == stamp
