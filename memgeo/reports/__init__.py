"""What each page of the book says: one report function per section (`layers`, `rewind`,
`double_descent`, `gradients`, `methods`, and the introduction's claim table in `intro`).

A report function takes the page's configuration (`config.Preset`), computes or reads from the
result cache everything the page shows, and returns a `Report`: `glue`, every value the page's
text quotes by its glue name (numbers, and the sentence choices that depend on them); `tables`,
what the page displays or draws; `claims`, the page's rows of the introduction's claim table. The
notebook then only glues, draws (`memgeo.plotting`) and displays. `stats`: the numbers the
claims are decided on, for this report's training seed.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Report:
    glue: dict[str, Any]
    tables: dict[str, Any] = field(default_factory=dict)
    claims: dict[str, tuple[str, str]] = field(default_factory=dict)   # claim key -> (measured, verdict)
    run: Any = None         # the run the page analyses, if one
    # One training seed's claim statistics (name -> number): `memgeo.claims` gathers them over
    # seeds into means with intervals and decides the verdicts on those.
    stats: dict[str, float] = field(default_factory=dict)

    def __getitem__(self, name: str):
        return self.glue[name]
