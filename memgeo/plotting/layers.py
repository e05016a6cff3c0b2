"""Figures of the layers section: the manifolds' example images (Fig. 1A), accuracies over
training, geometry against layer per epoch (Figs. 2-3) and simulated against mean-field capacity
(Fig. 1B)."""
from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd

from ..plots import ACCURACY_LABELS, TYPE_COLORS, figure, shared_legend


def manifold_examples(data, mset, per_type: int = 6, classes=None):
    """Fig. 1A analogue: example images of each manifold type with training and analysis labels."""
    kinds = list(mset.index)
    fig, axes = figure(len(kinds), per_type, height=1.3 * len(kinds) + 0.2, squeeze=False)
    names = data.classes
    for r, kind in enumerate(kinds):
        # one example from each of the first `per_type` manifolds
        for c in range(per_type):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if c >= len(mset.classes):
                continue
            i = int(mset.index[kind][c][0])
            if kind == "test":
                img, shown = data.x_test[i], f"label {names[int(data.y_test[i])]}"
            else:
                img = data.x_train[i]
                tr, tl = names[int(data.train_label[i])], names[int(data.true_label[i])]
                shown = f"train: {tr}\ntrue: {tl}"
            ax.imshow(img.cpu().permute(1, 2, 0).numpy())
            ax.set_title(shown, fontsize=8)
        by = "true" if kind in ("restored", "test", "unpermuted") else "training"
        axes[r, 0].set_ylabel(f"{kind}\n(by {by} label)", fontsize=9.5, color=TYPE_COLORS.get(kind, "k"))
    return fig


def accuracy_curves(metrics: pd.DataFrame, early_stop: int, ax=None, title=None):
    """Accuracies over epochs with the early-stopping epoch marked (legend below the axes)."""
    if ax is None:
        fig, ax = figure(1, 1, height=3.6)
    fig = ax.figure
    for col, label in ACCURACY_LABELS.items():
        ax.plot(metrics["epoch"], metrics[col], label=label)
    ax.axvline(early_stop, color="k", ls="--", lw=1, label=f"early stop (epoch {early_stop})")
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.02)
    shared_legend(fig, [ax], ncol=2)
    if title:
        ax.set_title(title)
    return fig


def geometry_vs_layer(summary: pd.DataFrame, quantity: str, early_stop: int | None = None,
                      types=("unpermuted", "permuted", "restored", "test"), logy: bool = False):
    """One panel per manifold type (two per row); one curve per analysed epoch (colour = epoch,
    early stop dashed); one legend of epochs below the panels."""
    epochs = sorted(summary["epoch"].unique())
    layers = summary.sort_values("depth").drop_duplicates("layer")["layer"].tolist()
    cmap = plt.get_cmap("viridis")
    ncols = min(2, len(types))
    nrows = -(-len(types) // ncols)
    fig, axes = figure(nrows, ncols, panel_height=2.35, sharex=True, sharey=True, squeeze=False)
    for ax, kind in zip(axes.ravel(), types):
        d = summary[summary["type"] == kind]
        for j, e in enumerate(epochs):
            de = d[d["epoch"] == e].sort_values("depth")
            ax.plot(de["depth"], de[quantity], marker="o", ms=3.5, color=cmap(j / max(1, len(epochs) - 1)),
                    ls="--" if e == early_stop else "-", label=f"epoch {e}" + (" (early stop)" if e == early_stop else ""))
        ax.set_title(kind, color=TYPE_COLORS.get(kind, "k"))
        ax.set_xticks(range(len(layers)))
        ax.set_xticklabels(layers, rotation=45, ha="right", rotation_mode="anchor")
        if logy:
            ax.set_yscale("log")
    for ax in axes.ravel()[len(types):]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_ylabel(quantity.replace("_", " "))
    shared_legend(fig, axes, ncol=min(len(epochs), 4))
    return fig


def simulated_vs_meanfield(df: pd.DataFrame, control: pd.DataFrame | None = None):
    """Fig. 1B analogue, two panels. Left: simulated capacity (with its error) against mean-field
    capacity, one point per retained distinct layer/epoch (rows of `probe.sim_rows`; rows without
    a `retained` column all count). Right: the signed relative deviation (simulated - mean-field) /
    mean-field against the residual center correlation (after the center subspace is removed),
    with the synthetic control's draws (`probe.synthetic_control`, marker size growing with P)."""
    d = df[df["retained"]] if "retained" in df else df
    fig, (ax, ax2) = figure(1, 2, height=3.6, squeeze=True)
    for kind, dk in d.groupby("type"):
        ax.errorbar(dk["capacity_meanfield"], dk["capacity_simulated"], yerr=dk["capacity_simulated_err"],
                    fmt="o", ms=4.5, color=TYPE_COLORS.get(kind, "k"), label=f"{kind} (layers)", alpha=0.8)
        dev = (dk["capacity_simulated"] - dk["capacity_meanfield"]) / dk["capacity_meanfield"]
        ax2.plot(dk["residual_correlation"], dev, "o", ms=4.5, color=TYPE_COLORS.get(kind, "k"), alpha=0.8)
        for (x, y, name) in zip(dk["residual_correlation"], dev, dk["layer"]):
            ax2.annotate(name, (x, y), fontsize=6, xytext=(2, 2), textcoords="offset points")
    if len(d):
        vals = pd.concat([d["capacity_meanfield"], d["capacity_simulated"]])
        lo, hi = vals.min() * 0.8, vals.max() * 1.2
        ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="identity")
        ax.set_xscale("log")
        ax.set_yscale("log")
    ax.set_xlabel("mean-field capacity")
    ax.set_ylabel("simulated capacity")
    if control is not None and len(control):
        for j, (P, c) in enumerate(control.groupby("P")):
            ax2.plot(c["residual_correlation"], c["deviation"], marker="s", ls="none", ms=3 + 1.5 * j,
                     mfc="none", color="tab:purple", label=f"synthetic, P = {P}")
    ax2.axhline(0.0, color="k", lw=1, ls="--")
    ax2.set_xlabel("residual center correlation")
    ax2.set_ylabel("(simulated - mean-field) / mean-field")
    shared_legend(fig, [ax, ax2], ncol=3)
    return fig
