"""The claims module: intervals over seeds, every rule driven to each of its outcomes on small
synthetic tables, and the claim verdict from its parts."""
import math
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from memgeo import claims as C
from memgeo.config import Thresholds

TH = Thresholds()


def test_interval_is_student_t_over_seeds():
    iv = C.interval([1.0, 2.0, 3.0])
    # mean 2, sd 1, t(0.975, 2) = 4.3027: half-width 4.3027 / sqrt(3) = 2.4841
    assert iv["n"] == 3 and iv["mean"] == 2.0
    assert iv["lo"] == pytest.approx(2 - 2.48414, abs=1e-4) and iv["hi"] == pytest.approx(2 + 2.48414, abs=1e-4)


def test_interval_leaves_out_undefined_seeds_and_needs_two():
    assert C.interval([1.0, float("nan"), 3.0])["n"] == 2
    one = C.interval([0.7, float("nan")])
    assert one["n"] == 1 and one["mean"] == 0.7 and math.isnan(one["lo"])
    assert C.interval([])["n"] == 0


@pytest.mark.parametrize("side,lo,hi,expected", [
    (">", 0.6, 0.9, C.REPRODUCED), (">", 0.1, 0.4, C.NOT), (">", 0.4, 0.6, C.INCONCLUSIVE),
    ("<", 0.1, 0.4, C.REPRODUCED), ("<", 0.6, 0.9, C.NOT), ("<", 0.4, 0.6, C.INCONCLUSIVE),
    (">", float("nan"), float("nan"), C.INCONCLUSIVE)])
def test_decide_part_one_sided(side, lo, hi, expected):
    assert C.decide_part(lo, hi, side, (0.5, 0.5)) == expected


@pytest.mark.parametrize("lo,hi,expected", [
    (-0.55, -0.45, C.REPRODUCED), (-0.3, -0.1, C.NOT), (-1.0, -0.8, C.NOT), (-0.7, -0.5, C.INCONCLUSIVE)])
def test_decide_part_within(lo, hi, expected):
    assert C.decide_part(lo, hi, "within", (-0.65, -0.35)) == expected


def test_combine_parts():
    assert C.combine([C.REPRODUCED, C.REPRODUCED]) == C.REPRODUCED
    assert C.combine([C.REPRODUCED, C.INCONCLUSIVE]) == C.INCONCLUSIVE
    assert C.combine([C.INCONCLUSIVE, C.NOT]) == C.NOT
    assert C.combine([]) == C.INCONCLUSIVE


def _stats(**columns):
    return pd.DataFrame({"seed": [0, 1, 2], **columns})


def _verdicts(stats, th=TH):
    t = C.part_table(stats, th)
    return t.groupby("claim", sort=False)["verdict"].first().to_dict()


def test_every_claim_reaches_each_outcome():
    """Drive each claim to reproduced, not reproduced and inconclusive with per-seed statistics
    placed well beyond, well short of, and around its thresholds."""
    for claim in C.CLAIMS:
        good, bad, mixed = {}, {}, {}
        for part in claim.parts:
            lo, hi = part.bounds(TH)
            if part.side == ">":
                good[part.stat], bad[part.stat] = [hi + 1, hi + 1.1, hi + 1.2], [lo - 1, lo - 1.1, lo - 1.2]
            elif part.side == "<":
                good[part.stat], bad[part.stat] = [lo - 1, lo - 1.1, lo - 1.2], [hi + 1, hi + 1.1, hi + 1.2]
            else:
                mid = (lo + hi) / 2
                good[part.stat], bad[part.stat] = [mid, mid + 0.01, mid - 0.01], [hi + 1, hi + 1.1, hi + 1.2]
            mixed[part.stat] = [lo - 1, hi + 1, (lo + hi) / 2]      # the interval straddles it
        assert _verdicts(_stats(**good))[claim.key] == C.REPRODUCED, claim.key
        assert _verdicts(_stats(**bad))[claim.key] == C.NOT, claim.key
        assert _verdicts(_stats(**mixed))[claim.key] == C.INCONCLUSIVE, claim.key


def test_missing_statistic_is_inconclusive_and_counted():
    t = C.part_table(_stats(maini_nonfinal_removed=[0.9, 0.95, float("nan")]), TH, [C.BY_KEY["maini"]])
    assert t["n"].tolist() == [2, 0] and t["verdict"].tolist() == [C.INCONCLUSIVE] * 2


def test_thresholds_come_from_the_config():
    rise = [1.15, 1.16, 1.17]                  # above 1 + 0.10, below 1 + 0.20
    s = _stats(perm_ratio_last_hidden=rise, perm_ratio_last_over_first=rise)
    assert _verdicts(s)["late_deep"] == C.REPRODUCED
    assert _verdicts(s, replace(TH, change=0.2))["late_deep"] == C.NOT
    part = C.BY_KEY["late_deep"].parts[0]
    assert part.rule_text(TH) == "> 1.1" and part.rule_text(replace(TH, change=0.2)) == "> 1.2"


def test_claim_table_one_row_per_claim_with_seeds_interval_and_threshold():
    s = _stats(maini_nonfinal_removed=[0.8, 0.85, 0.9], maini_nonfinal_minus_matched=[0.3, 0.35, 0.4])
    parts = C.part_table(s, TH)
    table = C.claim_table(parts)
    assert len(table) == len(C.CLAIMS)
    row = table.set_index("section").loc["rewind"].iloc[-1]
    assert row["seeds"] == 3 and row["threshold"] == "> 0.5; > 0" and row["verdict"] == C.REPRODUCED
    assert "0.85 [0.726, 0.974]" in row["measured (mean [95% CI])"]


def test_fmt_interval():
    assert C.fmt_interval(0.5, 0.25, 0.75) == "0.5 [0.25, 0.75]"
    assert C.fmt_interval(0.5, float("nan"), float("nan")) == "0.5 [n/a, n/a]"


def test_unknown_side_is_an_error():
    with pytest.raises(ValueError, match="unknown side"):
        C.decide_part(0, 1, "?", (0, 0))


def test_claim_keys_unique_and_sections_known():
    keys = [c.key for c in C.CLAIMS]
    assert len(keys) == len(set(keys))
    assert {c.section for c in C.CLAIMS} <= {"layers", "rewind", "double_descent", "gradients"}
    assert np.all([len(c.parts) >= 1 for c in C.CLAIMS])


def test_intervals_by_group_are_the_student_t_interval():
    from memgeo.claims import intervals_by
    from memgeo.reports.seeds import stacked
    long = stacked({0: pd.DataFrame({"x": [1, 2], "v": [1.0, 10.0]}), 1: pd.DataFrame({"x": [1, 2], "v": [2.0, 10.0]}),
                    2: pd.DataFrame({"x": [1, 2], "v": [3.0, np.nan]})})
    assert list(long.columns) == ["seed", "x", "v"] and long["seed"].tolist() == [0, 0, 1, 1, 2, 2]
    b = intervals_by(long, ["x"], "v").set_index("x")
    half = 4.302652729749464 * 1.0 / math.sqrt(3)           # t(0.975, 2) x sd / sqrt(n)
    assert b.loc[1, "n"] == 3 and b.loc[1, "mean"] == 2.0
    assert b.loc[1, "lo"] == pytest.approx(2.0 - half) and b.loc[1, "hi"] == pytest.approx(2.0 + half)
    assert b.loc[2, "n"] == 2 and b.loc[2, "lo"] == b.loc[2, "hi"] == 10.0     # nan dropped, no spread
