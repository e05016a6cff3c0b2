"""Figures of the rewinding section: heat maps over (layer x rewind epoch), the rewinds to one
epoch against the final and peak references, Maini et al.'s single-layer protocol, and the
controls: each rewind against a random rewind of as many weights, and selectivity (tables from
`memgeo.rewind` and `memgeo.rewind_controls`)."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from ..plots import figure, shared_legend
from ..rewind import MODES, reference
from ..runs import Run


def plot_heatmaps(table: pd.DataFrame, metric: str = "acc_test", modes=MODES, mark_epoch: int | None = None,
                  title: str = "", cmap: str = "viridis", axes=None):
    """Heat maps of `metric` over (layer) x (rewind epoch), one panel per mode, stacked at the
    book's column width (or into the given `axes`)."""
    modes = [m for m in modes if m in set(table["mode"])]
    if axes is None:
        n_layers = table["layer"].nunique()
        fig, axes = figure(len(modes), 1, panel_height=0.3 * n_layers + 1.1, squeeze=False)
        axes = axes[:, 0]
    fig = axes[0].figure
    vmin, vmax = table[metric].min(), table[metric].max()
    for ax, mode in zip(axes, modes):
        t = table[table["mode"] == mode].pivot_table(index=["layer_index", "layer"], columns="epoch", values=metric)
        im = ax.imshow(t.values, aspect="auto", cmap=cmap, vmin=vmin, vmax=vmax)
        ax.set_xticks(range(t.shape[1]), [str(e) for e in t.columns])
        labels = [l for _, l in t.index]
        ax.set_yticks(range(t.shape[0]), labels)
        ax.set_ylabel("rewound layer" if mode == "single" else "first rewound layer")
        for i in range(t.shape[0]):
            for j in range(t.shape[1]):
                v = t.values[i, j]
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=9,
                        color="white" if v < (vmin + vmax) / 2 else "black")
        if mark_epoch is not None and mark_epoch in list(t.columns):
            j = list(t.columns).index(mark_epoch)
            ax.add_patch(plt.Rectangle((j - 0.5, -0.5), 1, t.shape[0], fill=False, ec="red", lw=2))
        ax.set_xlabel("rewind epoch")
        ax.set_title(f"{mode}" + (" (layer alone)" if mode == "single" else " (layer to output)"))
    fig.colorbar(im, ax=list(axes), label=metric.replace("_", " "), shrink=0.9)
    if title:
        fig.suptitle(title)
    return fig


def plot_at_epoch(table: pd.DataFrame, run: Run, epoch: int | None = None, axes=None):
    """Test accuracy and memorization after rewinding each layer (single, cumulative) to `epoch`,
    with reference lines for the final and the peak (checkpoint) values; one legend below."""
    ref = reference(run, int(table["final_epoch"].iloc[0]))
    epoch = ref["peak_epoch"] if epoch is None else epoch
    m = run.metrics.set_index("epoch")
    if axes is None:
        fig, axes = figure(1, 2, panel_height=3.0)
    fig = axes[0].figure
    t = table[table["epoch"] == epoch]
    for ax, metric, what in ((axes[0], "acc_test", "test accuracy"),
                             (axes[1], "acc_permuted_train", "memorization")):
        for mode, style in (("single", "o-"), ("cumulative", "s--")):
            s = t[t["mode"] == mode].sort_values("layer_index")
            if len(s):
                ax.plot(s["layer"], s[metric], style, label=mode if mode == "single" else "cumulative (layer→out)")
        ax.axhline(float(m.loc[ref["final_epoch"], metric]), color="grey", ls=":",
                   label=f"final (epoch {ref['final_epoch']})")
        ax.axhline(float(m.loc[epoch, metric]), color="tab:red", ls="-.", lw=1,
                   label=f"checkpoint {epoch}" + (" (peak test)" if epoch == ref["peak_epoch"] else ""))
        if metric == "acc_test" and epoch != ref["peak_epoch"]:
            ax.axhline(ref["peak_test"], color="tab:red", ls="-.", label="peak test")
        ax.set_xlabel("rewound layer (cumulative: first of them)")
        ax.set_ylabel(what)
        ax.tick_params(axis="x", rotation=30)
    shared_legend(fig, axes, ncol=2)
    return fig


def plot_maini(table: pd.DataFrame, mark_epoch: int | None = None):
    """Each layer rewound alone (Maini et al.'s protocol): memorization (accuracy of the permuted
    examples on their training labels, top) and accuracy of the unpermuted examples (bottom)."""
    single = table[table["mode"] == "single"]
    fig, axes = figure(2, 1, panel_height=0.3 * single["layer"].nunique() + 1.1)
    plot_heatmaps(single, "acc_permuted_train", modes=["single"], mark_epoch=mark_epoch, axes=[axes[0]], cmap="magma")
    plot_heatmaps(single, "acc_unpermuted", modes=["single"], mark_epoch=mark_epoch, axes=[axes[1]], cmap="cividis")
    axes[0].set_title("memorization: permuted examples, training labels")
    axes[1].set_title("unpermuted training examples")
    return fig


