"""The introduction's claim table: every claim of `memgeo.claims.CLAIMS`, decided on the 95 %
intervals over training seeds of the statistics the section reports measure (the same numbers and
rules as the sections' pages)."""
from __future__ import annotations

from typing import Iterable

import pandas as pd

from ..claims import CLAIMS, INCONCLUSIVE, NOT, REPRODUCED, claim_table, part_table, t_quantile
from ..config import Preset
from .double_descent import double_descent_report
from .seeds import PER_SEED, seed_reports

SECTIONS = ("layers", "rewind", "double_descent", "gradients")


def stats_over_seeds(p: Preset, sections: Iterable[str] = SECTIONS, progress: bool = False) -> pd.DataFrame:
    """One row per training seed of `p.seeds`, one column per statistic of the `sections`' claims
    (every report is cached: the second call reads). Double descent compares widths within each
    seed, so its report runs once over all seeds."""
    sections = list(sections)
    rows = {q.run.seed: {"seed": q.run.seed} for q in p.replicas()}
    for name in sections:
        if name in PER_SEED:
            for seed, r in seed_reports(p, name, progress=progress).items():
                rows[seed].update(r.stats)
    stats = pd.DataFrame(list(rows.values()))
    if "double_descent" in sections:
        dd = double_descent_report(p, progress=progress).tables["seed_stats"]
        stats = stats.merge(dd, on="seed", how="left")
    return stats


def section_stats(reports: dict) -> pd.DataFrame:
    """One row per seed (column "seed"), one column per claim statistic, from a section's reports by seed."""
    return pd.DataFrame([{"seed": seed, **r.stats} for seed, r in reports.items()])


def section_parts(p: Preset, section: str, progress: bool = False, reports: dict | None = None) -> pd.DataFrame:
    """The parts of one section's claims, with their intervals over seeds and verdicts.
    `reports`: the section's reports by seed (`seeds.seed_reports`), when the page already has them."""
    stats = stats_over_seeds(p, [section], progress=progress) if reports is None else section_stats(reports)
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
    """The claim table for HTML written with escape=False: every text escaped ("< 0.9" must not
    read as a tag), and each section name a link to its page."""
    import html
    out = claims.map(lambda v: html.escape(v) if isinstance(v, str) else v)
    return out.assign(section=claims["section"].map(lambda s: f'<a href="{s}.html">{s.replace("_", " ")}</a>'))


def section_glue(parts: pd.DataFrame) -> dict:
    """Glue of a section's claims over seeds: `v_<claim>` (the verdict) and, per statistic,
    `<statistic>_mean`, `_lo`, `_hi` and `_n`; `n_seeds`, the most seeds any statistic has."""
    g = {"n_seeds": int(parts["n"].max()) if len(parts) else 0}
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


# ---------------------------------------------------------------------------------------------
# Computing every seed's analyses side by side (the book build does this before the notebooks run)

def _pin_worker(slots) -> None:
    """One worker per CPU: pinned to its own CPU (the geometry's threads follow the affinity) with
    one torch thread, so that workers do not oversubscribe the cores."""
    import os

    import torch
    cpu = slots.get()
    try:
        os.sched_setaffinity(0, {cpu})
    except (AttributeError, OSError):      # not on Linux: one thread is enough
        pass
    torch.set_num_threads(1)


def _analyse(p: Preset, name: str) -> tuple[str, int, float]:
    import time
    t0 = time.time()
    if name == "double_descent":
        double_descent_report(p, progress=False)
    elif name == "methods":
        from .methods import methods_report
        methods_report(p)
    else:
        PER_SEED[name](p, progress=False)
    return name, p.run.seed, time.time() - t0


def analysis_tasks(p: Preset) -> list[tuple[Preset, str]]:
    """Every (seed's preset, section) the claims need, the double-descent sweep once, longest first."""
    tasks = [(q, name) for name in ("gradients", "layers", "rewind") for q in p.replicas()]
    if p.for_seed(p.run.seed) not in p.replicas():        # the pages' own seed, when not replicated
        tasks += [(p, name) for name in ("gradients", "layers", "rewind")]
    return [(p, "double_descent")] + tasks + [(p, "methods")]


def compute_analyses(p: Preset, workers: int | None = None, log=print) -> float:
    """Run every section's analysis for every training seed in a pool of one-CPU processes (all
    results land in the caches the notebooks then read). Returns the seconds it took."""
    import multiprocessing as mp
    import os
    import time
    from concurrent.futures import ProcessPoolExecutor, as_completed

    from ..engine import usable_cpus
    tasks = analysis_tasks(p)
    n = max(1, min(workers or usable_cpus(), len(tasks)))
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = list(range(n))
    ctx = mp.get_context("spawn")
    slots = ctx.Manager().Queue()
    for k in range(n):
        slots.put(cpus[k % len(cpus)])
    t0 = time.time()
    # the synthetic control of the simulated check is shared by every seed: computed once, first
    from ..probe import synthetic_control
    synthetic_control(p.probe.M, n_searches=p.probe.center_searches)
    with ProcessPoolExecutor(n, mp_context=ctx, initializer=_pin_worker, initargs=(slots,)) as pool:
        futures = [pool.submit(_analyse, q, name) for q, name in tasks]
        for f in as_completed(futures):
            name, seed, sec = f.result()
            log(f"[memgeo]   {name} (seed {seed}) analysed in {sec:.0f} s")
    return time.time() - t0
