from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from memgeo import gradients as G
from memgeo.config import ConfigError, RunConfig, configure
from memgeo.train import train


@pytest.fixture(scope="module")
def tiny_run(cifar_root, tmp_path_factory):
    cfg = RunConfig(unverified_local_copy=True, train_per_class=20, test_per_class=10, eps=0.5, width=4,
                    epochs=3, batch_size=32, lr=0.05)
    run = train(cfg, runs_dir=tmp_path_factory.mktemp("runs"), data_root=cifar_root, progress=False)
    return run, run.load_data(root=cifar_root)


def test_split_parts_sum_to_the_full_gradient(tiny_run):
    run, data = tiny_run
    model = run.load_model(2).double()
    data = data.to("cpu")
    data.mean, data.std = data.mean.double(), data.std.double()
    idx = G.gradient_sample(data, 36, seed=1)
    perm = data.permuted.numpy()[idx]
    assert 0 < perm.sum() < len(idx)
    fn = G.model_grad_fn(model, data, batch_size=16)          # 3 chunks, the last one short
    split = G.gradient_split(fn, idx, perm)

    x = data.normalise(data.x_train[idx], dtype=torch.float64)
    loss = F.cross_entropy(model(x), data.train_label[idx])   # eval mode: running BN statistics
    names = [n for n, _ in model.named_parameters()]
    full = dict(zip(names, torch.autograd.grad(loss, list(model.parameters()))))
    layers = G.layer_parameters(model)
    assert list(layers) == model.layer_names[1:]
    for layer, params in layers.items():
        want = torch.cat([full[n].reshape(-1) for n in params])
        got = split.part("unpermuted", layer) + split.part("permuted", layer)
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(split.full(layer), want, rtol=1e-9, atol=1e-12)

    # per-example squared norms match one-example autograd
    i = idx[:3]
    g = G.per_example_gradients(model, x[:3], data.train_label[i])
    for k in range(3):
        lk = F.cross_entropy(model(x[k:k + 1]), data.train_label[i[k]:i[k] + 1])
        gk = dict(zip(names, torch.autograd.grad(lk, list(model.parameters()))))
        torch.testing.assert_close(g["logits"][k], torch.cat([gk[n].reshape(-1) for n in layers["logits"]]))

    t = split.table()
    assert list(t["layer"]) == list(layers) + [G.ALL]
    assert (t["n_unpermuted"] + t["n_permuted"] == len(idx)).all()
    np.testing.assert_allclose(t["ratio"], t["norm_permuted"] / t["norm_unpermuted"])
    assert t["cosine"].between(-1, 1).all()
    assert t[["coherence_unpermuted", "coherence_permuted"]].stack().between(0, 1 + 1e-12).all()
    # the "all" row combines the layers: squared norms add up
    total = (t.set_index("layer")["norm_full"].drop(G.ALL) ** 2).sum()
    assert t.set_index("layer").loc[G.ALL, "norm_full"] == pytest.approx(np.sqrt(total))


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
    assert row["per_example_unpermuted"] == pytest.approx(float(same[0].norm()))


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


