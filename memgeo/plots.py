"""Figures shared by the book's notebooks (matplotlib only; every function returns the figure)."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

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
    fig, axes = plt.subplots(len(kinds), per_type, figsize=(1.4 * per_type, 1.75 * len(kinds)))
    names = data.classes
    for r, kind in enumerate(kinds):
        # one example from each of the first `per_type` manifolds
        for c in range(per_type):
            ax = axes[r, c]
            ax.axis("off")
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
            ax.set_title(shown, fontsize=7)
        axes[r, 0].text(-0.15, 0.5, f"{kind}\n(by {'true' if kind in ('restored', 'test', 'unpermuted') else 'training'} label)",
                        transform=axes[r, 0].transAxes, ha="right", va="center", fontsize=8)
    fig.tight_layout()
    return fig


def accuracy_curves(metrics: pd.DataFrame, early_stop: int, ax=None, title=None):
    """Accuracies over epochs with the early-stopping epoch marked."""
    if ax is None:
        fig, ax = plt.subplots(figsize=(6.5, 3.6))
    fig = ax.figure
    for col, label in ACCURACY_LABELS.items():
        ax.plot(metrics["epoch"], metrics[col], label=label)
    ax.axvline(early_stop, color="k", ls="--", lw=1, label=f"early stop (epoch {early_stop})")
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=7, loc="center right")
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def geometry_vs_layer(summary: pd.DataFrame, quantity: str, early_stop: int | None = None,
                      types=("unpermuted", "permuted", "restored", "test"), logy: bool = False):
    """One panel per manifold type; one curve per analysed epoch (colour = epoch, early stop dashed)."""
    epochs = sorted(summary["epoch"].unique())
    layers = summary.sort_values("depth").drop_duplicates("layer")["layer"].tolist()
    cmap = plt.get_cmap("viridis")
    fig, axes = plt.subplots(1, len(types), figsize=(3.2 * len(types), 3.0), sharey=True)
    for ax, kind in zip(np.atleast_1d(axes), types):
        d = summary[summary["type"] == kind]
        for j, e in enumerate(epochs):
            de = d[d["epoch"] == e].sort_values("depth")
            ax.plot(de["depth"], de[quantity], marker="o", ms=3, color=cmap(j / max(1, len(epochs) - 1)),
                    ls="--" if e == early_stop else "-", label=f"epoch {e}" + (" (early stop)" if e == early_stop else ""))
        ax.set_title(kind, color=TYPE_COLORS.get(kind, "k"))
        ax.set_xticks(range(len(layers)))
        ax.set_xticklabels(layers, rotation=60, fontsize=7)
        if logy:
            ax.set_yscale("log")
    np.atleast_1d(axes)[0].set_ylabel(quantity.replace("_", " "))
    np.atleast_1d(axes)[-1].legend(fontsize=6, loc="best")
    fig.tight_layout()
    return fig


def simulated_vs_meanfield(df: pd.DataFrame):
    """Fig. 1B analogue: simulated capacity (with its error) against mean-field capacity."""
    fig, ax = plt.subplots(figsize=(4.2, 4.0))
    for kind, d in df.groupby("type"):
        ax.errorbar(d["capacity_meanfield"], d["capacity_simulated"], yerr=d["capacity_simulated_err"],
                    fmt="o", ms=4, color=TYPE_COLORS.get(kind, "k"), label=kind, alpha=0.8)
    lo = min(df["capacity_meanfield"].min(), df["capacity_simulated"].min()) * 0.8
    hi = max(df["capacity_meanfield"].max(), df["capacity_simulated"].max()) * 1.2
    ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="identity")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("mean-field capacity")
    ax.set_ylabel("simulated capacity")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
