"""The section reports (memgeo.reports): each page's glue names are all provided, values are
plain Python values, the claim table gathers every claim, and reports agree with the compute
modules they read."""
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from memgeo import verdicts
from memgeo.config import Thresholds
from memgeo.gradients import GradientSettings, gradients_over_epochs, scaling_at_epoch
from memgeo.reports.gradients import gradient_numbers
from memgeo.reports.intro import claims_table, intro_glue, linked

BOOK = Path(__file__).resolve().parent.parent / "book"


def page_glue_names(page: str) -> tuple[set, set]:
    """(names the page's text uses, names its code cells glue themselves)."""
    text = (BOOK / f"{page}.md").read_text()
    used = set(re.findall(r"\{glue:text\}`([A-Za-z0-9_]+)", text)) | set(re.findall(r"```\{glue:figure\} (\w+)", text))
    own = set(re.findall(r"glue\(f?\"([A-Za-z0-9_{}]+)\"", text))
    return used, own


def section_glue_names(page: str) -> set:
    """The names `reports.intro.section_glue` gives a section's claims over seeds."""
    from memgeo.claims import CLAIMS
    names = {"n_seeds"}
    for claim in CLAIMS:
        if claim.section == page:
            names.add(f"v_{claim.key}")
            names |= {f"{part.stat}_{x}" for part in claim.parts for x in ("mean", "lo", "hi", "n")}
    return names


@pytest.mark.parametrize("page", ["layers", "rewind", "double_descent", "gradients", "methods"])
def test_every_name_a_page_quotes_comes_from_its_report(smoke_reports, page):
    _, reports = smoke_reports
    used, own = page_glue_names(page)
    figures = {n for n in used if "fig" in n}
    own_expanded = {n for n in used if any(re.fullmatch(o.replace("{q}", r"\w+"), n) for o in own)}
    missing = used - set(reports[page].glue) - (figures & own_expanded) - section_glue_names(page)
    assert not missing, missing
    plain = (bool, int, float, str, list)
    assert all(isinstance(v, plain) for v in reports[page].glue.values()), \
        {k: type(v) for k, v in reports[page].glue.items() if not isinstance(v, plain)}


def test_claim_table_decides_every_claim_over_the_seeds(smoke_reports):
    from memgeo import claims as C
    from memgeo.reports.intro import section_glue, section_parts, stats_over_seeds
    p, reports = smoke_reports
    stats = stats_over_seeds(p)                 # every seed's reports (seed 0's are cached)
    assert stats["seed"].tolist() == list(p.seeds) == [0, 1, 2]
    needed = {part.stat for claim in C.CLAIMS for part in claim.parts}
    assert needed <= set(stats.columns), needed - set(stats.columns)
    # the page's own seed contributes exactly its reports' statistics
    own = stats.set_index("seed").loc[p.run.seed]
    for name in ("layers", "rewind", "gradients"):
        for k, v in reports[name].stats.items():
            assert own[k] == v or (math.isnan(own[k]) and math.isnan(v)), (name, k)
    table = claims_table(p)      # from the cache: the same numbers
    parts = C.part_table(stats, p.thresholds)
    assert list(table["claim"]) == [c.statement for c in C.CLAIMS]
    assert list(table["verdict"]) == [parts[parts["claim"] == c.key]["verdict"].iloc[0] for c in C.CLAIMS]
    assert set(table["verdict"]) <= set(C.VERDICTS)
    g = intro_glue(table, "src", len(p.seeds))
    assert g["n_reproduced"] + g["n_inconclusive"] + g["n_not"] == g["n_claims"] == len(C.CLAIMS)
    assert g["t_quantile"] == pytest.approx(4.3027, abs=1e-4) and g["n_seeds_min"] <= 3
    assert linked(table)["section"].iloc[-1] == '<a href="layers.html">layers</a>'
    assert "&lt; 0.9" in linked(table)["threshold"].iloc[2]          # claim 2b's rule, escaped for HTML
    lay = section_parts(p, "layers")
    assert set(lay["claim"]) == {"first_learning", "late_deep", "restored_lost", "radius_dimension", "simulated"}
    sg = section_glue(lay)
    assert sg["v_late_deep"] == table.set_index("section").loc["layers"]["verdict"].iloc[1]


