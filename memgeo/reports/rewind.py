"""The rewinding section's report: every number and sentence its page quotes, the tables it
shows, and its rows of the claim table (claim 3 and Maini et al.'s)."""
from __future__ import annotations

import math

import pandas as pd

from ..book import describe
from ..config import Preset
from ..rewind import default_epochs, gap_table, maini_summary, param_counts, rewind_table, rewindable_layers, summary
from ..rewind_controls import (CONTROL_SEED, DRAWS, N_FINAL, checkpoint_selectivity, control_table, maini_test,
                               matched_means, matched_table)
from ..train import train
from ..verdicts import FAILS, HOLDS, binomial_se
from . import Report


def rewind_report(p: Preset, progress: bool = True, draws: int = DRAWS, control_seed: int = CONTROL_SEED,
                  n_final: int = N_FINAL) -> Report:
    """Rewind the shared run's layers (single and cumulative, BatchNorm rewound with its layer) to
    `p.rewind.n_epochs` saved epochs, and to the early-stopping epoch with BatchNorm recomputed;
    the parameter-matched random control of every rewind to early stopping (`draws` draws, seed
    `control_seed`; `memgeo.rewind_controls`), selectivity, and Maini et al.'s claim with the last
    `n_final` layers as the final ones (all cached), and say what they show.

    `tables`: table (every rewind), gaps (rewinds to early stopping, with the gap recovered),
    headline, maini (single-layer rewinds to early stopping), table_bn, bn_compare, params (per
    layer), matched (every control draw), control (rewinds and their controls), maini_test.
    `stats`: see `rewind_stats`."""
    run = train(p.run)      # the run shared with the other sections: trained once, then reused
    th = p.thresholds
    es = run.early_stop_epoch
    epochs = default_epochs(run, n=p.rewind.n_epochs)
    table = rewind_table(run, epochs=epochs, bn="rewind", batch_size=p.rewind.batch_size, progress=progress)
    s = summary(table, run, threshold=th.recovered)
    ms = maini_summary(table, run, threshold=th.recovered)
    gaps = gap_table(table, run)
    layers = rewindable_layers(run.load_model(p.run.epochs))
    g = {"desc": describe(p), "epochs_list": ", ".join(str(e) for e in epochs), "n_epochs": len(epochs),
         "n_saved": len(run.checkpoint_epochs), "es": int(es), "final_epoch": int(s["final_epoch"]),
         "layers_list": ", ".join(layers)}
    for key in ("peak_test", "final_test", "gap", "best_test", "late_best_fraction", "early_best_fraction",
                "fewest_fraction", "peak_memorization", "final_memorization", "threshold"):
        g[key] = float(s[key])
    g.update(peak_epoch=int(s["peak_epoch"]), best_epoch=int(s["best_epoch"]),
             best_rewound=s["best_rewound"].replace("+", ", "), best_mode=s["best_mode"],
             late_list=", ".join(s["late_layers"]), early_list=", ".join(s["early_layers"]),
             late_best_rewound=s["late_best_rewound"].replace("+", ", ") or "none",
             early_best_layer=str(s["early_best_layer"]), fewest_count=int(s["fewest_count"]),
             fewest_layer=str(s["fewest_layer"]))
    if s["gap"] <= 0:
        g["claim_verdict"] = "cannot be tested on this run: its test accuracy did not fall after the peak"
    elif s["claim_holds"]:
        g["claim_verdict"] = "holds for this model"
    else:
        g["claim_verdict"] = "does not hold for this model"
    if not s["fewest_layer"]:
        g["fewest_text"] = "no cumulative rewind does"
    elif s["fewest_count"] == 1:
        g["fewest_text"] = f"rewinding the last layer ({s['fewest_layer']}) alone already does"
    else:
        g["fewest_text"] = (f"rewinding the last {s['fewest_count']} layers (from {s['fewest_layer']} on) is the "
                            f"fewest that does")

    # The last one and the last two layers, rewound together (cumulative) to the early-stopping epoch.
    cum = gaps[gaps["mode"] == "cumulative"].set_index("layer")
    for k, layer in ((1, layers[-1]), (2, layers[-2])):
        g[f"last{k}_names"] = cum.loc[layer, "rewound"].replace("+", ", ")
        g[f"last{k}_frac"] = float(cum.loc[layer, "gap_recovered"])
        g[f"last{k}_mem"] = float(cum.loc[layer, "acc_permuted_train"])
    mid_mem = (s["final_memorization"] + s["peak_memorization"]) / 2
    not_same = (cum.loc[layers[-2], "acc_permuted_train"] < mid_mem
                and not cum.loc[layers[-2], "gap_recovered"] >= s["threshold"])
    g["last_remark"] = ("; removing memorization and restoring generalization are not the same thing here"
                        if not_same else "")
    strict = max(cum.loc[layers[-1], "gap_recovered"], cum.loc[layers[-2], "gap_recovered"]) >= s["threshold"]
    g["strict_verdict"] = "holds as well" if strict else "does not hold"
    n_test = run.meta["n_test"]
    se = binomial_se(s["final_test"], n_test)
    g.update(n_test=n_test, se_test=float(se), se_gap=float(se / s["gap"]) if s["gap"] > 0 else float("nan"))
    headline = pd.DataFrame({
        "value": [s["peak_test"], s["final_test"], s["best_test"]],
        "epoch": [s["peak_epoch"], s["final_epoch"], s["best_epoch"]],
        "layers": ["(checkpoint)", "(none rewound)", f"{s['best_mode']}: {s['best_rewound'].replace('+', ', ')}"],
    }, index=["peak test accuracy (early stopping)", "final test accuracy", "best after rewinding"])

    g.update(maini_glue(ms))
    # BatchNorm: rewound with its layer (above) or recomputed on the training data after rewinding.
    table_bn = rewind_table(run, epochs=[es], bn="recompute", batch_size=p.rewind.batch_size)
    both = pd.concat([table[table["epoch"] == es], table_bn])
    bn_compare = both.pivot_table(index="layer", columns=["mode", "bn"], values="acc_test").reindex(layers)
    diff = (table_bn.set_index(["mode", "layer"])["acc_test"]
            - table[table["epoch"] == es].set_index(["mode", "layer"])["acc_test"])
    s_bn = summary(table_bn, run, threshold=th.recovered)
    g.update(bn_max_diff=float(diff.abs().max()), bn_best_recompute=float(table_bn["acc_test"].max()),
             bn_late_fraction=float(s_bn["late_best_fraction"]), bn_early_fraction=float(s_bn["early_best_fraction"]),
             bn_same="the same verdict" if s_bn["claim_holds"] == s["claim_holds"] else "the opposite verdict")

    # Controls: every rewind to early stopping against a random rewind of as many parameters.
    final = run.load_model(p.run.epochs)
    counts = param_counts(final)
    params = pd.DataFrame({"parameters": counts, "param_share": {k: v / sum(counts.values()) for k, v in counts.items()}})
    matched = matched_table(run, list(dict.fromkeys(gaps["rewound"])), epoch=es, draws=draws, seed=control_seed,
                            bn="rewind", batch_size=p.rewind.batch_size)
    control = control_table(table, run, matched)
    mt = maini_test(table, run, matched, n_final=n_final, threshold=th.recovered)
    late_row = _late_row(control, s["late_best_layer"])
    # The same control with BatchNorm recomputed after the draw, against the same layers rewound
    # with recomputed statistics: the control is not handicapped by mismatched statistics.
    late_bn = float("nan")
    matched_bn = float("nan")
    if s["late_best_layer"]:
        mbn = matched_table(run, [s["late_best_rewound"]], epoch=es, draws=draws, seed=control_seed,
                            bn="recompute", batch_size=p.rewind.batch_size)
        cbn = _late_row(control_table(table_bn, run, mbn), s["late_best_layer"])
        late_bn, matched_bn = float(cbn["gap_recovered"]), float(cbn["gap_recovered_matched"])
    g.update(control_glue(s, late_row, params, g["se_gap"], checkpoint_selectivity(run, es), late_bn, matched_bn,
                          draws, control_seed))
    g.update(maini_test_glue(mt, th.recovered))
    stats = rewind_stats(s, late_row, mt)

    claims = {
        "rewind": (f"best cumulative rewind of late layers ({s['late_best_param_share']:.0%} of the parameters) "
                   f"recovers {s['late_best_fraction']:.0%} of the {s['gap']:.3f} test-accuracy gap, a random rewind "
                   f"of as many weights {stats['rewind_matched_fraction']:.0%}; best single early layer "
                   f"{s['early_best_fraction']:.0%}",
                   HOLDS if s["claim_holds"] else FAILS),
        "maini": (f"best non-final layer alone ({mt['nonfinal_top']}, {mt['nonfinal_share']:.0%} of the parameters) "
                  f"removes {mt['nonfinal_removed']:.0%} of the memorization, a random rewind of as many weights "
                  f"{mt['nonfinal_matched']:.0%}; best final layer ({', '.join(mt['final_layers'])}) "
                  f"{mt['final_removed']:.0%}",
                  mt["verdict"]),
    }
    gaps_by_layer = gaps.pivot(index="layer", columns="mode",
                               values=["acc_test", "gap_recovered", "acc_permuted_train"]).reindex(layers)
    maini = ms["per_layer"][["param_share", "memorization", "memorization_drop", "memorization_removed", "clean_drop", "test_change"]]
    shown = ["param_share", "gap_recovered", "gap_recovered_matched", "memorization_removed",
             "memorization_removed_matched", "clean_drop", "selectivity", "selectivity_matched"]
    tables = {"table": table, "gaps": gaps, "gaps_by_layer": gaps_by_layer, "layers": layers, "headline": headline,
              "maini": maini, "table_bn": table_bn, "bn_compare": bn_compare, "params": params,
              "matched": matched, "control": control,
              "control_shown": control.set_index(["mode", "layer"])[shown],
              "maini_test": mt["per_layer"][["param_share", "final", "memorization_removed",
                                             "memorization_removed_matched", "excess_over_matched", "clean_drop"]]}
    return Report(g, tables, claims, run, stats)


