"""Figure of the methods page: memgeo's capacity against exact results (curves from
`memgeo.checks.exact_curves`)."""
from __future__ import annotations

from ..checks import POLYGONS
from ..plots import figure


def plot_exact(curves: dict):
    """Points against the margin kappa, segments against the radius, and balls (exact) with
    polygons inscribed in the disk evaluated on the same T vectors."""
    fig, panels = figure(mosaic=[["points", "segments"], ["balls", "balls"]], panel_height=2.5)
    axes = [panels["points"], panels["segments"], panels["balls"]]
    ks, Rs = curves["kappa"], curves["R"]
    axes[0].plot(ks, curves["points_exact"], "k-", label="exact")
    axes[0].plot(ks, curves["points_memgeo"], "o", label="memgeo")
    axes[0].set(xlabel="margin kappa", ylabel="capacity", title="points")
    axes[1].plot(Rs, curves["segments_exact"], "k-", label="exact")
    axes[1].plot(Rs, curves["segments_memgeo"], "o", label="memgeo")
    axes[1].set(xscale="log", xlabel="radius R", title="segments (D = 1)")
    for D, c in ((2, "C0"), (5, "C1"), (10, "C2")):
        axes[2].plot(Rs, curves["balls_exact"][D], "-", color=c, label=f"ball D={D} (exact)")
    for m in POLYGONS:
        axes[2].plot(Rs, curves["polygons"][m], "o", ms=3, label=f"{m}-gon in the disk", alpha=0.7)
    axes[2].set(xscale="log", yscale="log", xlabel="radius R", title="balls and inscribed polygons")
    axes[0].legend()
    axes[1].legend()
    axes[2].legend(loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=3)
    return fig