def linear_readout_fn(C=10, d=64, N=4096, seed=0):
    """Per-example gradients of a zero-initialised linear readout (outputs exactly uniform):
    g_i = (1/C - y_i) h_i^T. Examples < N/2 have features centred on their label's mean (coherent);
    the rest have features independent of their labels (incoherent)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, C, N)
    means = rng.normal(size=(C, d))
    h = rng.normal(size=(N, d)) * 0.5
    h[: N // 2] += means[y[: N // 2]]
    err = 1.0 / C - np.eye(C)[y]
    g = torch.as_tensor(np.einsum("nc,nd->ncd", err, h).reshape(N, -1))
    mu = (np.full(C, 1.0 / C)[:, None] * means.mean(0)[None] - means / C)   # E[(1/C - y) h^T]
    pools = {"unpermuted": np.arange(N // 2), "permuted": np.arange(N // 2, N)}
    return _const_fn(g), pools, float((mu ** 2).sum()), y


@pytest.mark.parametrize("balanced", [False, True])
def test_scaling_on_a_linear_readout_with_random_features(balanced):
    fn, pools, mu2, y = linear_readout_fn()
    sizes = (16, 32, 64, 128, 256, 512)
    table = G.scaling_table(fn, pools, sizes, repeats=6, seed=0, batch_size=512, labels=y if balanced else None)
    assert set(table["n"]) == set(sizes) and len(table) == 2 * 6 * len(sizes) * 2   # layer "w" and "all"
    slopes = G.fit_slopes(table).set_index("layer").loc["w"]
    assert slopes["slope_unpermuted"] == pytest.approx(1.0, abs=0.1)    # coherent: ~ n
    assert slopes["slope_permuted"] == pytest.approx(0.5, abs=0.05)     # incoherent: ~ sqrt(n)
    assert slopes["slope_ratio"] == pytest.approx(-0.5, abs=0.12)
    comp = G.fit_two_components(table).set_index(["layer", "group"])
    assert comp.loc[("w", "unpermuted"), "mu2"] == pytest.approx(mu2, rel=0.25)
    assert abs(comp.loc[("w", "permuted"), "mu2"]) < 0.05 * mu2
    assert comp.loc[("w", "unpermuted"), "n_cross"] < 16
    # nested subsets: every repeat's subsets grow by inclusion, sizes are exact
    pool, member, keys = G.nested_subsets(pools, sizes, 2, seed=0, labels=y if balanced else None)
    assert (member.sum(1) == [k[2] for k in keys]).all()
    assert ((member[1] >= member[0]) & (member[0] <= 1)).all()
    if balanced:
        counts = np.bincount(y[pool[member[3] > 0]], minlength=10)
        assert counts.max() - counts.min() <= 1
    with pytest.raises(ConfigError, match="scaling test needs"):
        G.nested_subsets({"a": np.arange(10)}, (4, 16), 1)


def test_epochs_are_cached_and_only_missing_ones_computed(tiny_run, monkeypatch):
    run, data = tiny_run
    s = G.GradientSettings(n_examples=40, epochs="auto", max_epochs=3, sizes=(4, 8), repeats=2, batch_size=16)
    assert G.select_epochs(run, s)[0] == 0 and G.select_epochs(run, s)[-1] == 3
    assert run.early_stop_epoch in G.select_epochs(run, s)
    calls = []
    real = G.epoch_rows
    monkeypatch.setattr(G, "epoch_rows", lambda *a, **k: calls.append(a[1]) or real(*a, **k))
    first = G.gradients_over_epochs(run, s, epochs=[0, 2], data=data)
    assert calls == [0, 2] and sorted(first["epoch"].unique()) == [0, 2]
    entry = G.epochs_cache(run, s)
    assert entry.path().exists() and (entry.folder / "key.json").exists()
    assert entry.folder.parent == run.path / "gradients"
    again = G.gradients_over_epochs(run, s, epochs=[0, 2], data=data)
    assert calls == [0, 2]
    pd.testing.assert_frame_equal(first, again)
    more = G.gradients_over_epochs(run, s, epochs=[0, 1, 2], data=data)
    assert calls == [0, 2, 1] and sorted(more["epoch"].unique()) == [0, 1, 2]
    pd.testing.assert_frame_equal(more[more["epoch"] != 1].reset_index(drop=True), first)
    # batch size is not part of the key; the sample size is
    key = lambda **kw: G.epochs_cache(run, G.GradientSettings(**kw)).key
    assert key(n_examples=40, batch_size=8, num_threads=2) == entry.key
    assert key(n_examples=41) != entry.key and key(n_examples=40, seed=1) != entry.key
    assert G.scaling_cache(run, s).key != entry.key
    with pytest.raises(ConfigError, match="no checkpoint"):
        G.select_epochs(run, G.GradientSettings(epochs="0,99"))

    v = G.verdict(more, run.metrics, run.early_stop_epoch)
    assert v["epoch_init"] == 0 and v["epoch_end"] == 2
    assert isinstance(v["small_init"], bool) and isinstance(v["grows"], bool)
    assert v["small_init"] == (v["ratio_init"] < 0.5)


def test_verdict_on_a_synthetic_history():
    rows = [{"epoch": e, "layer": G.ALL, "ratio": r, "n": 100, "cosine": -0.1, "coherence_unpermuted": 0.02,
             "coherence_permuted": 0.01} for e, r in [(0, 0.3), (2, 0.35), (4, 0.8), (6, 0.9), (8, 1.2)]]
    metrics = pd.DataFrame({"epoch": range(9), "acc_unpermuted": np.linspace(0.1, 1, 9),
                            "acc_permuted_train": [0.1, 0.1, 0.1, 0.1, 0.3, 0.5, 0.95, 0.99, 1.0]})
    v = G.verdict(pd.DataFrame(rows), metrics, early_stop=2)
    assert v["epochs_memorizing"] == [4, 6]                 # after early stop, 0.25 <= memorized < 0.99
    assert v["ratio_memorizing"] == pytest.approx(0.85) and v["growth"] == pytest.approx(0.85 / 0.3)
    assert v["small_init"] and v["grows"] and v["epoch_max"] == 8
    full = pd.DataFrame([{"layer": G.ALL, "ratio": 0.7, "cosine": -0.2}])
    v = G.verdict(pd.DataFrame(rows), metrics, early_stop=2, full_init=full)
    assert not v["small_init"] and v["ratio_init_full"] == 0.7      # judged on the whole subset when given
    assert not G.verdict(pd.DataFrame(rows), metrics, early_stop=8)["grows"]   # no memorization phase seen


def test_scaling_at_epoch_is_cached(tiny_run, monkeypatch):
    run, data = tiny_run
    s = G.GradientSettings(sizes=(4, 8), repeats=2, pool_factor=2, batch_size=16)
    t = G.scaling_at_epoch(run, s, data=data)
    assert set(t["group"]) == set(G.GROUPS) and (t["epoch"] == 0).all()
    monkeypatch.setattr(G, "scaling_table", lambda *a, **k: pytest.fail("recomputed"))
    pd.testing.assert_frame_equal(G.scaling_at_epoch(run, s, data=data), t)
    u = G.output_uniformity(run.load_model(0), data, np.arange(20))
    assert u["uniform"] == pytest.approx(0.1) and u["max_prob"] >= 0.1


def test_settings_follow_the_preset():
    assert configure("smoke").gradients.sizes == (8, 16, 32) and configure("cpu").gradients.n_examples == 1024
    assert G.settings_for(configure("cpu"), repeats=2) == replace(configure("cpu").gradients, repeats=2)
    assert configure("smoke", {"gradients.repeats": "5"}).gradients.repeats == 5
    with pytest.raises(ConfigError):
        G.GradientSettings(sizes=())