def test_reports_agree_with_the_rules(smoke_reports):
    from memgeo.verdicts import FAILS, HOLDS, READINGS
    p, reports = smoke_reports
    lay = reports["layers"]
    assert lay["v_verdict1"] == lay.claims["late_deep"][1] and lay["v_verdict1"] in READINGS
    assert lay["sim_median_dev"] == verdicts.simulated_deviation(lay.tables["sim"])
    assert lay.stats["sim_excess_dev"] == lay.stats["sim_median_abs_dev"] - lay.stats["sim_control_p10"]
    assert lay.stats["perm_ratio_last_hidden"] == lay["v_perm_last"] and lay["v_last_layer"] == "conv4"
    rew = reports["rewind"]
    n_test = rew.run.meta["n_test"]
    assert rew["n_test"] == n_test and rew["se_test"] == pytest.approx(math.sqrt(
        rew["final_test"] * (1 - rew["final_test"]) / n_test), rel=1e-12)
    assert rew.claims["rewind"][1] == (HOLDS if rew["claim_verdict"] == "holds for this model" else FAILS)
    s = rew.stats
    assert s["rewind_late_minus_matched"] == s["rewind_late_fraction"] - s["rewind_matched_fraction"] or \
        math.isnan(s["rewind_late_fraction"])
    dd = reports["double_descent"]
    assert dd["dd_verdict"] == dd.claims["double_descent"][1] and dd["dd_tol"] == p.thresholds.interpolation_tol
    assert dd.tables["long"]["seed"].nunique() == len(p.seeds) and dd["dd_n_test"] == 200
    gr = reports["gradients"]
    assert gr["gr_verdict"] == gr.claims["gradients"][1] in READINGS
    assert gr.tables["numbers"].index.tolist()[-2:] == ["t_epochs", "t_scaling"]
    m = reports["methods"]
    assert m["max_rel_error"] < 0.5 and m["polygon_never_below"] is True and m["n_t_fig"] == 100


def test_thresholds_reach_the_readings(smoke_reports):
    from dataclasses import replace
    from memgeo.reports.layers import layers_report
    from memgeo.verdicts import FAILS, HOLDS
    p, reports = smoke_reports
    strict = replace(p, thresholds=replace(p.thresholds, simulated_close=-1.0))
    assert layers_report(strict, progress=False).claims["simulated"][1] == FAILS
    lenient = replace(p, thresholds=replace(p.thresholds, simulated_close=np.inf))
    assert layers_report(lenient, progress=False).claims["simulated"][1] == HOLDS


def test_gradient_numbers_are_plain_values(smoke_reports):
    import dataclasses
    from memgeo.gradients import STATS
    _, reports = smoke_reports
    gr = reports["gradients"]
    assert tuple(gr.stats) == STATS and all(isinstance(v, float) for v in gr.stats.values())
    # smoke trains 3 epochs: no memorization phase, so only its two numbers are undefined
    assert all(math.isfinite(v) for k, v in gr.stats.items() if k not in ("gradient_ratio_memorizing", "gradient_growth"))
    assert gr.stats["gradient_ratio_init"] == gr["gr_ratio_init"] != gr["gr_ratio_init_identity_bn"]
    assert gr["gr_sizes"] == "10, 20, 40"        # the smoke preset's sizes, multiples of its 10 classes
    run = gr.run
    data = run.load_data()
    s = GradientSettings(n_examples=30, epochs="0,3", sizes=(10, 20), repeats=2, batch_size=32)
    table = gradients_over_epochs(run, s, data=data)
    whole = dataclasses.replace(s, n_examples=60)
    init = gradients_over_epochs(run, whole, epochs=[0], data=data)
    ident = gradients_over_epochs(run, whole, epochs=[0], data=data, bn="saved")
    nums = gradient_numbers(run, data, s, table, init, ident, scaling_at_epoch(run, s, data=data), Thresholds())
    assert nums["n_train"] == len(data.x_train) and nums["n_unperm_all"] + nums["n_perm_all"] == 60
    assert nums["verdict"] in verdicts.READINGS
    assert all(isinstance(v, (int, float, str, bool)) for v in nums.values())
    assert pd.Series(nums).index.is_unique


REWIND_STATS = {"rewind_late_fraction", "rewind_early_fraction", "rewind_matched_fraction", "rewind_late_param_share",
                "rewind_selectivity", "maini_nonfinal_removed", "maini_nonfinal_matched", "maini_final_removed",
                "rewind_late_minus_matched", "maini_nonfinal_minus_matched"}


