"""Figures of the rewinding section: heat maps over (layer x rewind epoch), the rewinds to one
epoch against the final and peak references, and Maini et al.'s single-layer protocol (tables from
`memgeo.rewind`)."""
from __future__ import annotations

import matplotlib.pyplot as plt
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