def _late_row(control: pd.DataFrame, layer) -> pd.Series:
    """The control table's row of the cumulative rewind from `layer` (all nan when there is none)."""
    rows = control[(control["mode"] == "cumulative") & (control["layer"] == layer)] if layer else control.iloc[:0]
    if rows.empty:
        return pd.Series(float("nan"), index=control.columns)
    return rows.iloc[0]


def rewind_stats(s: dict, late_row: pd.Series, mt: dict) -> dict[str, float]:
    """One seed's claim statistics (nan where undefined: no gap, no memorization gained after
    early stopping, or no late rewind):

    - rewind_late_fraction: fraction of the test-accuracy gap (early stopping minus final)
      recovered by the best cumulative rewind that starts in the late half;
    - rewind_early_fraction: the same for the best single early-half layer;
    - rewind_matched_fraction: the same for the parameter-matched random control of that late rewind;
    - rewind_late_param_share: that late rewind's share of the network's parameters;
    - rewind_selectivity: that late rewind's memorization drop / clean training accuracy drop
      (`rewind_controls.selectivity`);
    - maini_nonfinal_removed: the largest fraction of memorization removed by one non-final layer
      rewound alone to early stopping; maini_nonfinal_matched: its matched control's fraction;
    - maini_final_removed: the largest such fraction among the final layers, each alone;
    - rewind_late_minus_matched, maini_nonfinal_minus_matched: each against its control."""
    out = {"rewind_late_fraction": float(s["late_best_fraction"]),
            "rewind_early_fraction": float(s["early_best_fraction"]),
            "rewind_matched_fraction": float(late_row["gap_recovered_matched"]),
            "rewind_late_param_share": float(s["late_best_param_share"]),
            "rewind_selectivity": float(late_row["selectivity"]),
            "maini_nonfinal_removed": float(mt["nonfinal_removed"]),
            "maini_nonfinal_matched": float(mt["nonfinal_matched"]),
            "maini_final_removed": float(mt["final_removed"])}
    out["rewind_late_minus_matched"] = out["rewind_late_fraction"] - out["rewind_matched_fraction"]
    out["maini_nonfinal_minus_matched"] = out["maini_nonfinal_removed"] - out["maini_nonfinal_matched"]
    return out