def _labels(rows: pd.DataFrame) -> list[str]:
    return [f"{l}{'→' if m == 'cumulative' and r != l else ''}\n{sh:.0%}"
            for l, m, r, sh in zip(rows["layer"], rows["mode"], rows["rewound"], rows["param_share"])]


def plot_matched(control: pd.DataFrame, run: Run):
    """Each rewind to the early-stopping epoch (filled; `rewind_controls.control_table`) against
    its parameter-matched random control (hollow, mean over draws): test accuracy (top) and
    memorization (bottom), with the final model and the checkpoint as reference lines. Tick labels
    give the first rewound layer (→: to the output) and the share of parameters rewound."""
    ref = reference(run)
    fig, axes = figure(2, 1, panel_height=2.6, sharex=True)
    x = np.arange(len(control))
    mem = ref["final_memorization"] - control["memorization_drop"]
    mem_matched = ref["final_memorization"] - control["memorization_drop_matched"]
    for ax, own, matched, final, peak, what in (
            (axes[0], control["acc_test"], control["acc_test_matched"], ref["final_test"], ref["peak_test"],
             "test accuracy"),
            (axes[1], mem, mem_matched, ref["final_memorization"], ref["peak_memorization"], "memorization")):
        for mode, marker in (("single", "o"), ("cumulative", "s")):
            sel = (control["mode"] == mode).to_numpy()
            ax.plot(x[sel], own[sel], marker, color="tab:blue", ls="none", label=f"{mode} rewind")
            ax.plot(x[sel], matched[sel], marker, mfc="none", color="tab:orange", ls="none",
                    label=f"{mode}: random weights, same count")
        ax.axhline(final, color="grey", ls=":", label="final model")
        ax.axhline(peak, color="tab:red", ls="-.", lw=1, label="checkpoint (early stopping)")
        ax.set_ylabel(what)
    axes[1].set_xticks(x, _labels(control), fontsize=8)
    axes[1].set_xlabel("rewound layer (→: to the output) and share of the parameters")
    shared_legend(fig, axes, ncol=2)
    return fig


def plot_selectivity(control: pd.DataFrame, run: Run):
    """Memorization removed against clean training accuracy lost, for each rewind to the
    early-stopping epoch (single: circles, cumulative: squares), its matched random control
    (hollow) and the whole checkpoint (star). Both axes in accuracy points; the right axis gives
    the memorization drop as a fraction of the checkpoint's. Above the diagonal a rewind removes
    more memorization than clean accuracy."""
    ref = reference(run)
    m = run.metrics.set_index("epoch")
    es = ref["peak_epoch"]
    ck = (ref["final_unpermuted"] - float(m.loc[es, "acc_unpermuted"]),
          ref["final_memorization"] - float(m.loc[es, "acc_permuted_train"]))
    fig, ax = figure(1, 1, panel_height=3.6)
    for mode, marker in (("single", "o"), ("cumulative", "s")):
        t = control[control["mode"] == mode]
        ax.plot(t["clean_drop"], t["memorization_drop"], marker, color="tab:blue", ls="none", label=f"{mode} rewind")
        ax.plot(t["clean_drop_matched"], t["memorization_drop_matched"], marker, mfc="none", color="tab:orange",
                ls="none", label=f"{mode}: random weights, same count")
        for _, r in t.iterrows():
            ax.annotate(r["layer"] + ("→" if mode == "cumulative" and r["rewound"] != r["layer"] else ""),
                        (r["clean_drop"], r["memorization_drop"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.plot(*ck, "*", ms=12, color="tab:red", ls="none", label=f"whole checkpoint (epoch {es})")
    vals = pd.concat([control[c] for c in ("clean_drop", "memorization_drop", "clean_drop_matched",
                                          "memorization_drop_matched")]).dropna()
    lo, hi = min(vals.min(), *ck, 0.0), max(vals.max(), *ck, 0.0)
    pad = 0.05 * (hi - lo) or 0.01
    ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="grey", ls=":", lw=1, label="as much as clean accuracy")
    ax.set_xlabel("clean training accuracy lost (unpermuted examples)")
    ax.set_ylabel("memorization removed (acc. points)")
    if ck[1] > 0:
        sec = ax.secondary_yaxis("right", functions=(lambda d: d / ck[1], lambda f: f * ck[1]))
        sec.set_ylabel("fraction of the checkpoint's drop")
    shared_legend(fig, [ax], ncol=2)
    return fig
