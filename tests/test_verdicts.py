"""One run's readings (memgeo.verdicts) driven to each of their outcomes on small synthetic tables
(the verdicts over seeds are tested in test_claims)."""
import math
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from memgeo import rewind as rw
from memgeo import verdicts as V
from memgeo.config import Thresholds, configure

LAYERS = ["input", "conv1", "conv2", "conv3", "logits"]


def geometry(changes: dict, early=2, end=5) -> pd.DataFrame:
    """A geometry table: every quantity 1 at `early`, and at `end` 1 unless `changes` maps
    (type, layer, quantity) to another value."""
    rows = []
    for epoch in (0, early, end):
        for depth, layer in enumerate(LAYERS):
            for kind in ("unpermuted", "permuted", "restored", "test"):
                row = {"epoch": epoch, "layer": layer, "depth": depth, "type": kind}
                for q in ("capacity", "radius", "dimension"):
                    row[q] = changes.get((kind, layer, q), 1.0) if epoch == end else 1.0
                    if epoch == 0 and kind == "test" and q == "capacity":
                        row[q] = changes.get(("test0", layer, q), 1.0)
                rows.append(row)
    return pd.DataFrame(rows)


def test_layer_groups_and_ratio():
    first, last = V.layer_groups(geometry({}))
    assert first == ["conv1"] and last == "conv3"       # hidden layers only: input and the read-out are out
    assert V.ratio(geometry({("permuted", "conv1", "capacity"): 3.0}), "permuted", ["conv1", "conv2"], 2, 5) == 2.0


@pytest.mark.parametrize("changes,want", [
    ({("permuted", "conv3", "capacity"): 2.0}, V.HOLDS),                                   # late and deep only
    ({("permuted", "conv3", "capacity"): 2.0, ("permuted", "conv1", "capacity"): 2.0,
      ("permuted", "conv2", "capacity"): 2.0}, V.HALF),                                          # everywhere
    ({("permuted", "conv3", "capacity"): 1.05}, V.FAILS),                                          # within the 10 %
])
def test_claim_2a(changes, want):
    assert V.layer_claims(geometry(changes), 2, 5)["verdict1"] == want


@pytest.mark.parametrize("changes,want", [
    ({("restored", "conv3", "capacity"): 0.5}, V.HOLDS),
    ({("restored", "conv3", "capacity"): 0.5, ("restored", "conv1", "capacity"): 0.5,
      ("restored", "conv2", "capacity"): 0.5}, V.HALF),
    ({}, V.FAILS),
])
def test_claim_2b(changes, want):
    assert V.layer_claims(geometry(changes), 2, 5)["verdict2"] == want


@pytest.mark.parametrize("radius,dimension,want", [(0.8, 0.7, V.HOLDS), (0.8, 1.2, V.HALF),
                                                   (1.1, 1.0, V.FAILS)])
def test_claim_2c(radius, dimension, want):
    t = geometry({("permuted", "conv3", "radius"): radius, ("permuted", "conv3", "dimension"): dimension})
    v = V.layer_claims(t, 2, 5)
    assert v["verdict3"] == want and v["radius_last"] == radius and type(v["end"]) is int


def test_the_change_threshold_comes_from_the_config():
    t = geometry({("permuted", "conv3", "capacity"): 1.3})
    assert V.layer_claims(t, 2, 5)["verdict1"] == V.HOLDS
    assert V.layer_claims(t, 2, 5, configure("smoke", {"thresholds.change": 0.5}).thresholds)["verdict1"] == V.FAILS


@pytest.mark.parametrize("unpermuted,rise,want", [(0.9, 1.5, V.HOLDS), (0.9, 1.0, V.HALF),
                                                  (0.3, 1.5, V.HALF), (0.3, 1.0, V.FAILS)])
def test_claim_1(unpermuted, rise, want):
    t = geometry({})
    t.loc[(t["epoch"] == 0) & (t["type"] == "test"), "capacity"] = 1 / rise      # test capacity rose by `rise`
    metrics = pd.DataFrame({"epoch": [0, 2, 5], "acc_unpermuted": [0.1, unpermuted, 1.0],
                            "acc_permuted_train": [0.1, 0.2, 1.0]})
    v = V.first_learning(t, metrics, 2)
    assert v["verdict"] == want and v["n_layers"] == 4


