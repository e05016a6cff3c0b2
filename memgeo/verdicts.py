"""What one training run shows: the per-run measurements the claims are decided on (layer ratios,
accuracies at early stopping, deviations) and a plain reading of them for that run's page.

The verdicts themselves are not here: `memgeo.claims` decides every claim on 95 % intervals over
training seeds. A reading ("holds", "holds in one of its two parts", "does not hold") only
describes the one run a page shows in detail, with the same thresholds (`config.Thresholds`).
This module imports nothing of memgeo but the configuration.
"""
from __future__ import annotations

import math

import pandas as pd

from .config import Thresholds

HOLDS, HALF, FAILS = "holds", "holds in one of its two parts", "does not hold"
READINGS = (HOLDS, HALF, FAILS)
THRESHOLDS = Thresholds()           # the defaults; a preset's own are `Preset.thresholds`
CHANGE = THRESHOLDS.change          # a ratio counts as a rise (fall) above 1 + CHANGE (below 1 - CHANGE)


def both_or_one(first: bool, second: bool) -> str:
    """One run's reading of a two-part statement: HOLDS (both parts), HALF (one), FAILS (neither)."""
    return HOLDS if first and second else HALF if first or second else FAILS


def binomial_se(p: float, n: int) -> float:
    """Standard error of an accuracy p measured on n independent examples, sqrt(p (1 - p) / n)."""
    return float((p * (1 - p) / n) ** 0.5)


# ---------------------------------------------------------------------------------------------
# The layer section (geometry table: one row per epoch x layer x type)

def _value(summary: pd.DataFrame, epoch: int, kind: str, layer: str, quantity: str) -> float:
    d = summary[(summary["epoch"] == epoch) & (summary["type"] == kind) & (summary["layer"] == layer)]
    return float(d[quantity].iloc[0])


READOUT = "logits"


def layer_groups(summary: pd.DataFrame) -> tuple[list[str], str]:
    """(first third of the hidden layers, last hidden layer). "input" is excluded (it never
    changes) and so is the readout: with one feature per class, mean-field theory does not apply
    there and its permuted capacity follows from training accuracy (it is reported apart)."""
    layers = summary.sort_values("depth").drop_duplicates("layer")["layer"].tolist()
    hidden = [l for l in layers if l not in ("input", READOUT)] or [l for l in layers if l != "input"]
    return hidden[:max(1, math.ceil(len(hidden) / 3))], hidden[-1]


def ratio(summary, kind, layers, early, end, quantity="capacity") -> float:
    """Mean over `layers` of quantity(end) / quantity(early)."""
    vals = [_value(summary, end, kind, l, quantity) / _value(summary, early, kind, l, quantity) for l in layers]
    return float(sum(vals) / len(vals))


def layer_claims(summary: pd.DataFrame, early: int, end: int, thresholds: Thresholds = THRESHOLDS) -> dict:
    """Claims 2a-2c of the layer section, from the geometry table (c = `thresholds.change`).

    (2a) permuted capacity rises late and only deep: ratio end/early-stop in the last layer above
         1 + c, and above the first-third ratio by the same margin (partly: only the first);
    (2b) restored capacity falls in the last layer (below 1 - c) and holds in the first third
         (above 1 - c) (partly: only the fall);
    (2c) carried by radius and dimension: both shrink for permuted manifolds in the last layer
         (partly: one of them).
    """
    c = thresholds.change
    first, last = layer_groups(summary)
    out = {"first_layers": ", ".join(first), "last_layer": last, "early": int(early), "end": int(end)}
    out["perm_last"] = ratio(summary, "permuted", [last], early, end)
    out["perm_first"] = ratio(summary, "permuted", first, early, end)
    out["rest_last"] = ratio(summary, "restored", [last], early, end)
    out["rest_first"] = ratio(summary, "restored", first, early, end)
    out["radius_last"] = ratio(summary, "permuted", [last], early, end, "radius")
    out["dimension_last"] = ratio(summary, "permuted", [last], early, end, "dimension")
    if READOUT in set(summary["layer"]):      # shown apart: not where the claims are judged
        out["perm_readout"] = ratio(summary, "permuted", [READOUT], early, end)
        out["rest_readout"] = ratio(summary, "restored", [READOUT], early, end)
    up = out["perm_last"] > 1 + c
    out["verdict1"] = both_or_one(up, up and out["perm_last"] > out["perm_first"] * (1 + c))
    down = out["rest_last"] < 1 - c
    out["verdict2"] = both_or_one(down, down and out["rest_first"] > 1 - c)
    out["verdict3"] = both_or_one(out["radius_last"] < 1, out["dimension_last"] < 1)
    return out


