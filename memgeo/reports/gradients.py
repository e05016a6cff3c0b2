"""The gradients section's report: every number and sentence its page quotes, and its row of the
claim table (claim 5)."""
from __future__ import annotations

import dataclasses
import time

import numpy as np
import pandas as pd

from ..book import describe
from ..config import GradientConfig, Preset, Thresholds
from ..data import LabelledData
from ..gradients import (ALL, MEMORIZATION_LEVELS, fit_slopes, fit_two_components, gradient_sample,
                         gradients_over_epochs, model_ratio, model_total_ratio, output_uniformity,
                         scaling_at_epoch, verdict)
from ..runs import Run
from ..train import train
from ..verdicts import NOT, PARTLY, REPRODUCED, both_or_one
from . import Report

VERB = {REPRODUCED: "reproduces", PARTLY: "reproduces only in part", NOT: "does not reproduce"}


def gradients_report(p: Preset, progress: bool = False) -> Report:
    """Train (or reuse) the shared run, measure the gradient split over its epochs, on the whole
    training subset at initialisation and in the scaling test (all cached), and say what they show.

    `glue`: gr_caption and gr_<name> for every number of `gradient_numbers` (with the seconds the
    epochs and the scaling test took, t_epochs and t_scaling); `tables`: table (epochs), full_init,
    scaling, slopes, components and numbers (all of them, one column)."""
    run = train(p.run)      # the run shared with the other sections: trained once, then reused
    data = run.load_data()
    settings = p.gradients
    t0 = time.time()
    table = gradients_over_epochs(run, settings, data=data, progress=progress)
    full0 = gradients_over_epochs(run, dataclasses.replace(settings, n_examples=0), epochs=[0], data=data,
                                  progress=progress)
    t_epochs = time.time() - t0
    t0 = time.time()
    scaling = scaling_at_epoch(run, settings, data=data)
    t_scaling = time.time() - t0
    numbers = gradient_numbers(run, data, settings, table, full0, scaling, p.thresholds)
    numbers.update(t_epochs=t_epochs, t_scaling=t_scaling)
    glue = {"gr_caption": describe(p), **{f"gr_{k}": v for k, v in numbers.items()}}
    measured = (f"permuted/unpermuted gradient ratio {numbers['ratio_init_full']:.2f} at initialization (whole "
                f"training subset); during memorization {numbers['growth']:.2f} times its initial value")
    claim = {verb: word for word, verb in VERB.items()}[numbers["verdict"]]
    tables = {"table": table, "full_init": full0, "scaling": scaling, "slopes": fit_slopes(scaling),
              "components": fit_two_components(scaling), "numbers": pd.Series(numbers, name="value").to_frame()}
    return Report(glue, tables, {"gradients": (measured, claim)}, run)


