"""The methods page's checks of `memgeo.geometry` against results known exactly: capacities of
points, segments, simplices, balls and inscribed polygons, and simulated against mean-field
capacity on synthetic manifolds. Synthetic data only (no dataset, no model), so the numbers are the
same for every preset at the same sizes (`config.ChecksConfig`); the two tables are kept in the
result cache under ``<runs>/cache/``.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from . import geometry as G
from .cache import cached_table

CHECKS_VERSION = 1      # bump when the same settings give other numbers (the seeds below are part of it)
KAPPAS = (0.0, 0.5, 1.0, 2.0)
RADII = (0.5, 1.0, 2.0, 10.0)
SIMPLICES = (3, 10, 50)
POLYGONS = (4, 8, 32)


def exact_checks(n_t: int) -> pd.DataFrame:
    """memgeo's capacity of points (against the margin), segments and regular simplices beside the
    exact values (cached)."""
    def compute():
        rows = []
        # Points (M = 1): alpha_0(kappa) = 1 / [(1 + k^2) Phi(k) + k phi(k)]
        for k in KAPPAS:
            est = G.capacity_from_points(np.array([[0.0], [1.0]]), kappa=k, n_t=n_t, seed=1)["capacity_total"]
            rows.append({"object": f"point, kappa={k}", "exact": G.alpha_points(k), "memgeo": est})
        # Segments (D = 1, half-length R): 1 / (1/2 + (2/pi) arctan R)
        for R in RADII:
            S = np.array([[R, -R], [1.0, 1.0]])
            rows.append({"object": f"segment, R={R}", "exact": G.alpha_segment(R),
                         "memgeo": G.capacity_from_points(S, n_t=n_t, seed=2)["capacity_total"]})
        # Regular simplices of m points: 2/m
        for m in SIMPLICES:
            rows.append({"object": f"simplex, m={m}", "exact": 2 / m,
                         "memgeo": G.capacity_from_points(G.simplex_points(m), n_t=n_t, seed=3)["capacity_total"]})
        return pd.DataFrame(rows)

    return cached_table("methods-exact", {"n_t": n_t}, compute, seed=None, version=CHECKS_VERSION)


def exact_curves(n_t: int) -> dict:
    """The figure's curves (not cached): points against kappa and segments against R (exact and
    memgeo), and balls with inscribed polygons evaluated on the same T vectors (seeds 4, 5, 6)."""
    ks = np.linspace(0, 2, 9)
    Rs = np.geomspace(0.1, 10, 9)
    out = {"kappa": ks, "R": Rs,
           "points_exact": [G.alpha_points(k) for k in ks],
           "points_memgeo": [G.capacity_from_points(np.array([[0.0], [1.0]]), kappa=k, n_t=n_t, seed=4)["capacity_total"]
                             for k in ks],
           "segments_exact": [G.alpha_segment(R) for R in Rs],
           "segments_memgeo": [G.capacity_from_points(np.array([[R, -R], [1.0, 1.0]]), n_t=n_t, seed=5)["capacity_total"]
                               for R in Rs]}
    # Balls: exact per-T F; polygons inscribed in the disk (D = 2) approach it from above.
    T = np.random.default_rng(6).standard_normal((n_t, 3))
    out["balls_exact"] = {D: [G.alpha_ball(R, D) for R in Rs] for D in (2, 5, 10)}
    poly = {}
    for m in POLYGONS:
        ang = 2 * np.pi * np.arange(m) / m
        vals = []
        for R in Rs:
            S = np.vstack([R * np.cos(ang), R * np.sin(ang), np.ones(m)])
            vals.append(G.capacity_from_points(S, T=T)["capacity_total"])
        poly[m] = vals
    out["polygons"] = poly
    out["disk"] = [1 / np.mean(G.f_ball(T, R)) for R in Rs]
    return out


def polygon_numbers(curves: dict) -> dict:
    """Whether no inscribed polygon's capacity falls below the disk's, and the 32-gon's largest gap."""
    poly = np.array([curves["polygons"][m] for m in POLYGONS])
    disk = np.array(curves["disk"])
    return {"polygon_never_below": bool(np.all(poly >= disk * (1 - 1e-9))),
            "polygon32_gap": float(np.max(poly[-1] / disk - 1))}


def simulated_checks(n_dichotomies: int) -> pd.DataFrame:
    """Simulated capacity of random points (exact: 2) and of Gaussian clouds around random centers
    beside their mean-field capacity (cached)."""
    def compute():
        rng = np.random.default_rng(0)
        pts = [rng.standard_normal((1, 60)) for _ in range(40)]
        sp = G.simulated_capacity(pts, n_dichotomies=n_dichotomies, seed=0, center=False)
        rows = [{"P": 40, "M": 1, "spread": 0.0, "mean-field": 2.0, "simulated": sp.capacity,
                 "sim. error": sp.capacity_err}]
        for P, M, spread in ((10, 20, 0.5), (10, 20, 1.5), (16, 10, 1.0)):
            centers = rng.standard_normal((P, 400))
            mans = [c + spread * rng.standard_normal((M, 400)) / math.sqrt(M) for c in centers]
            mf = G.analyze(mans, n_t=400, seed=0)
            sim = G.simulated_capacity(mans, n_dichotomies=n_dichotomies, seed=0, remove_center_subspace=True)
            rows.append({"P": P, "M": M, "spread": spread, "mean-field": mf.capacity, "simulated": sim.capacity,
                         "sim. error": sim.capacity_err})
        return pd.DataFrame(rows)

    return cached_table("methods-simulated", {"n_dichotomies": n_dichotomies}, compute, seed=0,
                        version=CHECKS_VERSION)
