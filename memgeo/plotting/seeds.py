"""Figures of the spread over training seeds: every claim statistic per seed with its mean and
95 % interval against the rule's threshold, and each section's main curves over seeds (from the
tables the section reports stack over seeds, one row per seed; intervals from `memgeo.claims`)."""
from __future__ import annotations

import math
import textwrap

import numpy as np
import pandas as pd

from ..claims import intervals_by
from ..plots import TYPE_COLORS, figure, shared_legend
from ..probe import EPOCH_ROLES

VERDICT_COLORS = {"reproduced": "tab:green", "not reproduced": "tab:red", "inconclusive at this scale": "tab:grey"}


def plot_parts(parts: pd.DataFrame, stats: pd.DataFrame, ncols: int = 3):
    """One panel per claim part: every seed's value (dots), the mean with its 95 % interval (bar,
    coloured by the part's verdict) and the rule's threshold (dashed; a band for "within")."""
    n = len(parts)
    nrows = max(1, math.ceil(n / ncols))
    fig, axes = figure(nrows, ncols, panel_height=1.9, squeeze=False)
    for ax, r in zip(axes.flat, parts.itertuples()):
        values = stats[r.statistic].to_numpy(float) if r.statistic in stats else np.zeros(0)
        color = VERDICT_COLORS.get(r.part_verdict, "k")
        ax.plot(np.zeros(len(values)) - 0.25, values, "o", color="k", alpha=0.45, ms=4, label="one seed")
        if math.isfinite(r.lo):
            ax.errorbar([0.15], [r.mean], yerr=[[r.mean - r.lo], [r.hi - r.mean]], fmt="s", color=color,
                        capsize=4, lw=2, label="mean, 95 % interval")
        else:
            ax.plot([0.15], [r.mean], "s", color=color)
        if r.side == "within":
            ax.axhspan(r.bound_lo, r.bound_hi, color="tab:blue", alpha=0.12, label="threshold")
        else:
            ax.axhline(r.bound_lo, color="tab:blue", ls="--", lw=1, label="threshold")
        ax.set_xlim(-0.8, 0.7)
        ax.set_xticks([])
        ax.set_title(f"{r.claim}: {r.rule}", fontsize=9)
        ax.set_ylabel(textwrap.fill(r.statistic.replace("_", " "), 24), fontsize=8)
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    shared_legend(fig, [axes.flat[0]], ncol=3)
    return fig


def plot_geometry_over_seeds(long: pd.DataFrame, quantity: str = "capacity", logy: bool = False):
    """`quantity` against layer for each manifold type, at initialisation, each seed's early-stopping
    epoch and the end: mean over seeds (line) with its 95 % interval (band); `long` from
    `reports.seeds.geometry_over_seeds`."""
    types = [t for t in TYPE_COLORS if t in set(long["type"])]
    fig, axes = figure(1, len(types), panel_height=2.6, sharey=True, squeeze=False)
    b = intervals_by(long, ["type", "role", "depth", "layer"], quantity)
    styles = dict(zip(EPOCH_ROLES, (":", "--", "-")))
    for ax, kind in zip(axes.flat, types):
        for role in EPOCH_ROLES:
            d = b[(b["type"] == kind) & (b["role"] == role)].sort_values("depth")
            ax.plot(d["depth"], d["mean"], styles[role], color=TYPE_COLORS[kind], label=role)
            ax.fill_between(d["depth"], d["lo"], d["hi"], color=TYPE_COLORS[kind], alpha=0.18, lw=0)
        ax.set_title(kind)
        d = b[b["type"] == kind].drop_duplicates("depth").sort_values("depth")
        ax.set_xticks(d["depth"], d["layer"], rotation=60, fontsize=7.5)
        if logy:
            ax.set_yscale("log")
    axes.flat[0].set_ylabel(quantity.replace("_", " "))
    shared_legend(fig, [axes.flat[0]], ncol=3, title="epoch (mean over seeds, band: 95 % interval)")
    return fig


def plot_gradient_ratio_over_seeds(long: pd.DataFrame, part: str = "dependent"):
    """The whole network's ratio permuted / unpermuted of the mean gradients against epoch: every
    seed (faint, its early-stopping epoch marked), the mean over seeds and its 95 % interval at the
    epochs every seed analysed."""
    fig, ax = figure(1, 1, height=3.2)
    for seed, d in long.groupby("seed"):
        ax.plot(d["epoch"], d["ratio"], "-", color="k", alpha=0.3, lw=0.8)
        es = d["early_stop"].iloc[0]
        ax.axvline(es, color="tab:red", ls="--", lw=0.8, alpha=0.5)
    # epochs with a checkpoint in every seed only (the others are kept epochs of some seeds alone)
    b = intervals_by(long, ["epoch"], "ratio").sort_values("epoch")
    b = b[b["n"] == long["seed"].nunique()]
    ax.plot(b["epoch"], b["mean"], "o-", color="k", ms=3, label=f"mean over seeds ({part} part)")
    ax.fill_between(b["epoch"], b["lo"], b["hi"], color="k", alpha=0.15, lw=0, label="95 % interval over seeds")
    ax.plot([], [], "-", color="k", alpha=0.3, lw=0.8, label="one seed")
    ax.plot([], [], "--", color="tab:red", lw=0.8, label="a seed's early stop")
    ax.axhline(1, color="grey", lw=0.8, ls=":")
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("||mean permuted|| /\n||mean unpermuted||")
    shared_legend(fig, [ax], ncol=2)
    return fig


def plot_rewind_over_seeds(long: pd.DataFrame, quantity: str = "gap_recovered"):
    """Each rewind to the early-stopping epoch (single layer, and from that layer to the output)
    against its parameter-matched random control: mean over seeds with 95 % interval (error bars),
    every seed as a dot."""
    modes = ("single", "cumulative")
    fig, axes = figure(1, 2, panel_height=2.8, sharey=True)
    for ax, mode in zip(axes, modes):
        d = long[long["mode"] == mode]
        order = d.drop_duplicates("layer").sort_values("layer_index")
        x = {l: i for i, l in enumerate(order["layer"])}
        for col, color, dx, label in ((quantity, "tab:blue", -0.12, "rewound"),
                                      (f"{quantity}_matched", "tab:orange", 0.12, "random weights, same count")):
            b = intervals_by(d, ["layer"], col)
            xs = np.array([x[l] for l in b["layer"]]) + dx
            ax.plot(np.array([x[l] for l in d["layer"]]) + dx, d[col], "o", color=color, alpha=0.35, ms=3)
            ax.errorbar(xs, b["mean"], yerr=[b["mean"] - b["lo"], b["hi"] - b["mean"]], fmt="s", color=color,
                        capsize=3, label=f"{label}: mean, 95 % interval")
        ax.axhline(0, color="grey", lw=0.8, ls=":")
        ax.set_xticks(range(len(order)), [f"{l}{' →' if mode == 'cumulative' else ''}" for l in order["layer"]],
                      fontsize=8)
        ax.set_title(f"{mode} rewind")
    axes[0].set_ylabel(quantity.replace("_", " "))
    axes[0].plot([], [], "o", color="k", alpha=0.35, ms=3, label="one seed")
    shared_legend(fig, [axes[0]], ncol=2)
    return fig