def test_rewind_stats_are_the_claims_numbers(smoke_reports):
    _, reports = smoke_reports
    rew = reports["rewind"]
    st = rew.stats
    assert set(st) == REWIND_STATS and all(isinstance(v, float) for v in st.values())
    assert st["rewind_late_fraction"] == rew["late_best_fraction"] or math.isnan(st["rewind_late_fraction"])
    control = rew.tables["control"]
    params = rew.tables["params"]
    assert params["param_share"].sum() == pytest.approx(1.0)
    if math.isnan(st["rewind_late_fraction"]):     # no gap on this run: nothing to recover
        assert math.isnan(st["rewind_matched_fraction"])
    else:
        late = control[(control["mode"] == "cumulative") & (control["rewound"] == rew.glue["late_best_rewound"]
                                                              .replace(", ", "+"))].iloc[0]
        assert st["rewind_late_fraction"] == pytest.approx(late["gap_recovered"])
        assert st["rewind_matched_fraction"] == late["gap_recovered_matched"]
        assert st["rewind_late_param_share"] == pytest.approx(params.loc[late["rewound"].split("+"), "param_share"].sum())
        assert st["rewind_selectivity"] == late["selectivity"] == rew["c_late_sel"]
        # the matched control's gap recovered from its mean test accuracy over the draws
        gap = rew["peak_test"] - rew["final_test"]
        assert late["gap_recovered_matched"] == pytest.approx((late["acc_test_matched"] - rew["final_test"]) / gap)
    mt = rew.tables["maini_test"]
    assert list(mt.index[mt["final"]]) == rew["mt_final_list"].split(", ")
    nonfinal = mt.loc[~mt["final"], "memorization_removed"]
    if nonfinal.notna().any():
        assert st["maini_nonfinal_removed"] == pytest.approx(nonfinal.max())
        assert st["maini_final_removed"] == pytest.approx(mt.loc[mt["final"], "memorization_removed"].max())
    else:       # memorization did not grow after early stopping on this run: undefined
        assert math.isnan(st["maini_nonfinal_removed"]) and math.isnan(st["maini_nonfinal_matched"])
    assert rew.claims["maini"][1] in verdicts.READINGS


def test_tables_and_figures_over_seeds(smoke_reports):
    import matplotlib.pyplot as plt

    from memgeo.plotting import seeds as spread
    from memgeo.reports.intro import section_parts, section_stats
    from memgeo.reports.seeds import geometry_over_seeds, gradient_ratio_over_seeds, rewind_over_seeds, seed_reports
    p, reports = smoke_reports
    lay = seed_reports(p, "layers")
    assert sorted(lay) == list(p.seeds)
    # the page's own seed is the same report as the page's
    assert lay[p.run.seed].stats == reports["layers"].stats
    geo = geometry_over_seeds(lay)
    for seed, r in lay.items():
        g = geo[geo["seed"] == seed]
        assert set(g["role"]) == {"initialisation", "early stop", "end"}
        assert g.loc[g["role"] == "early stop", "epoch"].unique().tolist() == [r["early_stop"]]
        s = r.tables["summary"]
        end = s[s["epoch"] == s["epoch"].max()].set_index(["layer", "type"])["capacity"]
        mine = g[g["role"] == "end"].set_index(["layer", "type"])["capacity"]
        pd.testing.assert_series_equal(mine.sort_index(), end.sort_index(), check_names=False)
    parts = section_parts(p, "layers", reports=lay)
    assert parts.equals(section_parts(p, "layers"))          # the same numbers from the reports given
    assert {"bound_lo", "bound_hi", "side"} <= set(parts.columns)
    figs = [spread.plot_parts(parts, section_stats(lay)), spread.plot_geometry_over_seeds(geo, "radius")]
    rew = rewind_over_seeds(seed_reports(p, "rewind"))
    assert rew["seed"].nunique() == len(p.seeds) and set(rew["mode"]) == {"single", "cumulative"}
    figs.append(spread.plot_rewind_over_seeds(rew))
    gr = gradient_ratio_over_seeds(seed_reports(p, "gradients"))
    assert gr["seed"].nunique() == len(p.seeds) and (gr["ratio"] > 0).all()
    figs.append(spread.plot_gradient_ratio_over_seeds(gr))
    assert len([a for a in figs[0].axes if a.get_visible()]) == len(parts)
    dd = reports["double_descent"].tables
    figs.append(spread.plot_parts(dd["parts"], dd["seed_stats"], ncols=2))
    assert len([a for a in figs[-1].axes if a.get_visible()]) == len(dd["parts"]) == 2
    for f in figs:
        plt.close(f)
    with pytest.raises(ValueError, match="no per-seed report"):
        seed_reports(p, "double_descent")


def test_unseparable_reading_covers_each_case():
    from memgeo.reports.layers import unseparable_reading
    base = {"sim_unseparable": 0.2, "sim_median_abs_dev": 0.2}
    assert "main cause" in unseparable_reading({**base, "sim_median_abs_dev_separable": 0.05})
    assert "part of the gap" in unseparable_reading({**base, "sim_median_abs_dev_separable": 0.15})
    assert "not its cause" in unseparable_reading({**base, "sim_median_abs_dev_separable": 0.25})
    assert "hardly changes" in unseparable_reading({**base, "sim_median_abs_dev_separable": 0.19})
    assert "almost every" in unseparable_reading({**base, "sim_unseparable": 0.01, "sim_median_abs_dev_separable": 0.2})
    assert unseparable_reading({**base, "sim_unseparable": float("nan"),
                                "sim_median_abs_dev_separable": 0.1}).startswith("not measured")
