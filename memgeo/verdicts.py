"""Measured verdicts for the paper's claims, computed from cached result tables.

Each function returns plain numbers and a verdict word ("reproduced", "partly", "not reproduced"),
so the section notebooks and the introduction glue the same values. The thresholds are stated in
the docstrings and in the book next to the verdicts.
"""
from __future__ import annotations

import math

import pandas as pd

REPRODUCED, PARTLY, NOT = "reproduced", "partly", "not reproduced"
CHANGE = 0.10   # a ratio counts as a rise (fall) when it is above 1 + CHANGE (below 1 - CHANGE)


def _value(summary: pd.DataFrame, epoch: int, kind: str, layer: str, quantity: str) -> float:
    d = summary[(summary["epoch"] == epoch) & (summary["type"] == kind) & (summary["layer"] == layer)]
    return float(d[quantity].iloc[0])


def layer_groups(summary: pd.DataFrame) -> tuple[list[str], str]:
    """(first third of the trained layers, last layer). "input" is excluded: it never changes."""
    layers = summary.sort_values("depth").drop_duplicates("layer")["layer"].tolist()
    trained = [l for l in layers if l != "input"]
    return trained[:max(1, math.ceil(len(trained) / 3))], trained[-1]


def ratio(summary, kind, layers, early, end, quantity="capacity") -> float:
    """Mean over `layers` of quantity(end) / quantity(early)."""
    vals = [_value(summary, end, kind, l, quantity) / _value(summary, early, kind, l, quantity) for l in layers]
    return float(sum(vals) / len(vals))


def layer_claims(summary: pd.DataFrame, early: int, end: int) -> dict:
    """Claims 1-3 of the layer section, from the geometry table.

    (1) permuted capacity rises late and only deep: ratio end/early-stop in the last layer above
        1 + CHANGE, and above the first-third ratio by the same margin (partly: only the first);
    (2) restored capacity falls in the last layer (below 1 - CHANGE) and holds in the first third
        (above 1 - CHANGE) (partly: only the fall);
    (3) carried by radius and dimension: both shrink for permuted manifolds in the last layer
        (partly: one of them).
    """
    first, last = layer_groups(summary)
    out = {"first_layers": ", ".join(first), "last_layer": last, "early": early, "end": end}
    out["perm_last"] = ratio(summary, "permuted", [last], early, end)
    out["perm_first"] = ratio(summary, "permuted", first, early, end)
    out["rest_last"] = ratio(summary, "restored", [last], early, end)
    out["rest_first"] = ratio(summary, "restored", first, early, end)
    out["radius_last"] = ratio(summary, "permuted", [last], early, end, "radius")
    out["dimension_last"] = ratio(summary, "permuted", [last], early, end, "dimension")
    up = out["perm_last"] > 1 + CHANGE
    out["verdict1"] = REPRODUCED if up and out["perm_last"] > out["perm_first"] * (1 + CHANGE) else PARTLY if up else NOT
    down = out["rest_last"] < 1 - CHANGE
    out["verdict2"] = REPRODUCED if down and out["rest_first"] > 1 - CHANGE else PARTLY if down else NOT
    shrink = (out["radius_last"] < 1) + (out["dimension_last"] < 1)
    out["verdict3"] = REPRODUCED if shrink == 2 else PARTLY if shrink == 1 else NOT
    return out


def memorization_summary(metrics: pd.DataFrame) -> dict:
    """Peak and final test accuracy, the early-stopping epoch, and how far permuted examples are fitted."""
    best = metrics.loc[metrics["acc_test"].idxmax()]
    last = metrics.iloc[-1]
    return {"peak_test": float(best["acc_test"]), "early_stop": int(best["epoch"]),
            "final_test": float(last["acc_test"]), "final_epoch": int(last["epoch"]),
            "drop": float(best["acc_test"] - last["acc_test"]),
            "final_memorized": float(last["acc_permuted_train"]),
            "final_restored": float(last["acc_permuted_true"])}
