"""The introduction's claim table: every claim of `memgeo.claims.CLAIMS`, decided on the 95 %
intervals over training seeds of the statistics the section reports measure (the same numbers and
rules as the sections' pages)."""
from __future__ import annotations

from typing import Iterable

import pandas as pd

from ..claims import CLAIMS, INCONCLUSIVE, NOT, REPRODUCED, claim_table, part_table, t_quantile
from ..config import Preset
from .double_descent import double_descent_report
from .gradients import gradients_report
from .layers import layers_report
from .rewind import rewind_report

PER_SEED = {"layers": layers_report, "rewind": rewind_report, "gradients": gradients_report}
SECTIONS = ("layers", "rewind", "double_descent", "gradients")


def stats_over_seeds(p: Preset, sections: Iterable[str] = SECTIONS, progress: bool = False) -> pd.DataFrame:
    """One row per training seed of `p.seeds`, one column per statistic of the `sections`' claims
    (every report is cached: the second call reads). Double descent compares widths within each
    seed, so its report runs once over all seeds."""
    sections = list(sections)
    rows = []
    for q in p.replicas():
        row = {"seed": q.run.seed}
        for name in sections:
            if name in PER_SEED:
                row.update(PER_SEED[name](q, progress=progress).stats)
        rows.append(row)
    stats = pd.DataFrame(rows)
    if "double_descent" in sections:
        dd = double_descent_report(p, progress=progress).tables["seed_stats"]
        stats = stats.merge(dd, on="seed", how="left")
    return stats


def section_parts(p: Preset, section: str, progress: bool = False) -> pd.DataFrame:
    """The parts of one section's claims, with their intervals over seeds and verdicts."""
    stats = stats_over_seeds(p, [section], progress=progress)
    return part_table(stats, p.thresholds, [c for c in CLAIMS if c.section == section])


def claims_table(p: Preset, progress: bool = False) -> pd.DataFrame:
    """One row per claim: claim, seeds, measured (mean [95 % CI] per part), threshold, verdict,
    section (the page it is shown on)."""
    return claim_table(part_table(stats_over_seeds(p, progress=progress), p.thresholds))


def intro_glue(claims: pd.DataFrame, source: str, n_seeds: int) -> dict:
    """The introduction's counts of verdicts, the training seeds and the interval's reach."""
    counts = claims["verdict"].value_counts()
    n_min = int(n_seeds)
    return {"intro_source": source, "n_claims": len(claims), "n_reproduced": int(counts.get(REPRODUCED, 0)),
            "n_inconclusive": int(counts.get(INCONCLUSIVE, 0)), "n_not": int(counts.get(NOT, 0)),
            "n_seeds_min": n_min, "t_quantile": t_quantile(n_min)}


def linked(claims: pd.DataFrame) -> pd.DataFrame:
    """The claim table with each section name a link to its page (for HTML)."""
    return claims.assign(section=claims["section"].map(
        lambda s: f'<a href="{s}.html">{s.replace("_", " ")}</a>'))


def section_glue(parts: pd.DataFrame) -> dict:
    """Glue of a section's claims over seeds: `v_<claim>` (the verdict) and, per statistic,
    `<statistic>_mean`, `_lo`, `_hi` and `_n`."""
    g = {}
    for r in parts.itertuples():
        g[f"v_{r.claim}"] = r.verdict
        g[f"{r.statistic}_mean"], g[f"{r.statistic}_lo"], g[f"{r.statistic}_hi"] = r.mean, r.lo, r.hi
        g[f"{r.statistic}_n"] = int(r.n)
    return g


def parts_display(parts: pd.DataFrame) -> pd.DataFrame:
    """A section's parts as the page shows them: one row per part."""
    t = parts.rename(columns={"label": "statistic (per seed)", "n": "seeds", "lo": "95% CI low", "hi": "95% CI high",
                              "part_verdict": "part", "verdict": "claim verdict"})
    return t[["claim", "statistic (per seed)", "seeds", "mean", "95% CI low", "95% CI high", "rule", "part",
              "claim verdict"]].round(4)