def gradient_numbers(run: Run, data: LabelledData, settings: GradientConfig, table: pd.DataFrame,
                     full_init: pd.DataFrame, scaling: pd.DataFrame, thresholds: Thresholds = Thresholds(),
                     layer: str = ALL) -> dict:
    """Every number (and the few sentences that depend on them) that the book's gradient section
    quotes, as plain Python values ready for `glue`.

    `table`: gradients_over_epochs; `full_init`: the split at epoch 0 on the whole training subset;
    `scaling`: scaling_at_epoch. Thresholds: `gradient_small` (ratio at init), `gradient_growth`
    (memorization phase over init), `gradient_slope_tol` (distance of the fitted slope from -1/2).
    """
    small, growth, slope_tol = thresholds.gradient_small, thresholds.gradient_growth, thresholds.gradient_slope_tol
    early = run.early_stop_epoch
    v = verdict(table, run.metrics, early, layer=layer, small=small, growth=growth, full_init=full_init,
                memorized=thresholds.memorized)
    slopes = fit_slopes(scaling).set_index("layer")
    comp_t = fit_two_components(scaling)
    comp = comp_t.set_index(["layer", "group"])
    uni = output_uniformity(run.load_model(0, device=data.x_train.device), data,
                            gradient_sample(data, settings.n_examples, settings.seed))
    s_all, s_log = slopes.loc[layer], slopes.loc["logits"]
    d = table[table["layer"] == layer]
    pre = d[(d["epoch"] > d["epoch"].min()) & (d["epoch"] <= early)]["ratio"]
    n_u, n_p = int(d["n_unpermuted"].iloc[0]), int(d["n_permuted"].iloc[0])
    fu, fp = int(full_init["n_unpermuted"].iloc[0]), int(full_init["n_permuted"].iloc[0])
    mu2_u, mu2_p = float(comp.loc[(layer, "unpermuted"), "mu2"]), float(comp.loc[(layer, "permuted"), "mu2"])
    C = data.num_classes
    out = {
        "n_sample": v["n_sample"], "n_train": len(data.x_train), "n_unpermuted": n_u, "n_permuted": n_p,
        "n_unperm_all": fu, "n_perm_all": fp,
        "epochs": ", ".join(str(e) for e in sorted(table["epoch"].unique())),
        "early": early, "epoch_end": v["epoch_end"],
        "max_prob": uni["max_prob"], "uniform": uni["uniform"], "logit_std": uni["logit_std"],
        "ratio_init": v["ratio_init"], "ratio_early": v["ratio_early"], "ratio_end": v["ratio_end"],
        "ratio_max": v["ratio_max"], "epoch_max": v["epoch_max"],
        "ratio_init_logits": float(table[(table["layer"] == "logits") & (table["epoch"] == v["epoch_init"])]["ratio"].iloc[0]),
        "ratio_min_pre": float(pre.min()) if len(pre) else float("nan"),
        "ratio_max_pre": float(pre.max()) if len(pre) else float("nan"),
        "ratio_init_full": v["ratio_init_full"], "cosine_init": v["cosine_init"],
        "cosine_init_full": v["cosine_init_full"],
        "ratio_init_full_fit": model_total_ratio(comp_t, layer, fu, fp),
        "coh_u_init": v["coherence_unpermuted_init"], "coh_p_init": v["coherence_permuted_init"],
        "inv_n_u": 1 / n_u, "inv_n_p": 1 / n_p,
        "memo_levels": ", ".join(f"{q:.0%}" for q in MEMORIZATION_LEVELS),
        "ratio_mem": v["ratio_memorizing"], "growth": v["growth"],
        "epochs_mem": ", ".join(str(e) for e in v["epochs_memorizing"]) or "none",
        "acc_u_mem": v["acc_unpermuted_memorizing"], "acc_p_mem": v["acc_permuted_memorizing"],
        "slope_u": s_all["slope_unpermuted"], "slope_p": s_all["slope_permuted"],
        "slope_ratio": s_all["slope_ratio"], "slope_ratio_logits": s_log["slope_ratio"],
        "slope_ratio_local": s_all["slope_ratio_local"], "slope_pred": -0.5,
        "sizes": ", ".join(str(n) for n in settings.sizes), "repeats": settings.repeats,
        "pool_factor": settings.pool_factor,
        "ratio_first": s_all["ratio_first"], "ratio_last": s_all["ratio_last"],
        "n_first": int(s_all["n_first"]), "n_last": int(s_all["n_last"]),
        "ncross_u": float(comp.loc[(layer, "unpermuted"), "n_cross"]),
        "mu_ratio": float(np.sqrt(max(mu2_p, 0.0) / mu2_u)) if mu2_u > 0 else float("nan"),
        "ratio_pred_full": float(model_ratio(comp_t, layer, fu)),
        "C": C, "floor_pred": 1 / (C - 1),
        "small": small, "growth_min": growth, "slope_tol": slope_tol,
    }
    later = d[d["epoch"] > d["epoch"].min()].sort_values("epoch")
    if len(later):
        first = later.iloc[0]
        out.update(epoch_first=int(first["epoch"]), coh_u_first=float(first["coherence_unpermuted"]),
                   coh_p_first=float(first["coherence_permuted"]), cosine_first=float(first["cosine"]))
    else:
        out.update(epoch_first=-1, coh_u_first=float("nan"), coh_p_first=float("nan"), cosine_first=float("nan"))
    mem = d[d["epoch"].isin(v["epochs_memorizing"])]
    out["coh_u_mem"] = float(mem["coherence_unpermuted"].mean()) if len(mem) else float("nan")
    out["coh_p_mem"] = float(mem["coherence_permuted"].mean()) if len(mem) else float("nan")
    out["cosine_mem"] = float(mem["cosine"].mean()) if len(mem) else float("nan")
    # Is the rise a clean switch? An early checkpoint may already be as high as the memorization phase.
    caveat = ""
    if len(pre) and v["epochs_memorizing"] and pre.max() >= 0.9 * v["ratio_memorizing"]:
        e_hi = int(d.loc[pre.idxmax(), "epoch"])
        acc_hi = float(run.metrics.set_index("epoch")["acc_permuted_train"].get(e_hi, float("nan")))
        caveat = (f"The rise is not monotone, though: at epoch {e_hi}, before the early-stopping epoch and with "
                  f"the permuted examples fitted to only {acc_hi:.2f} of their training labels, the ratio already "
                  f"reached {pre.max():.2f}, close to its mean over the memorization phase. Averaged over the "
                  f"checkpoints after initialization up to the early-stopping epoch it is {pre.mean():.2f}, "
                  f"against {v['ratio_memorizing']:.2f} during memorization.")
    out["caveat_text"] = caveat
    out["coh_u_side"] = "below" if out["coh_u_init"] < out["inv_n_u"] else "above"
    out["coh_p_side"] = "below" if out["coh_p_init"] < out["inv_n_p"] else "above"
    out["small_init_word"] = "is" if v["small_init"] else "is not"
    if v["epochs_memorizing"]:
        out["grows_word"] = (
            ("grows" if v["grows"] else "does not grow enough to count")
            + f": over the memorization phase (epochs {out['epochs_mem']}, where the permuted examples are "
            f"fitted to {out['acc_p_mem']:.2f} of their training labels on average and the unpermuted ones "
            f"to {out['acc_u_mem']:.2f}) it averages {out['ratio_mem']:.2f}, {out['growth']:.2f} times its "
            f"value at initialization on the same sample")
    else:
        out["grows_word"] = ("cannot be judged: no analysed epoch after the early-stopping epoch falls in the "
                             "memorization phase")
    slope_ok = abs(out["slope_ratio"] + 0.5) <= slope_tol
    out["slope_word"] = "agrees with" if slope_ok else "is far from"
    if mu2_u > 0:
        fit = (f"The unpermuted examples have a coherent part, which dominates beyond about "
               f"{out['ncross_u']:.0f} examples. ")
        if mu2_p > 0:
            fit += (f"The permuted examples' coherent part is {out['mu_ratio']:.2f} times as large in norm "
                    f"(predicted: {out['floor_pred']:.2f}). ")
        else:
            fit += (f"The permuted examples show none: their fitted coherent part is zero or negative, within "
                    f"the noise (the predicted one, {out['floor_pred']:.2f} times the unpermuted one in norm, "
                    f"is below what this fit resolves). ")
        fit += (f"Extrapolated to all {fu} unpermuted examples of the training subset (and as many permuted "
                f"ones), the fit gives a per-example ratio of {out['ratio_pred_full']:.2f}.")
        if mu2_p <= 0 or out["mu_ratio"] < 0.5:
            mech = (f"The two-component fit agrees with the argument: the unpermuted examples' gradients add "
                    f"coherently beyond about {out['ncross_u']:.0f} examples and the permuted ones' hardly at "
                    f"all, so the ratio keeps falling, its slope approaching -1/2 only for many more examples "
                    f"than that (local slope {out['slope_ratio_local']:.2f} at the largest n).")
        else:
            mech = (f"The permuted examples' gradients keep a coherent part {out['mu_ratio']:.2f} times that of "
                    f"the unpermuted ones, so the ratio levels off near that value instead of falling like the "
                    f"inverse square root of n.")
    else:
        fit = (f"The fit finds no coherent part in the unpermuted examples' gradients: with at most "
               f"{out['n_last']} examples per group, the class signal of the initial features does not show "
               f"above the per-example variation.")
        mech = "The fit finds no coherent part in either group at these sizes, so the mechanism is not seen."
    out["fit_text"], out["mechanism_text"] = fit, mech
    out["verdict"] = VERB[both_or_one(v["small_init"], v["grows"])]
    return {k: (val.item() if isinstance(val, np.generic) else val) for k, val in out.items()}
