"""The book's figure style (matplotlib only), used by every figure of the book.

Every figure of the book is drawn at the width of its text column (`FIG_WIDTH` inches at
`FIG_DPI`, about 670-780 pixels on screen, so one inch of figure is about 100 screen pixels) with
the font sizes of `BOOK_RC`; `figure` makes such a figure with constrained layout, and
`shared_legend` puts one legend under all panels. The figures themselves are in
`memgeo.plotting`, one module per section; `TYPE_COLORS` and `ACCURACY_LABELS` are the colours and
labels they share.
"""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

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
