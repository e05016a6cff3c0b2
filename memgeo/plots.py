"""Figures shared by the book's notebooks (matplotlib only; every function returns the figure).

Every figure of the book is drawn at the width of its text column (`FIG_WIDTH` inches at
`FIG_DPI`, about 670-780 pixels on screen, so one inch of figure is about 100 screen pixels) with
the font sizes of `BOOK_RC`; `figure` makes such a figure with constrained layout, and
`shared_legend` puts one legend under all panels. The sections' own plotting functions
(`memgeo.rewind`, `memgeo.gradients`) and notebook cells use the same two helpers.
"""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

#: Width of the book's text column in inches; figures are drawn at this width.
FIG_WIDTH = 7.0
#: Resolution of the saved PNGs: 1050 pixels wide, shown at 670-780 (sharp on high-DPI screens).
FIG_DPI = 150
#: Font sizes chosen for a figure shown at the column width (10 pt is about 13-15 screen pixels).
BOOK_RC = {
    "figure.dpi": FIG_DPI,
    "savefig.dpi": FIG_DPI,
    "font.size": 10.5,
    "axes.titlesize": 11,
    "axes.labelsize": 10.5,
    "xtick.labelsize": 9.5,
    "ytick.labelsize": 9.5,
    "legend.fontsize": 9.5,
    "legend.title_fontsize": 9.5,
    "figure.titlesize": 11.5,
    "lines.linewidth": 1.6,
    "lines.markersize": 4.5,
    "legend.frameon": False,
}


def use_book_style() -> None:
    """Apply the book's figure style (font sizes, resolution) to matplotlib's global settings."""
    plt.rcParams.update(BOOK_RC)


def figure(nrows: int = 1, ncols: int = 1, *, panel_height: float = 2.4, height: float | None = None,
           width: float = FIG_WIDTH, mosaic=None, **subplots_kw):
    """A figure as wide as the book's text column with `nrows` x `ncols` panels (constrained layout).

    `panel_height` (inches) sets the height per row unless `height` gives the whole figure's.
    Returns (fig, axes) as `plt.subplots` does (a single Axes for 1 x 1 unless squeeze=False);
    with `mosaic` (see `Figure.subplot_mosaic`), (fig, dict of axes by name)."""
    use_book_style()
    if mosaic is not None:
        nrows = len(mosaic)
    h = height if height is not None else panel_height * nrows + 0.4
    if mosaic is not None:
        fig = plt.figure(figsize=(width, h), dpi=FIG_DPI, layout="constrained")
        return fig, fig.subplot_mosaic(mosaic, **subplots_kw)
    return plt.subplots(nrows, ncols, figsize=(width, h), dpi=FIG_DPI, layout="constrained", **subplots_kw)


def shared_legend(fig, axes=None, *, ncol: int | None = None, title: str | None = None, loc: str = "lower"):
    """One legend for every panel, outside them (below by default, `loc="upper"` above): the
    handles of all `axes` (default: the figure's), each label once."""
    axes = np.atleast_1d(fig.axes if axes is None else axes).ravel()
    handles, labels = [], []
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels and not lab.startswith("_"):
                handles.append(h)
                labels.append(lab)
    for ax in axes:
        if ax.get_legend() is not None:
            ax.get_legend().remove()
    if ncol is None:
        ncol = min(len(labels), 4) or 1
    return fig.legend(handles, labels, loc=f"outside {loc} center", ncol=ncol, title=title)


TYPE_COLORS = {"unpermuted": "tab:blue", "permuted": "tab:red", "restored": "tab:green", "test": "tab:gray"}
ACCURACY_LABELS = {
    "acc_unpermuted": "unpermuted (train)",
    "acc_permuted_train": "permuted vs training label (memorization)",
    "acc_permuted_true": "permuted vs true label (restored)",
    "acc_test": "test",
}


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


def simulated_vs_meanfield(df: pd.DataFrame):
    """Fig. 1B analogue: simulated capacity (with its error) against mean-field capacity."""
    fig, ax = figure(1, 1, width=4.8, height=4.4)
    for kind, d in df.groupby("type"):
        ax.errorbar(d["capacity_meanfield"], d["capacity_simulated"], yerr=d["capacity_simulated_err"],
                    fmt="o", ms=4.5, color=TYPE_COLORS.get(kind, "k"), label=kind, alpha=0.8)
    lo = min(df["capacity_meanfield"].min(), df["capacity_simulated"].min()) * 0.8
    hi = max(df["capacity_meanfield"].max(), df["capacity_simulated"].max()) * 1.2
    ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="identity")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("mean-field capacity")
    ax.set_ylabel("simulated capacity")
    ax.legend()
    return fig
