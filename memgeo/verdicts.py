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


def first_learning(summary: pd.DataFrame, metrics: pd.DataFrame, early: int) -> dict:
    """Claim 1: before memorization every layer learns the shared features. At the early-stopping
    epoch the unpermuted examples are fitted far better than the permuted ones are memorized, and
    the capacity of test manifolds has risen from initialisation in every trained layer
    (reproduced: both; partly: one)."""
    m = metrics.set_index("epoch")
    layers = summary.sort_values("depth").drop_duplicates("layer")["layer"].tolist()
    trained = [l for l in layers if l != "input"]
    start = int(summary["epoch"].min())
    rises = {l: _value(summary, early, "test", l, "capacity") / _value(summary, start, "test", l, "capacity") for l in trained}
    out = {"acc_unpermuted_early": float(m.loc[early, "acc_unpermuted"]),
           "acc_permuted_train_early": float(m.loc[early, "acc_permuted_train"]),
           "test_capacity_rise_min": float(min(rises.values())),
           "layers_rising": sum(r > 1 + CHANGE for r in rises.values()), "n_layers": len(trained)}
    gap = out["acc_unpermuted_early"] - out["acc_permuted_train_early"] > 0.2
    allrise = out["layers_rising"] == out["n_layers"]
    out["verdict"] = REPRODUCED if gap and allrise else PARTLY if gap or allrise else NOT
    return out


def maini_verdict(ms: dict, late_share_max: float = 0.8) -> str:
    """Maini et al.'s claim (memorization is spread, not in the last layers): reproduced when no
    single layer rewound alone removes half the memorization and the late half of the layers
    accounts for less than `late_share_max` of what single rewinds remove; partly when one holds."""
    spread = ms["n_strong"] == 0
    not_late = ms["late_share"] < late_share_max
    return REPRODUCED if spread and not_late else PARTLY if spread or not_late else NOT


def book_claims(p, progress: bool = False) -> pd.DataFrame:
    """The paper's claims with the measured evidence and a verdict, from the same functions (and
    caches) the section notebooks use. One row per claim."""
    from . import gradients as G
    from . import rewind as rw
    from .probe import geometry_over_epochs, select_sim_epochs, simulated_check
    from .sweep import double_descent_verdict, interpolation_threshold, peak_report, sweep_table, train_sweep
    from .train import train

    run = train(p.run, progress=progress)
    metrics = run.metrics
    mem = memorization_summary(metrics)
    summary, _ = geometry_over_epochs(run, p.probe, progress=progress)
    analysed = sorted(summary["epoch"].unique())
    c1 = first_learning(summary, metrics, mem["early_stop"])
    lc = layer_claims(summary, mem["early_stop"], max(analysed))
    rows = [
        ("1. All layers first learn the shared features (generalization comes first)",
         f"at early stopping (epoch {mem['early_stop']}) unpermuted examples fitted {c1['acc_unpermuted_early']:.2f}, "
         f"permuted memorized {c1['acc_permuted_train_early']:.2f}; test-manifold capacity rose in "
         f"{c1['layers_rising']} of {c1['n_layers']} layers", c1["verdict"], "layers"),
        ("2a. Memorization happens late and in the deep layers",
         f"permuted capacity end/early-stop x{lc['perm_last']:.2f} in the last layer vs x{lc['perm_first']:.2f} in the first third",
         lc["verdict1"], "layers"),
        ("2b. Deep layers lose the true class of mislabelled images; early layers keep it",
         f"restored capacity x{lc['rest_last']:.2f} in the last layer vs x{lc['rest_first']:.2f} in the first third",
         lc["verdict2"], "layers"),
        ("2c. Memorization works through shrinking radius and dimension",
         f"permuted manifolds, last layer: radius x{lc['radius_last']:.2f}, dimension x{lc['dimension_last']:.2f}",
         lc["verdict3"], "layers"),
    ]
    table = rw.rewind_table(run, epochs=rw.default_epochs(run, n=8), bn="rewind", progress=progress)
    s = rw.summary(table, run)
    rows.append(("3. Rewinding the final layers to before memorization restores generalization",
                 f"best cumulative rewind of late layers recovers {s['late_best_fraction']:.0%} of the "
                 f"{s['gap']:.3f} test-accuracy gap; best single early layer {s['early_best_fraction']:.0%}",
                 REPRODUCED if s["claim_holds"] else NOT, "rewind"))
    ms = rw.maini_summary(table, run)
    rows.append(("(Maini et al.) Memorization is spread over layers, not only the last ones",
                 f"single-layer rewinds: {ms['late_share']:.0%} of the memorization removed comes from the late half; "
                 f"layers removing half or more of it: {', '.join(ms['strong_layers']) or 'none'}",
                 maini_verdict(ms), "rewind"))
    runs = train_sweep(p.sweep, progress=progress)
    st = sweep_table(runs)
    thr = interpolation_threshold(st)
    rep = peak_report(st, thr)
    rows.append(("4. Model-wise double descent, tied to the geometry",
                 f"interpolation threshold: {'none' if thr is None else f'width {thr}'}; largest local test-error peak "
                 f"{rep['local_peak_height']:.3f} above narrower models "
                 f"(at width {rep['local_peak_width']})" if rep["local_peak_width"] else
                 f"interpolation threshold: {'none' if thr is None else f'width {thr}'}; no test-error peak",
                 double_descent_verdict(rep, thr), "double_descent"))
    # The same calls (and caches) as the gradient section.
    from dataclasses import replace
    gs = G.settings_for(p)
    data = run.load_data()
    gt = G.gradients_over_epochs(run, gs, data=data, progress=progress)
    full0 = G.gradients_over_epochs(run, replace(gs, n_examples=0), epochs=[0], data=data, progress=progress)
    gv = G.verdict(gt, metrics, mem["early_stop"], small=0.5, growth=1.5, full_init=full0)
    rows.append(("5. Near initialization the permuted examples' gradient is small",
                 f"permuted/unpermuted gradient ratio {gv['ratio_init_full']:.2f} at initialization (whole "
                 f"training subset); during memorization {gv['growth']:.2f} times its initial value",
                 REPRODUCED if gv["small_init"] and gv["grows"] else PARTLY if gv["small_init"] or gv["grows"] else NOT,
                 "gradients"))
    sim = simulated_check(run, p.probe, select_sim_epochs(run, p.probe, analysed), progress=progress)
    dev = float(((sim["capacity_simulated"] - sim["capacity_meanfield"]) / sim["capacity_meanfield"]).abs().median())
    rows.append(("(Fig. 1B) Mean-field capacity matches simulated capacity",
                 f"median relative deviation {dev:.1%} over {len(sim)} layer/epoch/type sets",
                 REPRODUCED if dev < 0.15 else PARTLY if dev < 0.3 else NOT, "layers"))
    return pd.DataFrame(rows, columns=["claim", "measured", "verdict", "section"])