def memorization_summary(metrics: pd.DataFrame, early_stop: int | None = None,
                         full_test: pd.Series | None = None) -> dict:
    """Test accuracy at the early-stopping epoch ("peak") and at the end, and how far permuted
    examples are fitted. `early_stop`: the run's (chosen on its validation split); None: the
    epoch of best test accuracy. `full_test`: accuracy on the whole test split by epoch
    (`memgeo.heldout`), used instead of the curves' test subset when given."""
    m = metrics.set_index("epoch")
    es = int(m["acc_test"].idxmax()) if early_stop is None else int(early_stop)
    last = metrics.iloc[-1]
    end = int(last["epoch"])
    acc = full_test if full_test is not None else m["acc_test"]
    return {"peak_test": float(acc.loc[es]), "early_stop": es,
            "final_test": float(acc.loc[end]), "final_epoch": end,
            "drop": float(acc.loc[es] - acc.loc[end]),
            "final_memorized": float(last["acc_permuted_train"]),
            "final_restored": float(last["acc_permuted_true"])}


def first_learning(summary: pd.DataFrame, metrics: pd.DataFrame, early: int,
                   thresholds: Thresholds = THRESHOLDS) -> dict:
    """Claim 1: before memorization every layer learns the shared features. At the early-stopping
    epoch the unpermuted examples are fitted better than the permuted ones are memorized, by more
    than `thresholds.fitted_gap`, and the capacity of test manifolds has risen from initialisation
    by more than `thresholds.change` in every trained layer (reproduced: both; partly: one)."""
    m = metrics.set_index("epoch")
    layers = summary.sort_values("depth").drop_duplicates("layer")["layer"].tolist()
    trained = [l for l in layers if l != "input"]
    start = int(summary["epoch"].min())
    rises = {l: _value(summary, early, "test", l, "capacity") / _value(summary, start, "test", l, "capacity") for l in trained}
    out = {"acc_unpermuted_early": float(m.loc[early, "acc_unpermuted"]),
           "acc_permuted_train_early": float(m.loc[early, "acc_permuted_train"]),
           "test_capacity_rise_min": float(min(rises.values())),
           "layers_rising": sum(r > 1 + thresholds.change for r in rises.values()), "n_layers": len(trained)}
    gap = out["acc_unpermuted_early"] - out["acc_permuted_train_early"] > thresholds.fitted_gap
    allrise = out["layers_rising"] == out["n_layers"]
    out["verdict"] = both_or_one(gap, allrise)
    return out


def simulated_deviation(sim: pd.DataFrame) -> float:
    """Median of |simulated - mean-field| / mean-field capacity over the rows of a simulated check."""
    rel = ((sim["capacity_simulated"] - sim["capacity_meanfield"]) / sim["capacity_meanfield"]).abs()
    return float(rel.median())


# ---------------------------------------------------------------------------------------------
# Rewinding

def rewind_claim_holds(late_fraction: float, early_fraction: float, thresholds: Thresholds = THRESHOLDS) -> bool:
    """Claim 3 on the fractions of the test-accuracy gap recovered by rewinding to the early-stopping
    epoch: it holds when the best cumulative rewind that starts in the late half recovers at least
    `thresholds.recovered` and the best single early layer does not (a missing fraction, nan, is
    never at least anything)."""
    return bool(late_fraction >= thresholds.recovered and not early_fraction >= thresholds.recovered)


# ---------------------------------------------------------------------------------------------
# Gradients

def gradient_claim(ratio_init: float, growth: float, thresholds: Thresholds = THRESHOLDS) -> dict:
    """Claim 5: the permuted/unpermuted gradient ratio at initialisation is small (below
    `gradient_small`) and grows during memorization (by `gradient_growth` or more; a missing
    growth, nan, does not count). Returns both parts and this run's reading of them."""
    small = bool(ratio_init < thresholds.gradient_small)
    grows = bool(growth >= thresholds.gradient_growth)
    return {"small_init": small, "grows": grows, "verdict": both_or_one(small, grows)}
