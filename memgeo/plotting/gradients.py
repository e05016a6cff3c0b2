"""Figures of the gradients section: the permuted/unpermuted ratio over training, the coherence
of each group, and the scaling at initialisation; ratios and norms are of the groups' mean
per-example gradients (tables from `memgeo.gradients`)."""
from __future__ import annotations

import textwrap
from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from ..gradients import ALL, GROUPS, model_mean_norm
from ..plots import figure, shared_legend


def plot_ratio(table: pd.DataFrame, metrics: pd.DataFrame, early_stop: int, caption: str = ""):
    """Ratio permuted / unpermuted of the groups' mean gradients against epoch (top): the
    label-dependent part per layer (black: the whole network), and the whole network's total and
    label-independent parts; the accuracies (bottom)."""

    fig, (ax, bx) = figure(2, 1, height=6.2, sharex=True, gridspec_kw={"height_ratios": [3, 2]})
    dep = table[table["part"] == "dependent"]
    for layer, d in dep.groupby("layer", sort=False):
        style = dict(color="k", lw=2.5) if layer == ALL else dict(lw=1.2)
        ax.plot(d["epoch"], d["ratio"], marker="o", ms=3.5, label=f"{layer} (dependent)" if layer == ALL else layer,
                **style)
    for part, ls in (("total", "--"), ("independent", ":")):
        d = table[(table["part"] == part) & (table["layer"] == ALL)]
        ax.plot(d["epoch"], d["ratio"], ls, color="k", marker="s", ms=3, lw=1.5, label=f"{ALL} ({part})")
    ax.axhline(1, color="grey", lw=0.8, ls=":")
    ax.set_yscale("log")
    plain_log_ticks(ax)
    ax.set_ylabel("||mean permuted|| /\n||mean unpermuted||")
    ax.legend(ncol=1, loc="center left", bbox_to_anchor=(1.01, 0.5), title="layer (part)", fontsize=8)
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
    """Log-log: the norm of each group's mean gradient against n, label-dependent part (top) and
    total (bottom), relative to the smallest n, with each group's fitted slope in the legend; with
    `components` (fit_two_components), the norm the two-component fit predicts (thin)."""

    layers = list(layers or table["layer"].unique())
    mean = table.groupby(["part", "layer", "group", "n"], sort=False)["mean"].mean().reset_index()
    s_all = slopes.set_index(["part", "layer"])
    fig, axes = figure(2, 1, height=6.6, sharex=True)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    n = np.array(sorted(table["n"].unique()), dtype=float)
    for ax, part in zip(axes, ("dependent", "total")):
        for i, layer in enumerate(layers):
            c = colors[i % len(colors)]
            for g, ls in (("unpermuted", "-"), ("permuted", "--")):
                dg = mean[(mean["part"] == part) & (mean["layer"] == layer) & (mean["group"] == g)].sort_values("n")
                ref = dg["mean"].iloc[0]
                ax.plot(dg["n"], dg["mean"] / ref, ls, color=c, marker="o", ms=3.5,
                        label=f"{layer} {g} ({s_all.loc[(part, layer), f'slope_{g}']:.2f})")
                if components is not None:
                    nn = np.geomspace(n[0], n[-1], 50)
                    ax.plot(nn, model_mean_norm(components, part, layer, g, nn) / ref, ls, color=c, lw=0.7, alpha=0.6)
        ax.plot(n, np.ones_like(n), color="grey", lw=0.8, ls=":", label="slope 0 (coherent)")
        ax.plot(n, np.sqrt(n[0] / n), color="grey", lw=0.8, ls="-.", label="slope -1/2 (incoherent)")
        ax.set(xscale="log", yscale="log", ylabel=f"||mean gradient||, {part}\n(rel. to smallest n)")
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), title=f"{part} (fitted slope)", fontsize=7)
    axes[1].set_xlabel("n examples per group")
    for a in axes:
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


def plot_coherence(table: pd.DataFrame, early_stop: int, caption: str = "", part: str = "dependent"):
    """Coherence of each group (one `part`, by default the label-dependent one) against epoch, one
    panel per group, one line per layer."""

    fig, axes = figure(1, 2, panel_height=3.0, sharey=True)
    table = table[table["part"] == part]
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
