"""The gradients section's report: every number and sentence its page quotes, its row of the
claim table (claim 5) and the seed's claim statistics (`Report.stats`, names in
`memgeo.gradients.STATS`). Every ratio is of per-example means (see `memgeo.gradients`)."""
from __future__ import annotations

import dataclasses
import time

import numpy as np
import pandas as pd

from ..book import describe
from ..config import GradientConfig, Preset, Thresholds
from ..data import LabelledData
from ..gradients import (ALL, MEMORIZATION_LEVELS, claim_stats, class_sizes, fit_slopes, fit_two_components,
                         gradients_over_epochs, phase_epochs, ratios, scaling_at_epoch, uniformity_at_init)
from ..runs import Run
from ..train import train
from ..verdicts import gradient_claim
from . import Report



def gradients_report(p: Preset, progress: bool = False) -> Report:
    """Train (or reuse) the shared run, measure the gradient split over its epochs (on a fixed
    sample), at initialisation on the whole training subset with BatchNorm recomputed and as the
    identity, and in the scaling test (all cached), and say what they show.

    `glue`: gr_caption and gr_<name> for every number of `gradient_numbers` (with the seconds the
    epochs and the scaling test took, t_epochs and t_scaling); `tables`: table (epochs), init,
    init_identity, scaling, slopes, components and numbers (all of them, one column); `stats`:
    `claim_stats`."""
    run = train(p.run)      # the run shared with the other sections: trained once, then reused
    data = run.load_data()
    settings = p.gradients
    t0 = time.time()
    table = gradients_over_epochs(run, settings, data=data, progress=progress)
    whole = dataclasses.replace(settings, n_examples=0)
    init = gradients_over_epochs(run, whole, epochs=[0], data=data, bn="recompute_init")
    init_identity = gradients_over_epochs(run, whole, epochs=[0], data=data, bn="saved")
    t_epochs = time.time() - t0
    t0 = time.time()
    scaling = scaling_at_epoch(run, settings, data=data)
    t_scaling = time.time() - t0
    numbers = gradient_numbers(run, data, settings, table, init, init_identity, scaling, p.thresholds)
    numbers.update(t_epochs=t_epochs, t_scaling=t_scaling)
    stats = claim_stats(table, init, init_identity, scaling, run.metrics, run.early_stop_epoch,
                        memorized=p.thresholds.memorized)
    glue = {"gr_caption": describe(p), **{f"gr_{k}": v for k, v in numbers.items()}}
    growth = (f"during memorization {numbers['growth']:.2f} times its value from epoch 1 to early stopping"
              if np.isfinite(numbers["growth"]) else "no memorization phase among the analysed epochs")
    measured = (f"label-dependent gradient, permuted/unpermuted per-example ratio {numbers['ratio_init']:.2f} at "
                f"initialization (BatchNorm recomputed; {numbers['ratio_init_identity_bn']:.2f} with identity "
                f"BatchNorm); {growth}")
    claim = numbers["verdict"]       # this run's reading; the verdict is decided over seeds (memgeo.claims)
    tables = {"table": table, "init": init, "init_identity": init_identity, "scaling": scaling,
              "slopes": fit_slopes(scaling), "components": fit_two_components(scaling),
              "numbers": pd.Series(numbers, name="value").to_frame()}
    return Report(glue, tables, {"gradients": (measured, claim)}, run, stats=stats)


def _at0(t: pd.DataFrame, part: str, column: str = "ratio", layer: str = ALL) -> float:
    return float(ratios(t, part, layer, column).iloc[0])


