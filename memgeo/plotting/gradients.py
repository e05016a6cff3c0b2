"""Figures of the gradients section: the permuted/unpermuted ratio over training, the coherence
of each group, and the scaling at initialisation (tables from `memgeo.gradients`)."""
from __future__ import annotations

import textwrap
from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from ..gradients import ALL, GROUPS, model_ratio
from ..plots import figure, shared_legend


def plot_ratio(table: pd.DataFrame, metrics: pd.DataFrame, early_stop: int, caption: str = ""):
    """Ratio permuted / unpermuted per layer against epoch (top) and the accuracies (bottom)."""

    fig, (ax, bx) = figure(2, 1, height=6.2, sharex=True, gridspec_kw={"height_ratios": [3, 2]})
    for layer, d in table.groupby("layer", sort=False):
        style = dict(color="k", lw=2.5) if layer == ALL else dict(lw=1.4)
        ax.plot(d["epoch"], d["ratio"], marker="o", ms=3.5, label=layer, **style)
    ax.axhline(1, color="grey", lw=0.8, ls=":")
    ax.set_yscale("log")
    plain_log_ticks(ax)
    ax.set_ylabel("||permuted part|| /\n||unpermuted part||")
    ax.legend(ncol=1, loc="center left", bbox_to_anchor=(1.01, 0.5), title="layer")
    for name, label in (("acc_unpermuted", "unpermuted\n(true label)"),
                        ("acc_permuted_train", "permuted, training\nlabel (memorized)"), ("acc_test", "test")):
        bx.plot(metrics["epoch"], metrics[name], label=label)
    bx.set_ylabel("accuracy")
    bx.set_xlabel("epoch")
    bx.legend(loc="center left", bbox_to_anchor=(1.01, 0.5))
    for a in (ax, bx):
        a.axvline(early_stop, color="tab:red", ls="--", lw=1)
    ax.text(early_stop, ax.get_ylim()[1], " early stop", color="tab:red", va="top")
    if caption:
        fig.suptitle(wrap(caption), fontsize=9)
    return fig


def wrap(text: str, width: int = 100) -> str:
    """A caption wrapped to the figure's width."""
    return textwrap.fill(text, width)


def plot_scaling(table: pd.DataFrame, slopes: pd.DataFrame, layers: Sequence[str] | None = None, caption: str = "",
                 components: pd.DataFrame | None = None):
    """Log-log: group-sum norms against n (top) and the per-example ratio with its fit (bottom);
    with `components` (fit_two_components), the ratio the two-component fit predicts (thin dashed)."""

    layers = list(layers or table["layer"].unique())
    mean = table.groupby(["layer", "group", "n"], sort=False)["norm"].mean().reset_index()
    fig, (ax, bx) = figure(2, 1, height=6.6)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, layer in enumerate(layers):
        c = colors[i % len(colors)]
        d = mean[mean["layer"] == layer]
        s = slopes.set_index("layer").loc[layer]
        for g, ls in (("unpermuted", "-"), ("permuted", "--")):
            dg = d[d["group"] == g].sort_values("n")
            ax.plot(dg["n"], dg["norm"] / dg["norm"].iloc[0], ls, color=c, marker="o", ms=3.5,
                    label=f"{layer} {g} ({s[f'slope_{g}']:.2f})")
        u = d[d["group"] == "unpermuted"].set_index("n")["norm"]
        p = d[d["group"] == "permuted"].set_index("n")["norm"]
        ratio = (p / u).sort_index()
        bx.plot(ratio.index, ratio.values, marker="o", ms=3.5, color=c, label=f"{layer} (slope {s['slope_ratio']:.2f})")
        if components is not None:
            nn = np.geomspace(ratio.index.min(), ratio.index.max(), 50)
            bx.plot(nn, model_ratio(components, layer, nn), color=c, lw=0.8, ls="--")
    n = np.array(sorted(table["n"].unique()), dtype=float)
    ax.plot(n, n / n[0], color="grey", lw=0.8, ls=":", label="slope 1")
    ax.plot(n, np.sqrt(n / n[0]), color="grey", lw=0.8, ls="-.", label="slope 1/2")
    ax.set(xscale="log", yscale="log", xlabel="n examples per group", ylabel="||sum of n gradients||\n(rel. to smallest n)")
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), title="group (fitted slope)")
    measured = [line for line in bx.get_lines() if line.get_marker() == "o"]
    ref = measured[-1].get_ydata()[-1] if measured else 1.0   # through the last layer's largest n
    bx.plot(n, ref * (n / n[-1]) ** -0.5, color="grey", ls=":", label="predicted slope -1/2")
    bx.set(xscale="log", yscale="log", xlabel="n examples per group", ylabel="per-example ratio\npermuted / unpermuted")
    bx.legend(loc="center left", bbox_to_anchor=(1.01, 0.5))
    for a in (ax, bx):
        plain_log_ticks(a)
    if caption:
        fig.suptitle(wrap(caption), fontsize=9)
    return fig


def plain_log_ticks(ax) -> None:
    """Plain numbers instead of powers of ten on log axes."""
    from matplotlib.ticker import FuncFormatter, NullFormatter, ScalarFormatter

    if ax.get_xscale() == "log":
        ax.set_xticks(sorted({int(t) for line in ax.get_lines() if line.get_marker() == "o" for t in line.get_xdata()}))
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
    plain = FuncFormatter(lambda y, _: f"{y:.3g}")
    lo, hi = ax.get_ylim()
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(plain if np.log10(hi / lo) < 1.2 else NullFormatter())
    ax.tick_params(axis="y", which="minor", labelsize=8)


def plot_coherence(table: pd.DataFrame, early_stop: int, caption: str = ""):
    """Coherence of each group against epoch, one panel per group, one line per layer."""

    fig, axes = figure(1, 2, panel_height=3.0, sharey=True)
    for ax, g in zip(axes, GROUPS):
        for layer, d in table.groupby("layer", sort=False):
            style = dict(color="k", lw=2.5) if layer == ALL else dict(lw=1.4)
            ax.plot(d["epoch"], d[f"coherence_{g}"], marker="o", ms=3.5, label=layer, **style)
            n_g = d[f"n_{g}"].iloc[0]
        ax.axhline(1 / n_g, color="grey", ls=":", lw=1, label="1/n (orthogonal)")
        ax.axvline(early_stop, color="tab:red", ls="--", lw=1)
        ax.set(yscale="log", xlabel="epoch", title=f"{g} (n = {n_g})")
        plain_log_ticks(ax)
    axes[0].set_ylabel("coherence\n||sum g||^2 / (n sum ||g||^2)")
    shared_legend(fig, axes, ncol=4)
    if caption:
        fig.suptitle(wrap(caption), fontsize=9)
    return fig
