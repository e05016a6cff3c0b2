"""The rewinding section's report: every number and sentence its page quotes, the tables it
shows, and its rows of the claim table (claim 3 and Maini et al.'s)."""
from __future__ import annotations

import pandas as pd

from ..book import describe
from ..config import Preset
from ..rewind import default_epochs, gap_table, maini_summary, rewind_table, rewindable_layers, summary
from ..train import train
from ..verdicts import binomial_se, maini_verdict, rewind_verdict
from . import Report


def rewind_report(p: Preset, progress: bool = True) -> Report:
    """Rewind the shared run's layers (single and cumulative, BatchNorm rewound with its layer) to
    `p.rewind.n_epochs` saved epochs, and to the early-stopping epoch with BatchNorm recomputed
    (all cached), and say what they show.

    `tables`: table (every rewind), gaps (rewinds to early stopping, with the gap recovered),
    headline, maini (single-layer rewinds to early stopping), table_bn, bn_compare."""
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

    g.update(maini_glue(ms, th.recovered))
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

    claims = {
        "rewind": (f"best cumulative rewind of late layers recovers {s['late_best_fraction']:.0%} of the "
                   f"{s['gap']:.3f} test-accuracy gap; best single early layer {s['early_best_fraction']:.0%}",
                   rewind_verdict(s["claim_holds"])),
        "maini": (f"single-layer rewinds: {ms['late_share']:.0%} of the memorization removed comes from the late half; "
                  f"layers removing half or more of it: {', '.join(ms['strong_layers']) or 'none'}",
                  maini_verdict(ms, th.late_share)),
    }
    gaps_by_layer = gaps.pivot(index="layer", columns="mode",
                               values=["acc_test", "gap_recovered", "acc_permuted_train"]).reindex(layers)
    maini = ms["per_layer"][["memorization", "memorization_drop", "memorization_removed", "clean_drop", "test_change"]]
    tables = {"table": table, "gaps": gaps, "gaps_by_layer": gaps_by_layer, "layers": layers, "headline": headline,
              "maini": maini, "table_bn": table_bn, "bn_compare": bn_compare}
    return Report(g, tables, claims, run)


def maini_glue(ms: dict, threshold: float) -> dict:
    """The glue values of Maini et al.'s protocol (prefix m_), with the sentence on where
    memorization sits."""
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
    if not ms["strong_layers"]:
        g["m_where"] = ("no single layer holds most of it: rewinding any one layer alone leaves most of the "
                        "memorization in place")
    elif ms["strong_in_late_only"]:
        g["m_where"] = ("only late layers remove most of it on their own, as Stephenson et al. expect, "
                        "rather than the spread over many layers that Maini et al. report")
    else:
        g["m_where"] = ("early layers remove most of it on their own too, so it is not confined to the last layers, "
                        "as Maini et al. report")
    g["m_selectivity"] = (float(ms["top_drop"] / ms["top_clean_drop"]) if ms["top_clean_drop"] > 0
                          else float("nan"))
    return g