def control_glue(s: dict, late: pd.Series, params: pd.DataFrame, se_gap: float, ck_sel: float,
                 late_bn: float, matched_bn: float, draws: int, seed: int) -> dict:
    """Glue of the parameter shares, the matched control of the best late rewind and its
    selectivity (prefix c_), with the sentence comparing rewind and control."""
    share = params["param_share"]
    late_half = [l for l in s["late_layers"] if l in share.index]
    g = {"c_draws": int(draws), "c_seed": int(seed), "c_largest_layer": str(share.idxmax()),
         "c_largest_share": float(share.max()), "c_late_half_share": float(share[late_half].sum()),
         "c_total_params": int(params["parameters"].sum()),
         "c_late_share": float(s["late_best_param_share"]), "c_late_frac": float(late["gap_recovered"]),
         "c_matched_frac": float(late["gap_recovered_matched"]),
         "c_late_mem_removed": float(late["memorization_removed"]),
         "c_matched_mem_removed": float(late["memorization_removed_matched"]),
         "c_late_clean_drop": float(late["clean_drop"]), "c_late_mem_drop": float(late["memorization_drop"]),
         "c_late_sel": float(late["selectivity"]), "c_matched_sel": float(late["selectivity_matched"]),
         "c_ck_sel": float(ck_sel), "c_late_frac_bn": float(late_bn), "c_matched_frac_bn": float(matched_bn)}
    diff = g["c_late_frac"] - g["c_matched_frac"]
    if math.isnan(diff) or math.isnan(se_gap):
        g["c_matched_text"] = "cannot be compared on this run (no gap, or no late rewind)"
    elif diff > 2 * se_gap:
        g["c_matched_text"] = ("recovers less than the layers do, by more than two standard errors: which weights "
                               "are rewound matters, not only how many")
    elif diff < -2 * se_gap:
        g["c_matched_text"] = ("recovers more than the layers do, by more than two standard errors: the late layers "
                               "are no better than as many weights drawn from the whole network")
    else:
        g["c_matched_text"] = ("recovers about as much as the layers do (within two standard errors): the number "
                               "of weights rewound explains the recovery as well as their place does")
    return g