def rewind_case(single: dict, cumulative: dict, peak=0.6, final=0.4):
    """A rewind table at the early-stopping epoch 2 of a 5-epoch run with test accuracies per layer,
    and a run whose metrics have the given peak and final test accuracy."""
    names = ["conv1", "conv2", "conv3", "conv4", "logits"]
    rows = []
    for mode, acc in (("single", single), ("cumulative", cumulative)):
        for i, layer in enumerate(names):
            rewound = [layer] if mode == "single" else names[i:]
            rows.append({"layer": layer, "layer_index": i + 1, "mode": mode, "epoch": 2, "bn": "rewind",
                         "final_epoch": 5, "rewound": "+".join(rewound), "acc_test": acc.get(layer, final),
                         "param_share": len(rewound) / len(names),
                         "acc_permuted_train": 0.9, "acc_permuted_true": 0.1, "acc_unpermuted": 0.95})
    metrics = pd.DataFrame({"epoch": range(6), "acc_test": [0.1, 0.5, peak, 0.5, 0.45, final],
                            "acc_permuted_train": [0.1, 0.2, 0.3, 0.6, 0.8, 0.95],
                            "acc_unpermuted": [0.1, 0.8, 0.9, 0.95, 0.97, 0.98], "acc_permuted_true": 0.1})
    run = SimpleNamespace(metrics=metrics, early_stop_epoch=int(metrics["acc_test"].idxmax()),
                          config=SimpleNamespace(epochs=5))
    return pd.DataFrame(rows), run


@pytest.mark.parametrize("single,cumulative,holds", [
    ({}, {"conv3": 0.55, "conv1": 0.6}, True),                   # late cumulative recovers 75 %, no early single
    ({"conv2": 0.52}, {"conv3": 0.55}, False),                   # an early layer alone recovers 60 % too
    ({}, {"conv3": 0.45, "conv1": 0.6}, False),                  # late layers recover only 25 %
])
def test_claim_3_on_synthetic_rewinds(single, cumulative, holds):
    table, run = rewind_case(single, cumulative)
    s = rw.summary(table, run)
    assert s["claim_holds"] is holds and s["gap"] == pytest.approx(0.2)
    assert s["late_layers"] == ["conv3", "conv4", "logits"]
    if holds:
        assert s["late_best_fraction"] == pytest.approx(0.75) and s["fewest_layer"] == "conv3"


def test_claim_3_rule_and_missing_fractions():
    assert V.rewind_claim_holds(0.5, 0.49) and not V.rewind_claim_holds(0.49, 0.0)
    assert not V.rewind_claim_holds(math.nan, 0.0)                  # no gap: nothing recovered
    assert V.rewind_claim_holds(0.6, math.nan)                      # no early layer measured
    assert not V.rewind_claim_holds(0.6, 0.3, Thresholds(recovered=0.7))
    table, run = rewind_case({}, {"conv3": 0.55, "conv1": 0.6})
    assert rw.summary(table, run, threshold=0.8)["claim_holds"] is False       # the threshold reaches the rule


@pytest.mark.parametrize("ratio,growth,want", [(0.3, 2.0, V.HOLDS), (0.3, 1.2, V.HALF), (0.8, 2.0, V.HALF),
                                               (0.8, 1.0, V.FAILS), (0.3, math.nan, V.HALF)])
def test_claim_5(ratio, growth, want):
    assert V.gradient_claim(ratio, growth)["verdict"] == want


def test_binomial_standard_error_and_claim_keys():
    assert V.binomial_se(0.5, 100) == 0.05 and V.binomial_se(0.0, 10) == 0.0
    assert V.CHANGE == Thresholds().change == 0.1
    assert replace(Thresholds(), change=0.2).change == 0.2
    assert np.isclose(V.THRESHOLDS.memorized, 0.99)


def test_simulated_deviation_and_readout_apart():
    t = pd.DataFrame({"capacity_meanfield": [1.0, 2.0, 4.0], "capacity_simulated": [1.2, 2.4, 4 / 1.2]})
    assert V.simulated_deviation(t) == pytest.approx(0.2)
    v = V.layer_claims(geometry({("permuted", "logits", "capacity"): 3.0}), 2, 5)
    assert v["perm_readout"] == 3.0 and v["perm_last"] == 1.0 and v["verdict1"] == V.FAILS


def test_memorization_summary_uses_the_given_early_stop_and_full_test():
    metrics = pd.DataFrame({"epoch": [0, 1, 2], "acc_test": [0.1, 0.9, 0.5], "acc_permuted_train": [0.1, 0.5, 1.0],
                            "acc_permuted_true": [0.1, 0.2, 0.0]})
    assert V.memorization_summary(metrics)["early_stop"] == 1                     # argmax of test by default
    m = V.memorization_summary(metrics, 2, pd.Series([0.1, 0.6, 0.55], index=[0, 1, 2]))
    assert m["early_stop"] == 2 and m["peak_test"] == 0.55 and m["final_test"] == 0.55 and m["drop"] == 0.0
