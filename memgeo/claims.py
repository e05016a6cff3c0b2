"""The paper's claims and how each is decided: one place for every rule, threshold and verdict.

A claim has one or more *parts*. A part names a statistic that every training seed measures (the
section reports put it in `Report.stats`), a side and a threshold taken from `config.Thresholds`:

- side ">" : the claim needs the statistic above the threshold; "<": below it;
  "within": inside [threshold - tol, threshold + tol].

Over the seeds a part gets a mean and a 95 % confidence interval for that mean (Student t with
n - 1 degrees of freedom over the per-seed values; seeds whose statistic is undefined, nan, are
left out and the count says so). The part is

- **reproduced** when the whole interval lies on the claim's side of the threshold,
- **not reproduced** when the whole interval lies on the other side,
- **inconclusive at this scale** otherwise (the interval contains the threshold, or fewer than two
  seeds measured it).

A claim is reproduced when every part is, not reproduced when at least one part is, and
inconclusive otherwise. There is no "partly".

The per-seed statistics are gathered by the introduction's report (every section report once per
training seed of `Preset.seeds`, all cached); `part_table` decides every part and claim from
them, `claim_table` makes the introduction's table. This module imports nothing of
memgeo but the configuration.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np
import pandas as pd
from scipy import stats as st

from .config import Thresholds

REPRODUCED, NOT, INCONCLUSIVE = "reproduced", "not reproduced", "inconclusive at this scale"
VERDICTS = (REPRODUCED, NOT, INCONCLUSIVE)
LEVEL = 0.95


@dataclass(frozen=True)
class Part:
    """One testable part of a claim: `stat` on the claim's `side` of `threshold(thresholds)`."""

    stat: str
    side: str                                   # ">", "<" or "within"
    threshold: Callable[[Thresholds], float]
    label: str                                  # what the statistic is, for the table
    tol: Callable[[Thresholds], float] | None = None    # half-width for side "within"

    def bounds(self, th: Thresholds) -> tuple[float, float]:
        t = float(self.threshold(th))
        if self.side == "within":
            d = float(self.tol(th))
            return t - d, t + d
        return t, t

    def rule_text(self, th: Thresholds) -> str:
        lo, hi = self.bounds(th)
        if self.side == "within":
            return f"in [{lo:.3g}, {hi:.3g}]"
        return f"{self.side} {lo:.3g}"


@dataclass(frozen=True)
class Claim:
    key: str
    statement: str
    section: str
    parts: tuple[Part, ...]


def _c(attr: str, scale: float = 1.0, offset: float = 0.0) -> Callable[[Thresholds], float]:
    return lambda th: offset + scale * getattr(th, attr)


ZERO = lambda th: 0.0       # noqa: E731  (a difference that must be positive)
ONE = lambda th: 1.0        # noqa: E731  (a ratio that must fall: only beyond the spread over seeds)

#: Every claim of the book, in the introduction's order.
CLAIMS: tuple[Claim, ...] = (
    Claim("first_learning", "1. All layers first learn the shared features (generalization comes first)", "layers", (
        Part("fitted_gap_early", ">", _c("fitted_gap"),
             "unpermuted fitted minus permuted memorized, at early stopping"),
        Part("test_capacity_rise_min", ">", _c("change", 1.0, 1.0),
             "smallest rise of test-manifold capacity, init to early stopping (x), over trained layers"))),
    Claim("late_deep", "2a. Memorization happens late and in the deep layers", "layers", (
        Part("perm_ratio_last_hidden", ">", _c("change", 1.0, 1.0),
             "permuted capacity, end / early stopping, last hidden layer"),
        Part("perm_ratio_last_over_first", ">", _c("change", 1.0, 1.0),
             "that ratio over the first third's"))),
    Claim("restored_lost", "2b. Deep layers lose the true class of mislabelled images; early layers keep it", "layers", (
        Part("rest_ratio_last_hidden", "<", _c("change", -1.0, 1.0),
             "restored capacity, end / early stopping, last hidden layer"),
        Part("rest_ratio_first", ">", _c("change", -1.0, 1.0),
             "restored capacity, end / early stopping, first third"))),
    Claim("radius_dimension", "2c. Memorization works through shrinking radius and dimension", "layers", (
        Part("radius_ratio_last_hidden", "<", ONE, "permuted radius, end / early stopping, last hidden layer"),
        Part("dimension_ratio_last_hidden", "<", ONE, "permuted dimension, end / early stopping, last hidden layer"))),
    Claim("rewind", "3. Rewinding the final layers to before memorization restores generalization", "rewind", (
        Part("rewind_late_fraction", ">", _c("recovered"),
             "test-accuracy gap recovered, best cumulative rewind of late layers"),
        Part("rewind_early_fraction", "<", _c("recovered"), "the same, best single early layer"),
        Part("rewind_late_minus_matched", ">", ZERO,
             "late rewind minus a random rewind of as many parameters"))),
    Claim("maini", "(Maini et al.) The layers critical to memorization are not only the final ones", "rewind", (
        Part("maini_nonfinal_removed", ">", _c("recovered"),
             "memorization removed by the best single non-final layer rewound alone"),
        Part("maini_nonfinal_minus_matched", ">", ZERO,
             "that layer minus a random rewind of as many parameters"))),
    Claim("double_descent", "4. Model-wise double descent at the interpolation threshold", "double_descent", (
        Part("dd_peak_minus_widest", ">", ZERO,
             "test error at the interpolation threshold minus the widest model's (paired)"),
        Part("dd_peak_minus_narrower", ">", ZERO,
             "test error at the threshold minus the best narrower width's (paired)"))),
    Claim("gradients", "5. Near initialization the permuted examples' (label) gradient is small, and grows "
          "during memorization", "gradients", (
        Part("gradient_ratio_init", "<", _c("gradient_small"),
             "permuted / unpermuted label-dependent gradient at initialization"),
        Part("gradient_growth", ">", _c("gradient_growth"),
             "that ratio, memorization phase / learning phase"),
        Part("gradient_slope_permuted", "within", lambda th: -0.5,
             "scaling slope of the permuted group's mean gradient with n", _c("gradient_slope_tol")))),
    Claim("simulated", "(Fig. 1B) Mean-field capacity matches simulated capacity (beyond finite-P effects)", "layers", (
        Part("sim_excess_dev", "<", _c("simulated_close"),
             "median |relative deviation| of real layers minus a synthetic control's at the same P, M"),)),
)

