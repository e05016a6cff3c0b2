"""memgeo.per_example: per-example gradients (torch.func, eval mode) and subset gradient sums."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from memgeo.config import RunConfig
from memgeo.models import build_model
from memgeo.per_example import coherence, layer_parameters, per_example_gradients, subset_gradient_sums


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(RunConfig(width=4)).double().eval()


def test_per_example_gradients_equal_one_example_autograd(model):
    x = torch.randn(5, 3, 32, 32, dtype=torch.float64)
    y = torch.tensor([0, 3, 3, 7, 9])
    g = per_example_gradients(model, x, y)
    layers = layer_parameters(model)
    assert list(g) == list(layers) == model.layer_names[1:]
    names = [n for n, _ in model.named_parameters()]
    for k in range(5):
        gk = dict(zip(names, torch.autograd.grad(F.cross_entropy(model(x[k:k + 1]), y[k:k + 1]),
                                                 list(model.parameters()))))
        for layer, params in layers.items():
            torch.testing.assert_close(g[layer][k], torch.cat([gk[n].reshape(-1) for n in params]))


def test_per_example_gradients_refuse_train_mode(model):
    with pytest.raises(ValueError, match="eval mode"):
        per_example_gradients(model.train(), torch.zeros(2, 3, 32, 32, dtype=torch.float64), torch.tensor([0, 1]))
    model.eval()


def test_subset_sums_match_direct_sums():
    vecs = torch.randn(20, 7).double()
    fn = lambda idx: {"w": vecs[torch.as_tensor(idx)]}  # noqa: E731
    member = (np.random.default_rng(0).random((3, 20)) < 0.5).astype(float)
    s = subset_gradient_sums(fn, np.arange(20), member, batch_size=6)
    m = torch.as_tensor(member)
    torch.testing.assert_close(s.sums["w"], m @ vecs)
    torch.testing.assert_close(s.sq["w"], m @ vecs.pow(2).sum(1))
    assert list(s.counts) == list(member.sum(1).astype(int))
    gram = s.gram()
    np.testing.assert_allclose(gram["all"], gram["w"])          # one layer: "all" is that layer
    with pytest.raises(ValueError, match="membership"):
        subset_gradient_sums(fn, np.arange(20), member[:, :5])


def test_coherence_identical_and_orthogonal():
    assert coherence(torch.ones(6, 4).double()) == pytest.approx(1.0)
    assert coherence(torch.diag(torch.arange(1.0, 7.0)).double()) == pytest.approx(1 / 6)