def maini_test_glue(mt: dict, threshold: float) -> dict:
    """Glue of Maini et al.'s claim as stated (prefix mt_)."""
    g = {"mt_final_list": ", ".join(mt["final_layers"]), "mt_nonfinal_list": ", ".join(mt["nonfinal_layers"]),
         "mt_n_final": len(mt["final_layers"]), "mt_nonfinal_top": str(mt["nonfinal_top"]),
         "mt_final_top": str(mt["final_top"]), "mt_excess_layer": str(mt["nonfinal_best_excess_layer"])}
    for key in ("nonfinal_removed", "nonfinal_matched", "nonfinal_share", "final_removed", "final_share",
                "nonfinal_best_excess"):
        g[f"mt_{key}"] = float(mt[key])
    g["mt_verdict"] = mt["verdict"]
    if math.isnan(g["mt_nonfinal_removed"]):
        g["mt_verdict"] = "cannot be tested on this run"
        g["mt_text"] = ("Memorization did not grow after early stopping on this run, so there is nothing for a "
                        "rewind to remove")
    else:
        big = g["mt_nonfinal_removed"] >= threshold
        beats = g["mt_nonfinal_removed"] > g["mt_nonfinal_matched"]
        g["mt_text"] = ((f"A non-final layer alone removes {'at least' if big else 'less than'} "
                         f"{threshold:.0%} of the memorization") +
                        (", and more than a random rewind of as many weights" if beats else
                         ", but no more than a random rewind of as many weights"))
    return g


def maini_glue(ms: dict) -> dict:
    """The glue values of Maini et al.'s protocol (prefix m_): single-layer rewinds to early stopping."""
    per = ms["per_layer"]
    g = {"m_top_layer": str(ms["top_layer"])}
    for key in ("top_removed", "top_drop", "top_memorization", "top_clean_drop", "late_share"):
        g[f"m_{key}"] = float(ms[key])
    g.update(m_n_strong=int(ms["n_strong"]), m_n_layers=int(ms["n_layers"]),
             m_strong_list=", ".join(ms["strong_layers"]) or "none",
             m_last_removed=float(per["memorization_removed"].iloc[-1]),
             m_first_removed=float(per["memorization_removed"].iloc[0]),
             m_first_clean_drop=float(per["clean_drop"].iloc[0]),
             m_first_layer=per.index[0], m_last_layer=per.index[-1])
    return g
