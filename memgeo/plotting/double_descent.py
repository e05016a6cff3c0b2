"""Figures of the double-descent section: train and test error against width, and the geometry of
the last layers against width (tables from `memgeo.sweep`)."""
from __future__ import annotations

import pandas as pd

from ..plots import TYPE_COLORS, figure, shared_legend


def plot_errors(table: pd.DataFrame, threshold):
    """Train error (against the training labels), final and best test error against width, with
    the interpolation threshold (None: no width reaches it)."""
    fig, ax = figure(1, 1, height=3.6)
    ax.plot(table["width"], table["train_error"], "o-", label="train error (vs training labels)")
    ax.plot(table["width"], table["test_error"], "o-", label="test error (end of training)")
    ax.plot(table["width"], table["best_test_error"], "o:", color="gray", label="test error (best epoch)")
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
