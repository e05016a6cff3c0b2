"""The layers section's report: the run, its manifolds and their geometry over epochs, the
simulated-capacity check, and the verdicts of claims 1, 2a-2c and Fig. 1B."""
from __future__ import annotations

import math

import pandas as pd

from ..book import describe
from ..config import Preset
from ..heldout import full_test_accuracy
from ..probe import (SIM_FEATURE_MARGIN, geometry_over_epochs, sample_manifolds, select_sim_epochs, sim_rows,
                     sim_statistics, simulated_check, synthetic_control)
from ..train import train
from ..verdicts import FAILS, HOLDS, first_learning, layer_claims, memorization_summary, simulated_deviation
from . import Report


def layers_report(p: Preset, progress: bool = True) -> Report:
    """Train (or reuse) the shared run, analyse the geometry of its layers over epochs and the
    simulated capacity (cached), and measure the claims.

    `tables`: data and manifolds (the images), metrics, summary and per_manifold (geometry), sim
    (simulated check) and claims (the section's claim table)."""
    run = train(p.run)      # the run shared with the other sections: trained once, then reused
    data = run.load_data()
    probe = p.probe
    mset = sample_manifolds(data, probe.P, probe.M, p.run.seed)
    g = {"source": describe(p), "eps": p.run.eps, "eps_effective": data.eps_effective, "P": probe.P, "M": probe.M,
         "n_t": probe.n_t, "proj_dim": probe.proj_dim, "kappa": probe.kappa, "n_train": len(data.x_train),
         "center_searches": probe.center_searches}
    metrics = run.metrics
    es, end = run.early_stop_epoch, int(metrics["epoch"].max())
    mem = memorization_summary(metrics, es, full_test_accuracy(run, [es, end]))
    g.update(mem)
    summary, per_manifold = geometry_over_epochs(run, probe, progress=progress)
    analysed = sorted(summary["epoch"].unique())
    g["analysed_epochs"] = ", ".join(str(e) for e in analysed)

    sim_epochs = select_sim_epochs(run, probe, analysed)
    sim_all = sim_rows(simulated_check(run, probe, sim_epochs, progress=progress), probe.P)
    sim = sim_all[sim_all["retained"]].reset_index(drop=True)    # logits and repeated input rows out
    control = synthetic_control(probe.M, n_searches=probe.center_searches)
    sim_stats = sim_statistics(sim_all, control)
    deviation = simulated_deviation(sim)
    g.update(sim_median_dev=deviation, sim_n=len(sim), sim_epochs=", ".join(str(e) for e in sim_epochs),
             sim_dichotomies=probe.sim_dichotomies, sim_n_all=len(sim_all), sim_n_excluded=len(sim_all) - len(sim),
             sim_feature_margin=SIM_FEATURE_MARGIN, sim_control_capacity=float(control["capacity_meanfield"].median()),
             sim_real_capacity=float(sim["capacity_meanfield"].median()) if len(sim) else float("nan"),
             sim_control_M=probe.M, sim_control_Ps="10, 50 and 100", sim_alpha_points=2.0,
             sim_close=p.thresholds.simulated_close, **sim_stats)

    g["sim_cause_reading"] = unseparable_reading(sim_stats)
    th = p.thresholds
    v = layer_claims(summary, mem["early_stop"], max(analysed), th)
    g.update({f"v_{k}": val for k, val in v.items()})
    g["change_threshold"] = th.change
    nan = float("nan")
    g.setdefault("v_perm_readout", nan)
    g.setdefault("v_rest_readout", nan)
    # this seed's ratios (end / early stop); the verdicts are decided over seeds (memgeo.claims)
    claim_table = pd.DataFrame([
        {"quantity": "permuted capacity", "last hidden layer": v["perm_last"], "first third": v["perm_first"],
         "read-out (not judged)": v.get("perm_readout", nan)},
        {"quantity": "restored capacity", "last hidden layer": v["rest_last"], "first third": v["rest_first"],
         "read-out (not judged)": v.get("rest_readout", nan)},
        {"quantity": "permuted radius", "last hidden layer": v["radius_last"], "first third": nan,
         "read-out (not judged)": nan},
        {"quantity": "permuted dimension", "last hidden layer": v["dimension_last"], "first third": nan,
         "read-out (not judged)": nan},
    ]).set_index("quantity")

    c1 = first_learning(summary, metrics, mem["early_stop"], th)
    claims = {
        "first_learning": (
            f"at early stopping (epoch {mem['early_stop']}) unpermuted examples fitted {c1['acc_unpermuted_early']:.2f}, "
            f"permuted memorized {c1['acc_permuted_train_early']:.2f}; test-manifold capacity rose in "
            f"{c1['layers_rising']} of {c1['n_layers']} layers", c1["verdict"]),
        "late_deep": (f"permuted capacity end/early-stop x{v['perm_last']:.2f} in the last layer vs "
                      f"x{v['perm_first']:.2f} in the first third", v["verdict1"]),
        "restored_lost": (f"restored capacity x{v['rest_last']:.2f} in the last layer vs x{v['rest_first']:.2f} in "
                          f"the first third", v["verdict2"]),
        "radius_dimension": (f"permuted manifolds, last layer: radius x{v['radius_last']:.2f}, dimension "
                             f"x{v['dimension_last']:.2f}", v["verdict3"]),
        "simulated": (f"median relative deviation {deviation:.1%} over {len(sim)} distinct layer/epoch sets "
                      f"(synthetic control: {sim_stats['sim_control_p10']:.1%} at P = 10, "
                      f"{sim_stats['sim_control_p100']:.1%} at P = 100)",
                      HOLDS if deviation < th.simulated_close else FAILS),
    }
    stats = {"fitted_gap_early": c1["acc_unpermuted_early"] - c1["acc_permuted_train_early"],
             "test_capacity_rise_min": c1["test_capacity_rise_min"],
             "perm_ratio_last_hidden": v["perm_last"], "perm_ratio_last_over_first": v["perm_last"] / v["perm_first"],
             "rest_ratio_last_hidden": v["rest_last"], "rest_ratio_first": v["rest_first"],
             "radius_ratio_last_hidden": v["radius_last"], "dimension_ratio_last_hidden": v["dimension_last"],
             "perm_ratio_readout": v.get("perm_readout", float("nan")),
             "rest_ratio_readout": v.get("rest_readout", float("nan")),
             "peak_test_full": mem["peak_test"], "final_test_full": mem["final_test"], "early_stop": es,
             "eps_effective": data.eps_effective}
    tables = {"data": data, "manifolds": mset, "metrics": metrics, "summary": summary,
              "per_manifold": per_manifold, "sim": sim, "sim_all": sim_all, "sim_control": control,
              "claims": claim_table}
    stats.update(sim_stats)
    # what finite P alone gives (the synthetic control at the same P): the claim is judged beyond it
    stats["sim_excess_dev"] = sim_stats["sim_median_abs_dev"] - sim_stats["sim_control_p10"]
    return Report(g, tables, claims, run, stats)


def unseparable_reading(st: dict, negligible: float = 0.02, hardly: float = 0.9) -> str:
    """What the share of never-separable dichotomies says about the simulated capacity's gap
    (`st`: from `probe.sim_statistics`); `negligible`: a share below which they cannot matter;
    `hardly`: a gap that keeps this fraction of itself without them is not theirs."""
    share, sep, all_ = st["sim_unseparable"], st["sim_median_abs_dev_separable"], st["sim_median_abs_dev"]
    if not all(math.isfinite(x) for x in (share, sep, all_)):
        return "not measured (no layer counts)"
    if share < negligible:
        return "almost every dichotomy is separable, so they are not what lowers the simulated capacity"
    if sep <= 0.5 * all_:
        return "leaving them out removes most of the gap: they are its main cause"
    if sep < hardly * all_:
        return "leaving them out removes part of the gap, not most of it"
    return "leaving them out hardly changes the gap: they are not its cause"
