"""Figures of the double-descent section: train and test error against width, and the geometry of
the last layers against width (tables from `memgeo.sweep`)."""
from __future__ import annotations

import pandas as pd

from ..plots import TYPE_COLORS, figure, shared_legend


def plot_errors(long: pd.DataFrame, widths: pd.DataFrame, threshold):
    """Train error (against the training labels) and final test error (whole test split) against
    width: every seed as a faint line, the mean over seeds with its 95 % interval as a band, and
    the interpolation threshold (None: no width reaches it). `long`, `widths`: from
    `sweep.sweep_table` over seeds and `sweep.width_summary`."""
    fig, ax = figure(1, 1, height=3.6)
    for seed, d in long.groupby("seed"):
        d = d.sort_values("width")
        ax.plot(d["width"], d["train_error"], "-", color="C0", alpha=0.3, lw=0.8)
        ax.plot(d["width"], d["test_error"], "-", color="C1", alpha=0.3, lw=0.8)
    ax.plot(widths["width"], widths["train_error"], "o-", color="C0", label="train error (vs training labels), mean")
    ax.plot(widths["width"], widths["test_error"], "o-", color="C1", label="test error (end of training), mean")
    ax.fill_between(widths["width"], widths["test_lo"], widths["test_hi"], color="C1", alpha=0.2,
                    label="test error, 95 % interval over seeds")
    table = widths
    if threshold is not None:
        ax.axvline(threshold, color="k", ls="--", lw=1, label=f"interpolation threshold (width {threshold})")
    ax.set_xscale("log", base=2)
    ax.set_xticks(table["width"])
    ax.set_xticklabels(table["width"])
    ax.set_xlabel("width (channels of the first conv block)")
    ax.set_ylabel("error")
    shared_legend(fig, [ax], ncol=2)
    return fig


def plot_geometry(geo: pd.DataFrame, threshold):
    """Capacity, radius and dimension of every manifold type at the end of training, in the
    logits (top) and the last hidden block (bottom), against width (`sweep.sweep_geometry`)."""
    fig, axes = figure(2, 3, panel_height=2.1, sharex=True)
    for row, pos in enumerate(["last", "last-1"]):
        d = geo[geo["position"] == pos]
        for col, q in enumerate(["capacity", "radius", "dimension"]):
            ax = axes[row, col]
            for kind, dk in d.groupby("type"):
                dk = dk.sort_values("width")
                ax.plot(dk["width"], dk[q], "o-", ms=3, color=TYPE_COLORS[kind], label=kind)
            if threshold is not None:
                ax.axvline(threshold, color="k", ls="--", lw=1)
            ax.set_xscale("log", base=2)
            ax.set_title(f"{q}, {'logits' if pos == 'last' else 'last hidden'}", fontsize=9.5)
            if q == "capacity":
                ax.set_yscale("log")
    for ax in axes[1]:
        ax.set_xlabel("width")
    shared_legend(fig, axes, ncol=4)
    return fig


def plot_neighbours(neighbours: pd.DataFrame):
    """Paired difference of test error between neighbouring widths (wider minus narrower), mean
    over seeds with its 95 % interval (`sweep.neighbour_differences`): above 0, the wider is worse."""
    fig, ax = figure(1, 1, height=3.0)
    x = range(len(neighbours))
    mean = neighbours["difference"]
    ax.errorbar(list(x), mean, yerr=[mean - neighbours["lo"], neighbours["hi"] - mean], fmt="o", capsize=3)
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xticks(list(x))
    ax.set_xticklabels([f"{a}\u2192{b}" for a, b in zip(neighbours["narrower"], neighbours["wider"])])
    ax.set_xlabel("widths compared (narrower \u2192 wider)")
    ax.set_ylabel("test error difference")
    return fig