BY_KEY = {c.key: c for c in CLAIMS}


# ---------------------------------------------------------------------------------------------
# Intervals and rules

def t_quantile(n: int, level: float = LEVEL) -> float:
    """How many standard errors the `level` interval of a mean of n values reaches either side."""
    return float(st.t.ppf(0.5 + level / 2, n - 1)) if n >= 2 else math.nan


def interval(values: Iterable[float], level: float = LEVEL) -> dict:
    """Mean and the `level` Student-t confidence interval of the mean over the finite values."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=float)
    n = len(v)
    if n == 0:
        return {"n": 0, "mean": math.nan, "lo": math.nan, "hi": math.nan}
    mean = float(v.mean())
    if n < 2:
        return {"n": 1, "mean": mean, "lo": math.nan, "hi": math.nan}
    half = t_quantile(n, level) * float(v.std(ddof=1)) / math.sqrt(n)
    return {"n": n, "mean": mean, "lo": mean - half, "hi": mean + half}


def intervals_by(long: pd.DataFrame, by: Iterable[str], value: str) -> pd.DataFrame:
    """Mean of `value` over seeds for each group of `by`, with its 95 % Student-t interval:
    columns `by` + mean, lo, hi, n (n: seeds with a finite value; lo = hi = nan when n < 2)."""
    by = list(by)
    rows = [{**dict(zip(by, key if isinstance(key, tuple) else (key,))), **interval(d[value])}
            for key, d in long.groupby(by, sort=False)]
    return pd.DataFrame(rows, columns=by + ["n", "mean", "lo", "hi"])


def decide_part(lo: float, hi: float, side: str, bounds: tuple[float, float]) -> str:
    """The verdict of one part from its interval [lo, hi] (nan: inconclusive)."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return INCONCLUSIVE
    b_lo, b_hi = bounds
    if side == ">":
        return REPRODUCED if lo > b_hi else NOT if hi < b_lo else INCONCLUSIVE
    if side == "<":
        return REPRODUCED if hi < b_lo else NOT if lo > b_hi else INCONCLUSIVE
    if side == "within":
        return REPRODUCED if b_lo < lo and hi < b_hi else NOT if hi < b_lo or lo > b_hi else INCONCLUSIVE
    raise ValueError(f"unknown side {side!r}: use '>', '<' or 'within'")


def combine(verdicts: Iterable[str]) -> str:
    """A claim's verdict from its parts': reproduced if all are, not if any is, else inconclusive."""
    verdicts = list(verdicts)
    if verdicts and all(v == REPRODUCED for v in verdicts):
        return REPRODUCED
    return NOT if NOT in verdicts else INCONCLUSIVE


def part_table(stats: pd.DataFrame, thresholds: Thresholds, claims: Iterable[Claim] = CLAIMS) -> pd.DataFrame:
    """One row per claim part: n seeds, mean, 95 % interval, rule, part verdict and claim verdict.

    `stats`: one row per training seed (column "seed"), one column per statistic; a statistic
    missing from it counts as unmeasured (inconclusive)."""
    rows = []
    for claim in claims:
        part_rows = []
        for part in claim.parts:
            values = stats[part.stat].tolist() if part.stat in stats else []
            iv = interval(values)
            bounds = part.bounds(thresholds)
            part_rows.append({"claim": claim.key, "statement": claim.statement, "section": claim.section,
                              "statistic": part.stat, "label": part.label, **iv,
                              "rule": part.rule_text(thresholds), "bound_lo": bounds[0], "bound_hi": bounds[1],
                              "side": part.side,
                              "part_verdict": decide_part(iv["lo"], iv["hi"], part.side, bounds)})
        verdict = combine(r["part_verdict"] for r in part_rows)
        rows += [{**r, "verdict": verdict} for r in part_rows]
    return pd.DataFrame(rows)


def fmt_interval(mean: float, lo: float, hi: float) -> str:
    """"0.12 [0.08, 0.16]" (3 significant digits), or "nan" parts as n/a."""
    def f(x):
        return "n/a" if not math.isfinite(x) else f"{x:.3g}"
    return f"{f(mean)} [{f(lo)}, {f(hi)}]"


def claim_table(parts: pd.DataFrame) -> pd.DataFrame:
    """The introduction's table: one row per claim with, for each part, the statistic's mean and
    95 % interval over seeds and its rule; the seeds counted; the verdict."""
    rows = []
    for key, d in parts.groupby("claim", sort=False):
        rows.append({
            "claim": d["statement"].iloc[0],
            "seeds": int(d["n"].min()) if d["n"].min() == d["n"].max() else f"{d['n'].min()}-{d['n'].max()}",
            "measured (mean [95% CI])": "; ".join(f"{r.label}: {fmt_interval(r.mean, r.lo, r.hi)}"
                                                   for r in d.itertuples()),
            "threshold": "; ".join(r.rule for r in d.itertuples()),
            "verdict": d["verdict"].iloc[0], "section": d["section"].iloc[0]})
    return pd.DataFrame(rows)
