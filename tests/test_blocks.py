"""memgeo.blocks: a fixed model's block inputs, evaluation from a block on, BatchNorm statistics."""
import copy
import math

import pytest
import torch

from memgeo.blocks import BlockInputs, batchnorms, evaluate_from, forward_from, recompute_from
from memgeo.config import RunConfig
from memgeo.data import load_data
from memgeo.models import build_model
from memgeo.train import evaluate


@pytest.fixture(scope="module")
def setup(cifar_root):
    cfg = RunConfig(unverified_local_copy=True, train_per_class=20, test_per_class=10, width=4, precision="fp32")
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    for m in model.modules():            # non-trivial running statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return model, load_data(cfg, cifar_root)


@pytest.mark.parametrize("budget", [0, 1 << 30])
def test_evaluation_from_any_block_equals_evaluate(setup, budget):
    model, data = setup
    inputs = BlockInputs(model, data, batch_size=48, budget_bytes=budget)
    assert (set(inputs.kept) == set(model.blocks)) == (budget > 0)
    want = evaluate(model, data, batch_size=48)
    assert math.isnan(want.pop("acc_val"))                  # no validation split in this setup
    for layer in ("conv1", "conv3", "logits"):
        got = evaluate_from(model, layer, inputs)
        assert math.isnan(got.pop("acc_val")) and got == want


def test_a_budget_keeps_the_deepest_blocks(setup):
    model, data = setup
    sizes = BlockInputs(model, data, 48).bytes_per_example()
    n = len(data.x_train) + len(data.x_test)
    kept = BlockInputs(model, data, 48, (sizes["conv4"] + sizes["logits"]) * n).kept
    assert set(kept) == {"conv4", "logits"}
    x = data.normalise(data.x_test[:5])
    with torch.no_grad():                  # from the first block on: the whole model
        assert torch.equal(forward_from(model, list(model.blocks)[0], x), model(x))


def test_recompute_from_sets_the_training_statistics(setup):
    model, data = setup
    m = copy.deepcopy(model)
    names, outputs = recompute_from(m, "conv3", BlockInputs(m, data, 48))
    assert names == [n for n, _ in batchnorms(m, {"conv3", "conv4", "logits"})] and len(names) == 2
    assert torch.equal(m.blocks.conv1[1].running_mean, model.blocks.conv1[1].running_mean)   # before: untouched
    got = {}
    hook = m.blocks.conv3[1].register_forward_pre_hook(lambda mod, a: got.setdefault("x", []).append(a[0]))
    with torch.no_grad():
        out = [m(data.normalise(data.x_train[i:i + 48])) for i in range(0, len(data.x_train), 48)]
    hook.remove()
    x = torch.cat(got["x"]).double()
    torch.testing.assert_close(m.blocks.conv3[1].running_mean.double(), x.mean((0, 2, 3)), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(m.blocks.conv3[1].running_var.double(), x.var((0, 2, 3)), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(torch.cat(outputs), torch.cat(out), rtol=1e-5, atol=1e-5)