def gradient_numbers(run: Run, data: LabelledData, settings: GradientConfig, table: pd.DataFrame,
                     init: pd.DataFrame, init_identity: pd.DataFrame, scaling: pd.DataFrame,
                     thresholds: Thresholds = Thresholds(), layer: str = ALL) -> dict:
    """Every number (and the few sentences that depend on them) that the book's gradient section
    quotes, as plain Python values ready for `glue`. Ratios: permuted / unpermuted norms of the
    groups' mean per-example gradients; "dep" the label-dependent part, "total" the loss gradient.

    `table`: gradients_over_epochs; `init` / `init_identity`: the split at epoch 0 on the whole
    training subset with BatchNorm recomputed / identity; `scaling`: scaling_at_epoch.
    Thresholds: `gradient_small` (ratio at init), `gradient_growth` (memorization phase over the
    learning phase), `gradient_slope_tol` (distance of the permuted group's slope from -1/2).
    """
    small, growth_min, slope_tol = (thresholds.gradient_small, thresholds.gradient_growth,
                                    thresholds.gradient_slope_tol)
    early = run.early_stop_epoch
    st = claim_stats(table, init, init_identity, scaling, run.metrics, early, layer, thresholds.memorized)
    dep, tot, ind = (ratios(table, part, layer) for part in ("dependent", "total", "independent"))
    ph = phase_epochs(list(dep.index), run.metrics, early, thresholds.memorized)
    mean = lambda s, k: float(s.loc[ph[k]].mean()) if ph[k] else float("nan")   # noqa: E731
    u = uniformity_at_init(run, data, settings)
    uni_id, uni = (u.loc[bn].to_dict() for bn in ("saved", "recompute_init"))
    slopes = fit_slopes(scaling).set_index(["part", "layer"])
    comp = fit_two_components(scaling).set_index(["part", "layer", "group"])
    d0 = table[(table["part"] == "dependent") & (table["layer"] == layer)].sort_values("epoch")
    later = d0[d0["epoch"] > 0]
    acc = run.metrics.set_index("epoch")
    sizes = class_sizes(settings.sizes, data.num_classes)
    out = {
        "C": data.num_classes, "n_train": len(data.x_train), "n_sample": int(d0["n"].iloc[0]),
        "n_unpermuted": int(d0["n_unpermuted"].iloc[0]), "n_permuted": int(d0["n_permuted"].iloc[0]),
        "n_unperm_all": int(init["n_unpermuted"].iloc[0]), "n_perm_all": int(init["n_permuted"].iloc[0]),
        "epochs": ", ".join(str(e) for e in dep.index), "early": early, "epoch_end": int(dep.index[-1]),
        "memo_levels": ", ".join(f"{q:.0%}" for q in MEMORIZATION_LEVELS), "memo_first": MEMORIZATION_LEVELS[0],
        "memorized": thresholds.memorized,
        "uniform": uni["uniform"], "max_prob_identity": uni_id["max_prob"], "max_prob": uni["max_prob"],
        "logit_std_identity": uni_id["logit_std"], "logit_std": uni["logit_std"],
        "ratio_init": st["gradient_ratio_init"], "ratio_init_identity_bn": st["gradient_ratio_init_identity_bn"],
        "ratio_init_total": st["gradient_ratio_init_total"],
        "ratio_init_total_identity_bn": _at0(init_identity, "total"),
        "ratio_init_independent": _at0(init, "independent"),
        "cosine_init": _at0(init, "dependent", "cosine"), "cosine_init_identity_bn": _at0(init_identity, "dependent", "cosine"),
        "cosine_init_total": _at0(init, "total", "cosine"),
        "cosine_init_total_identity_bn": _at0(init_identity, "total", "cosine"),
        "ratio_init_sample": float(dep.iloc[0]),
        "epoch_first": int(later["epoch"].iloc[0]) if len(later) else -1,
        "ratio_first": float(dep.loc[later["epoch"].iloc[0]]) if len(later) else float("nan"),
        "ratio_first_total": float(tot.loc[later["epoch"].iloc[0]]) if len(later) else float("nan"),
        "epochs_learning": ", ".join(str(e) for e in ph["learning"]) or "none",
        "epochs_mem": ", ".join(str(e) for e in ph["memorizing"]) or "none",
        "ratio_learning": st["gradient_ratio_learning"], "ratio_mem": st["gradient_ratio_memorizing"],
        "growth": st["gradient_growth"],
        "ratio_learning_total": mean(tot, "learning"), "ratio_mem_total": mean(tot, "memorizing"),
        "ratio_learning_independent": mean(ind, "learning"), "ratio_mem_independent": mean(ind, "memorizing"),
        "acc_p_learning": float(acc["acc_permuted_train"].reindex(ph["learning"]).mean()) if ph["learning"] else float("nan"),
        "acc_u_mem": float(acc["acc_unpermuted"].reindex(ph["memorizing"]).mean()) if ph["memorizing"] else float("nan"),
        "acc_p_mem": float(acc["acc_permuted_train"].reindex(ph["memorizing"]).mean()) if ph["memorizing"] else float("nan"),
        "coh_u_init": float(d0["coherence_unpermuted"].iloc[0]), "coh_p_init": float(d0["coherence_permuted"].iloc[0]),
        "inv_n_u": 1 / int(d0["n_unpermuted"].iloc[0]), "inv_n_p": 1 / int(d0["n_permuted"].iloc[0]),
        "coh_u_mem": float(d0.set_index("epoch")["coherence_unpermuted"].reindex(ph["memorizing"]).mean()),
        "coh_p_mem": float(d0.set_index("epoch")["coherence_permuted"].reindex(ph["memorizing"]).mean()),
        "sizes": ", ".join(str(n) for n in sizes), "sizes_asked": ", ".join(str(n) for n in settings.sizes),
        "repeats": settings.repeats, "pool_factor": settings.pool_factor,
        "slope_u": st["gradient_slope_unpermuted"], "slope_p": st["gradient_slope_permuted"],
        "slope_u_total": float(slopes.loc[("total", layer), "slope_unpermuted"]),
        "slope_p_total": float(slopes.loc[("total", layer), "slope_permuted"]),
        "share_u": st["gradient_coherent_share_unpermuted"], "share_p": st["gradient_coherent_share_permuted"],
        "share_u_total": float(comp.loc[("total", layer, "unpermuted"), "coherent_share"]),
        "share_p_total": float(comp.loc[("total", layer, "permuted"), "coherent_share"]),
        "n_max": max(sizes), "slope_incoherent": -0.5, "slope_coherent": 0.0,
        "small": small, "growth_min": growth_min, "slope_tol": slope_tol,
    }
    claim = gradient_claim(out["ratio_init"], out["growth"],
                           dataclasses.replace(thresholds, gradient_small=small, gradient_growth=growth_min))
    out["small_init_word"] = "is" if claim["small_init"] else "is not"
    if ph["memorizing"] and ph["learning"]:
        out["grows_text"] = (
            ("grows" if claim["grows"] else "does not grow enough to count")
            + f": over the memorization phase (epochs {out['epochs_mem']}, the permuted examples fitted to "
            f"{out['acc_p_mem']:.2f} of their training labels on average, the unpermuted ones to "
            f"{out['acc_u_mem']:.2f}) it averages {out['ratio_mem']:.2f}, against {out['ratio_learning']:.2f} "
            f"from epoch 1 to the early-stopping epoch (epochs {out['epochs_learning']}): {out['growth']:.2f} times")
    else:
        missing = "after the early-stopping epoch falls in the memorization phase" if ph["learning"] else \
            "lies between epoch 1 and the early-stopping epoch"
        out["grows_text"] = f"cannot be judged: no analysed epoch {missing}"
    incoherent = abs(out["slope_p"] + 0.5) <= slope_tol
    out["mechanism_text"] = (
        f"The permuted examples' label-dependent mean gradient falls with slope {out['slope_p']:.2f} "
        + ("(incoherent, as the argument says" if incoherent else "(not the incoherent -1/2 the argument says")
        + f"; coherent share {out['share_p']:.2f} at n = {out['n_max']}), the unpermuted examples' with slope "
        f"{out['slope_u']:.2f} (coherent share {out['share_u']:.2f}"
        + ("; their class signal dominates)." if out["share_u"] >= 0.5 else
           "; at these sizes their class signal does not yet dominate the per-example variation).") )
    out["verdict"] = claim["verdict"]
    return {k: (val.item() if isinstance(val, np.generic) else val) for k, val in out.items()}
