import math

import numpy as np
import pandas as pd
import pytest
import torch

from memgeo import rewind as rw
from memgeo.config import RunConfig
from memgeo.models import build_model
from memgeo.train import CheckpointError, autocast, evaluate, train


def small(**kw):
    # fp32: the seeds below were chosen for where the test-accuracy peak falls in fp32
    base = dict(unverified_local_copy=True, train_per_class=20, test_per_class=10, eps=0.5, width=4,
                epochs=3, batch_size=32, lr=0.05, precision="fp32")
    base.update(kw)
    return RunConfig(**base)


@pytest.fixture(scope="module")
def run(cifar_root, tmp_path_factory):
    # seed 1: test accuracy peaks at epoch 2 of 3, so there is a gap for the summaries to measure.
    return train(small(seed=1), runs_dir=tmp_path_factory.mktemp("runs"), data_root=cifar_root, progress=False)


@pytest.fixture(scope="module")
def data(run, cifar_root):
    return run.load_data(root=cifar_root)


def logits(model, data):
    with torch.no_grad(), autocast(model):
        x = data.normalise(data.x_train).contiguous(memory_format=torch.channels_last)
        return model.eval()(x)


def states_equal(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def bn_inputs(model, data):
    """Input of every BatchNorm over the whole training set, one eval-mode pass."""
    got, hooks = {}, []
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            hooks.append(m.register_forward_pre_hook(lambda mod, a, name=name: got.__setitem__(name, a[0].detach())))
    logits(model, data)
    for h in hooks:
        h.remove()
    return got


def test_layers_and_modes(run):
    model = run.load_model(3)
    assert rw.rewindable_layers(model) == ["conv1", "conv2", "conv3", "conv4", "logits"]
    assert rw.layers_for(model, "conv3", "single") == ["conv3"]
    assert rw.layers_for(model, "conv3", "cumulative") == ["conv3", "conv4", "logits"]
    assert rw.layers_for(model, None, "cumulative") == []


@pytest.mark.parametrize("epoch", [0, 1, 2])
def test_rewinding_every_layer_reproduces_the_checkpoint_bitwise(run, data, epoch):
    model = rw.rewind_run(run, "conv1", epoch, mode="cumulative")
    ck = run.load_model(epoch)
    assert states_equal(model.state_dict(), ck.state_dict())
    assert torch.equal(logits(model, data), logits(ck, data))


@pytest.mark.parametrize("bn", rw.BN_OPTIONS)
def test_rewinding_nothing_changes_nothing(run, data, bn):
    final = run.load_model(3)
    model = rw.rewind_model(final, run.load_state(0), [], bn=bn, data=data)
    assert states_equal(model.state_dict(), final.state_dict())
    assert torch.equal(logits(model, data), logits(final, data))
    assert rw.recompute_bn_stats(final, data, layers=[]) == []


def test_single_rewind_replaces_exactly_one_layer(run):
    final, early = run.load_model(3), run.load_state(1)
    model = rw.rewind_model(final, early, ["conv2"])
    for k, v in model.state_dict().items():
        src = early if k.startswith("blocks.conv2.") else final.state_dict()
        assert torch.equal(v, src[k]), k
    assert not states_equal(model.state_dict(), final.state_dict())


def test_bn_rewind_copies_running_statistics(run):
    final, early = run.load_model(3), run.load_state(1)
    model = rw.rewind_model(final, early, ["conv2"], bn="rewind")
    bn2, bn3 = model.blocks.conv2[1], model.blocks.conv3[1]
    assert torch.equal(bn2.running_mean, early["blocks.conv2.1.running_mean"])
    assert torch.equal(bn2.running_var, early["blocks.conv2.1.running_var"])
    assert torch.equal(bn3.running_mean, final.blocks.conv3[1].running_mean)
    assert not torch.equal(early["blocks.conv2.1.running_mean"], final.blocks.conv2[1].running_mean)


@pytest.fixture(scope="module")
def run_bf16(cifar_root, tmp_path_factory):
    return train(small(seed=1, precision="bf16"), runs_dir=tmp_path_factory.mktemp("runs"),
                 data_root=cifar_root, progress=False)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_bn_recompute_sets_training_data_statistics(precision, run, run_bf16, data):
    run = run if precision == "fp32" else run_bf16
    final, early = run.load_model(3), run.load_state(1)
    assert final.precision == precision
    rewound = rw.rewind_model(final, early, ["conv2"], bn="rewind")
    model = rw.rewind_model(final, early, ["conv2"], bn="recompute", data=data, batch_size=64)
    # Affine parameters are rewound; BatchNorm before the rewound layer is untouched.
    assert torch.equal(model.blocks.conv2[1].weight, early["blocks.conv2.1.weight"])
    assert torch.equal(model.blocks.conv1[1].running_mean, final.blocks.conv1[1].running_mean)
    assert torch.equal(model.blocks.conv1[1].running_var, final.blocks.conv1[1].running_var)
    inputs = bn_inputs(model, data)
    for name in ("blocks.conv2.1", "blocks.conv3.1", "blocks.conv4.1"):
        bn = model.get_submodule(name)
        x = inputs[name].double()
        mean, var = x.mean((0, 2, 3)), x.var((0, 2, 3), unbiased=True)
        torch.testing.assert_close(bn.running_mean.double(), mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(bn.running_var.double(), var, rtol=1e-5, atol=1e-6)
        assert not torch.allclose(bn.running_mean, rewound.get_submodule(name).running_mean)


def test_recompute_needs_data(run):
    with pytest.raises(rw.RewindError, match="training data"):
        rw.rewind_model(run.load_model(3), run.load_state(1), ["conv2"], bn="recompute")


def test_table_equals_train_evaluate_and_is_cached(run, data, monkeypatch):
    table = rw.rewind_table(run, epochs=[0, 2], data=data)
    assert list(table.columns) == rw.TABLE_COLUMNS
    assert len(table) == 2 * 2 * 5 and set(table["mode"]) == {"single", "cumulative"}
    for _, row in table.sample(6, random_state=0).iterrows():
        model = rw.rewind_run(run, row["layer"], int(row["epoch"]), mode=row["mode"])
        got = evaluate(model, data)
        assert {m: got[m] for m in rw.METRICS} == {m: row[m] for m in rw.METRICS}
    # Rewinding the whole model is the checkpoint: its rows are the training metrics at that epoch,
    # which equal a fresh evaluation of the rewound model.
    m = run.metrics.set_index("epoch")
    whole = table[(table["mode"] == "cumulative") & (table["layer"] == "conv1")].set_index("epoch")
    for e in (0, 2):
        got = evaluate(rw.rewind_run(run, "conv1", e, mode="cumulative"), data)
        for metric in rw.METRICS:
            assert whole.loc[e, metric] == m.loc[e, metric] == got[metric]
    # Cumulative from the last layer is the single rewind of it.
    last = table[table["layer"] == "logits"]
    assert last.groupby("epoch")["acc_test"].nunique().eq(1).all()
    # Cached in the run folder; a second call reads it.
    files = sorted((run.path / "rewind").glob("*/*.csv"))
    assert [f.name for f in files] == ["table.csv"]
    monkeypatch.setattr(rw, "evaluate_from", lambda *a, **k: pytest.fail("recomputed a cached table"))
    pd.testing.assert_frame_equal(rw.rewind_table(run, epochs=[2, 0], data=data), table)


@pytest.mark.parametrize("bn", rw.BN_OPTIONS)
@pytest.mark.parametrize("budget", ["all", "deep"])
def test_fast_path_equals_train_evaluate(run, data, bn, budget):
    # budget_bytes=0: every rewound model is built whole and scored by train.evaluate.
    reference = rw.rewind_table(run, epochs=[1], data=data, cache=False, bn=bn, batch_size=48, budget_bytes=0)
    inputs = rw.BlockInputs(run.load_model(3), data, 48)
    if budget == "all":
        nbytes = None
    else:   # room for the inputs of conv4 and logits only: the other layers start from conv4's
        sizes = inputs.bytes_per_example()
        nbytes = (sizes["conv4"] + sizes["logits"]) * (len(data.x_train) + len(data.x_test))
        assert set(rw.BlockInputs(run.load_model(3), data, 48, nbytes).kept) == {"conv4", "logits"}
    fast = rw.rewind_table(run, epochs=[1], data=data, cache=False, bn=bn, batch_size=48, budget_bytes=nbytes)
    pd.testing.assert_frame_equal(fast, reference)


def test_table_resumes_after_an_interruption(run, data, monkeypatch):
    fresh = rw.rewind_table(run, epochs=[0, 1], layers=["conv4", "logits"], data=data, cache=False)
    real = type(run).load_state

    def flaky(self, epoch):
        if epoch == 1:
            raise KeyboardInterrupt
        return real(self, epoch)

    monkeypatch.setattr(type(run), "load_state", flaky)
    with pytest.raises(KeyboardInterrupt):
        rw.rewind_table(run, epochs=[0, 1], layers=["conv4", "logits"], data=data)
    entry = rw.rewind_cache(run, ["conv4", "logits"], rw.MODES, "rewind", 3, torch.device("cpu"))
    assert set(entry.read()["epoch"]) == {0}          # the epoch finished before the interruption
    monkeypatch.setattr(type(run), "load_state", real)
    calls = []
    orig = rw.evaluate_from
    monkeypatch.setattr(rw, "evaluate_from", lambda *a, **k: calls.append(1) or orig(*a, **k))
    resumed = rw.rewind_table(run, epochs=[0, 1], layers=["conv4", "logits"], data=data)
    assert len(calls) == 3     # epoch 1 only: conv4, logits (single), conv4->out (cumulative)
    pd.testing.assert_frame_equal(resumed, fresh)


def test_recompute_table(run, data):
    t = rw.rewind_table(run, epochs=[1], layers=["conv3", "logits"], bn="recompute", data=data, cache=False)
    assert set(t["bn"]) == {"recompute"} and len(t) == 4
    row = t[(t["mode"] == "single") & (t["layer"] == "conv3")].iloc[0]
    model = rw.rewind_run(run, "conv3", 1, bn="recompute", data=data)
    got = evaluate(model, data)
    assert all(math.isclose(got[m], row[m], abs_tol=1e-9) for m in rw.METRICS)


def test_bad_epoch_names_saved_epochs(run, data):
    with pytest.raises(CheckpointError, match=r"epoch\(s\) \[7\].*saved epochs: \[0, 1, 2, 3\]"):
        rw.rewind_table(run, epochs=[1, 7], data=data)
    with pytest.raises(CheckpointError, match="saved epochs"):
        rw.rewind_run(run, "conv2", 9)
    with pytest.raises(CheckpointError, match="final epoch 5"):
        rw.rewind_table(run, epochs=[1], final_epoch=5, data=data)


def test_bad_layer_names_existing_layers(run, data):
    with pytest.raises(rw.RewindError, match="conv1, conv2, conv3, conv4, logits"):
        rw.rewind_run(run, "fc7", 1)
    with pytest.raises(rw.RewindError, match="'input' is the image"):
        rw.rewind_table(run, epochs=[1], layers=["input"], data=data)
    with pytest.raises(rw.RewindError, match="choose one of single, cumulative"):
        rw.rewind_run(run, "conv2", 1, mode="prefix")
    with pytest.raises(rw.RewindError, match="rewind, recompute"):
        rw.rewind_table(run, epochs=[1], bn="keep", data=data)


def test_checkpoint_of_another_architecture(run):
    final = run.load_model(3)
    vgg = build_model(small(model="vgg16")).state_dict()
    with pytest.raises(CheckpointError, match=r"another architecture.*") as err:
        rw.rewind_model(final, vgg, ["conv2"])
    assert "conv13" in str(err.value) and "conv4" in str(err.value)
    wider = build_model(small(width=8)).state_dict()
    with pytest.raises(CheckpointError, match="shape mismatch: blocks.conv1.0.weight"):
        rw.rewind_model(final, wider, ["logits"])


def test_summaries(run, data):
    table = rw.rewind_table(run, epochs=rw.default_epochs(run), data=data)
    assert run.early_stop_epoch == 2 and 2 in set(table["epoch"])
    s = rw.summary(table, run)
    assert s["best_test"] == table["acc_test"].max() and s["late_layers"][-1] == "logits"
    assert s["early_layers"] == ["conv1", "conv2"]
    g = rw.gap_table(table, run)
    whole = g[(g["mode"] == "cumulative") & (g["layer"] == "conv1")].iloc[0]
    assert s["gap"] > 0 and whole["gap_recovered"] == pytest.approx(1.0)
    assert isinstance(s["claim_holds"], bool)
    mt = rw.maini_table(table, run)
    assert set(mt["layer"]) == set(rw.rewindable_layers(run.load_model(3)))
    ms = rw.maini_summary(table, run)
    assert ms["top_layer"] in ms["per_layer"].index and ms["n_layers"] == 5


def test_default_epochs(run):
    eps = rw.default_epochs(run, n=8)
    assert eps[0] == 0 and max(eps) < 3 and eps == sorted(set(eps))


def test_summaries_when_the_peak_is_the_final_epoch(cifar_root, tmp_path):
    # seed 0: test accuracy is highest at the last epoch; nothing to recover, nothing may crash.
    run = train(small(), runs_dir=tmp_path, data_root=cifar_root, progress=False)
    assert run.early_stop_epoch == 3
    eps = rw.default_epochs(run)
    assert 3 in eps
    table = rw.rewind_table(run, epochs=eps, layers=["conv4", "logits"], data=run.load_data(root=cifar_root))
    at_final = table[table["epoch"] == 3]
    assert (at_final["acc_test"] == run.metrics.set_index("epoch").loc[3, "acc_test"]).all()
    s = rw.summary(table, run)
    assert s["gap"] == 0 and math.isnan(s["late_best_fraction"]) and s["claim_holds"] is False
    ms = rw.maini_summary(table, run)
    assert ms["n_layers"] == 2


# ---------------------------------------------------------------------------------------------
# Parameter shares, the parameter-matched control, selectivity, Maini et al.'s claim as stated

from memgeo import rewind_controls as rc  # noqa: E402


def test_param_shares_by_hand():
    model = build_model(small(width=4))
    # conv k: 3x3 kernel (no bias: BatchNorm follows) + BatchNorm scale and shift per channel;
    # logits: 8w channels x 2x2 positions -> 10 classes, with bias.
    by_hand = {"conv1": 3 * 4 * 9 + 2 * 4, "conv2": 4 * 8 * 9 + 2 * 8, "conv3": 8 * 16 * 9 + 2 * 16,
               "conv4": 16 * 32 * 9 + 2 * 32, "logits": 32 * 4 * 10 + 10}
    assert by_hand == {"conv1": 116, "conv2": 304, "conv3": 1184, "conv4": 4672, "logits": 1290}
    assert rw.param_counts(model) == by_hand
    assert rw.param_share(model, ["conv4", "logits"]) == pytest.approx((4672 + 1290) / 7566, rel=1e-12)
    assert rw.param_share(model, rw.rewindable_layers(model)) == 1.0


def test_tables_carry_param_shares(run, data):
    table = rw.rewind_table(run, epochs=[2], data=data)
    shares = rw.param_counts(run.load_model(3))
    total = sum(shares.values())
    row = table[(table["mode"] == "cumulative") & (table["layer"] == "conv3")].iloc[0]
    assert row["param_share"] == pytest.approx((shares["conv3"] + shares["conv4"] + shares["logits"]) / total)
    single = table[table["mode"] == "single"].set_index("layer")["param_share"]
    assert single.sum() == pytest.approx(1.0)
    assert rw.gap_table(table, run)["param_share"].max() == pytest.approx(1.0)


def test_allocate_is_proportional_with_largest_remainders():
    # quotas 0.7, 2.1, 4.2: floors 0, 2, 4 (6), the one left goes to the largest remainder (0.7).
    assert rc.allocate([10, 30, 60], 7) == [1, 2, 4]
    assert rc.allocate([10, 30, 60], 100) == [10, 30, 60]
    assert rc.allocate([10, 30, 60], 0) == [0, 0, 0]
    with pytest.raises(rw.RewindError, match="network has 100"):
        rc.allocate([10, 30, 60], 101)


def test_matched_control_rewinds_exactly_the_requested_count(run):
    final, source = run.load_model(3), run.load_state(1)
    n = 1001
    masks = rc.matched_masks(final, n, np.random.default_rng(0))
    assert sum(int(m.sum()) for m in masks.values()) == n
    sizes = [p.numel() for _, p in final.named_parameters()]
    assert [int(m.sum()) for m in masks.values()] == rc.allocate(sizes, n)
    state = rc.masked_state(final, source, masks)
    own = final.state_dict()
    changed = 0
    for k, mask in masks.items():
        assert torch.equal(state[k][mask], source[k][mask]) and torch.equal(state[k][~mask], own[k][~mask])
        changed += int((state[k] != own[k]).sum())
    assert changed == n          # trained weights differ between epochs 1 and 3 everywhere
    # A BatchNorm channel's running statistics follow its scale entry.
    scale = masks["blocks.conv4.1.weight"]
    stat = state["blocks.conv4.1.running_mean"]
    assert torch.equal(stat[scale], source["blocks.conv4.1.running_mean"][scale])
    assert torch.equal(stat[~scale], own["blocks.conv4.1.running_mean"][~scale])


@pytest.mark.parametrize("bn", rw.BN_OPTIONS)
def test_matched_control_of_every_parameter_is_the_full_rewind(run, data, bn):
    final, source = run.load_model(3), run.load_state(1)
    total = sum(rw.param_counts(final).values())
    model = rc.matched_model(final, source, total, np.random.default_rng(5), bn=bn, data=data)
    full = rw.rewind_model(final, source, rw.rewindable_layers(final), bn=bn, data=data)
    assert states_equal(model.state_dict(), full.state_dict())
    assert torch.equal(logits(model, data), logits(full, data))
    none = rc.matched_model(final, source, 0, np.random.default_rng(5))
    assert states_equal(none.state_dict(), final.state_dict())


def test_matched_table_is_seeded_and_cached(run, data, monkeypatch):
    t = rc.matched_table(run, ["conv2", "conv4+logits"], epoch=1, draws=2, data=data)
    assert list(t.columns) == rc.MATCHED_COLUMNS and len(t) == 4
    counts = rw.param_counts(run.load_model(3))
    assert list(t["n_params"]) == [counts["conv2"]] * 2 + [counts["conv4"] + counts["logits"]] * 2
    fresh = rc.matched_table(run, [["conv2"], ["logits", "conv4"]], epoch=1, draws=2, data=data, cache=False)
    pd.testing.assert_frame_equal(fresh, t)         # same seed, same masks; layer order does not matter
    monkeypatch.setattr(rc, "evaluate", lambda *a, **k: pytest.fail("recomputed a cached control"))
    pd.testing.assert_frame_equal(rc.matched_table(run, ["conv2", "conv4+logits"], epoch=1, draws=2, data=data), t)
    means = rc.matched_means(t)
    assert means.loc["conv2", "acc_test"] == pytest.approx(t["acc_test"].iloc[:2].mean())
    with pytest.raises(rw.RewindError, match="rewindable layers: conv1"):
        rc.matched_table(run, ["fc7"], epoch=1, data=data)


def test_selectivity_arithmetic():
    # memorization drop / clean drop, a clean drop below one example of 100 counting as one.
    got = rc.selectivity([0.3, 0.3, 0.3, -0.1, np.nan], [0.1, 0.0, -0.05, 0.2, 0.1], 100)
    np.testing.assert_allclose(got[:4], [3.0, 30.0, 30.0, -0.5])
    assert math.isnan(got[4])


def test_controls_and_maini_test(run, data):
    table = rw.rewind_table(run, epochs=rw.default_epochs(run), data=data)
    g = rw.gap_table(table, run)
    matched = rc.matched_table(run, list(g["rewound"]), data=data, draws=2)
    control = rc.control_table(table, run, matched)
    full = control[(control["mode"] == "cumulative") & (control["layer"] == "conv1")].iloc[0]
    # Count = every parameter: the control is the checkpoint, whatever the draw.
    assert full["param_share"] == 1.0 and full["acc_test_matched"] == full["acc_test"]
    assert full["gap_recovered_matched"] == pytest.approx(full["gap_recovered"]) == pytest.approx(1.0)
    ref = rw.reference(run)
    m = run.metrics.set_index("epoch")
    n_unp = round(run.meta["n_train"] * (1 - run.meta["eps_effective"]))
    row = control[(control["mode"] == "single") & (control["layer"] == "conv3")].iloc[0]
    single = table[(table["epoch"] == 2) & (table["mode"] == "single") & (table["layer"] == "conv3")].iloc[0]
    mem_drop = ref["final_memorization"] - single["acc_permuted_train"]
    clean_drop = ref["final_unpermuted"] - single["acc_unpermuted"]
    assert row["selectivity"] == pytest.approx(mem_drop / max(clean_drop, 1 / n_unp))
    assert rc.checkpoint_selectivity(run) == pytest.approx(full["selectivity"])
    mt = rc.maini_test(table, run, matched, n_final=2)
    assert mt["final_layers"] == ["conv4", "logits"] and mt["nonfinal_layers"] == ["conv1", "conv2", "conv3"]
    # This run forgets its permuted labels after early stopping: nothing to remove, every fraction nan.
    assert ref["final_memorization"] < m.loc[2, "acc_permuted_train"]
    assert math.isnan(mt["nonfinal_removed"]) and math.isnan(mt["final_removed"]) and mt["verdict"] == "does not hold"
    with pytest.raises(rw.RewindError, match="n_final must be between 1 and 4"):
        rc.maini_test(table, run, matched, n_final=5)


def test_maini_test_where_memorization_grew(run, data):
    # Taking epoch 2 as the final model and rewinding to epoch 1: memorization grew in between.
    table = rw.rewind_table(run, epochs=[1], final_epoch=2, data=data)
    m = run.metrics.set_index("epoch")
    dm = m.loc[2, "acc_permuted_train"] - m.loc[1, "acc_permuted_train"]
    assert dm > 0
    singles = rw.rewindable_layers(run.load_model(3))
    matched = rc.matched_table(run, singles, epoch=1, final_epoch=2, data=data, draws=2)
    mt = rc.maini_test(table, run, matched, epoch=1, n_final=1)
    assert mt["final_layers"] == ["logits"]
    per = mt["per_layer"]
    removed = (m.loc[2, "acc_permuted_train"] - table.set_index(["mode", "layer"]).loc["single", "acc_permuted_train"]) / dm
    np.testing.assert_allclose(per["memorization_removed"], removed.reindex(per.index))
    nonfinal = ["conv1", "conv2", "conv3", "conv4"]
    assert mt["nonfinal_removed"] == pytest.approx(removed[nonfinal].max())
    assert mt["nonfinal_top"] == removed[nonfinal].idxmax()
    assert mt["final_removed"] == pytest.approx(removed["logits"])
    top = mt["nonfinal_top"]
    drop = m.loc[2, "acc_permuted_train"] - rc.matched_means(matched).loc[top, "acc_permuted_train"]
    assert mt["nonfinal_matched"] == pytest.approx(drop / dm)
    assert mt["nonfinal_share"] == pytest.approx(rw.param_share(run.load_model(3), [top]))
    holds, beats = mt["nonfinal_removed"] >= 0.5, mt["nonfinal_removed"] > mt["nonfinal_matched"]
    assert mt["verdict"] == ("holds" if holds and beats else "holds in one of its two parts" if holds or beats
                             else "does not hold")
