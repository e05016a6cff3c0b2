import math

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
        assert evaluate(model, data) == {m: row[m] for m in rw.METRICS}
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
