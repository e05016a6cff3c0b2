"""The introduction's claim table: every claim of `verdicts.CLAIMS` with what was measured and its
verdict, from the section reports (the same numbers and rules as the sections' pages)."""
from __future__ import annotations

import pandas as pd

from ..config import Preset
from ..verdicts import CLAIMS, NOT, PARTLY, REPRODUCED
from .double_descent import double_descent_report
from .gradients import gradients_report
from .layers import layers_report
from .rewind import rewind_report


def claims_table(p: Preset, progress: bool = False) -> pd.DataFrame:
    """One row per claim: claim, measured, verdict, section (the page it is shown on)."""
    measured = {}
    for report in (layers_report(p, progress=progress), rewind_report(p, progress=progress),
                   double_descent_report(p, progress=progress), gradients_report(p, progress=progress)):
        measured.update(report.claims)
    rows = [(statement, *measured[key], section) for key, (statement, section) in CLAIMS.items()]
    return pd.DataFrame(rows, columns=["claim", "measured", "verdict", "section"])


def intro_glue(claims: pd.DataFrame, source: str) -> dict:
    """The introduction's counts of verdicts."""
    counts = claims["verdict"].value_counts()
    return {"intro_source": source, "n_claims": len(claims), "n_reproduced": int(counts.get(REPRODUCED, 0)),
            "n_partly": int(counts.get(PARTLY, 0)), "n_not": int(counts.get(NOT, 0))}


def linked(claims: pd.DataFrame) -> pd.DataFrame:
    """The claim table with each section name a link to its page (for HTML)."""
    return claims.assign(section=claims["section"].map(
        lambda s: f'<a href="{s}.html">{s.replace("_", " ")}</a>'))
