"""Why networks do not memorize early: the gradient contributions of permuted and unpermuted examples.

The training loss over n examples is L = (1/n) sum_i l_i, so its gradient splits exactly into the
part of the unpermuted examples, (1/n) sum_{i in U} g_i, and the part of the permuted ones,
(1/n) sum_{i in P} g_i (g_i is the gradient of example i's cross-entropy against its *training*
label). For every layer (parameters grouped by `BlockNet.block_of`) and every group this module
measures, from per-example gradients:

- the norm of the group's part of the gradient (``norm_*``) and per example (``per_example_*`` =
  norm of the group's mean gradient, ||sum_g g_i|| / n_g);
- the ratio permuted / unpermuted of both, and the cosine between the two parts;
- the coherence ||sum_g g_i||^2 / (n_g sum_g ||g_i||^2) = ||mean g||^2 / mean ||g||^2 of each group:
  1 when all per-example gradients are identical, 1/n_g when they are mutually orthogonal. (Without
  the factor 1/n_g the ratio would run from 1 to n_g; the normalised form compares groups of
  different sizes.)
- the root-mean-square per-example gradient norm (``rms_*``): how large single gradients are.

Per-example gradients come from `torch.func` (functional_call + vmap + grad) in **eval mode**:
BatchNorm uses its running statistics, so every example's gradient depends on that example alone.
In train mode BatchNorm normalises with the batch's statistics, which couples the examples of a
batch (an example's gradient would depend on which others share its batch), so per-example
gradients would not be defined. At epoch 0 the running statistics are the initial ones (mean 0,
variance 1), so BatchNorm is the identity there. The model is used in contiguous memory format,
which runs the vmapped convolutions several times faster on the CPU than channels_last.

Everything is built on one primitive, `subset_gradient_sums`: given a function returning per-example
gradients of a pool of examples and a membership matrix (subsets x pool), it accumulates, chunk by
chunk, every subset's gradient sum and sum of squared per-example norms. The epoch analysis uses two
subsets (the unpermuted and permuted examples of a fixed sample, stratified by group and training
label); the scaling test uses nested random subsets of growing size n of each group, balanced over
the training labels; both primitives live in `memgeo.per_example`. Results are tidy tables in the
run's result cache (`memgeo.cache`, under ``gradients/``), and only what is missing is computed.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from .cache import ResultCache
from .config import ConfigError, GradientConfig, Preset, Thresholds
from .data import LabelledData, derived_seed
from .models import BlockNet
# Per-example gradients and subset sums (the primitives), importable from here too:
from .per_example import (ALL, GradFn, SubsetSums, coherence, layer_parameters, model_grad_fn,  # noqa: F401
                          per_example_gradients, subset_gradient_sums)
from .runs import Run
from .verdicts import gradient_claim

GROUPS = ("unpermuted", "permuted")


# ---------------------------------------------------------------------------------------------
# Settings: `config.GradientConfig` (sized per preset in `config._presets`, `Preset.gradients`)

GradientSettings = GradientConfig     # its former name
THRESHOLDS = Thresholds()             # the defaults of the verdicts' thresholds


def settings_for(p: Preset, **overrides) -> GradientConfig:
    """The preset's gradient settings (`p.gradients`) with `overrides` applied."""
    return dataclasses.replace(p.gradients, **overrides)


# ---------------------------------------------------------------------------------------------
# The split of the loss gradient into the two groups

@dataclass
class GradientSplit:
    """The gradient of the mean training loss over n examples, split by group."""

    sums: SubsetSums          # subset 0: unpermuted, subset 1: permuted
    n: int

    def part(self, group: str, layer: str) -> torch.Tensor:
        """The group's contribution to the gradient of the mean loss: (1/n) sum_{i in group} g_i."""
        return self.sums.sums[layer][GROUPS.index(group)] / self.n

    def full(self, layer: str) -> torch.Tensor:
        return self.part("unpermuted", layer) + self.part("permuted", layer)

    def table(self) -> pd.DataFrame:
        """One row per layer (and "all"): norms, ratios, cosine, coherence."""
        gram, sq = self.sums.gram(), self.sums.sq_all()
        nu, npm = (int(c) for c in self.sums.counts)
        rows = []
        for layer in self.sums.layers + [ALL]:
            G, q = gram[layer], sq[layer]
            su, sp = math.sqrt(max(G[0, 0], 0.0)), math.sqrt(max(G[1, 1], 0.0))
            row = {"layer": layer, "n": self.n, "n_unpermuted": nu, "n_permuted": npm,
                   "norm_full": math.sqrt(max(G[0, 0] + G[1, 1] + 2 * G[0, 1], 0.0)) / self.n,
                   "norm_unpermuted": su / self.n, "norm_permuted": sp / self.n,
                   "per_example_unpermuted": _div(su, nu), "per_example_permuted": _div(sp, npm),
                   "cosine": _div(G[0, 1], su * sp),
                   "coherence_unpermuted": _div(G[0, 0], nu * q[0]),
                   "coherence_permuted": _div(G[1, 1], npm * q[1]),
                   "rms_unpermuted": math.sqrt(_div(q[0], nu)), "rms_permuted": math.sqrt(_div(q[1], npm))}
            row["ratio"] = _div(row["norm_permuted"], row["norm_unpermuted"])
            row["ratio_per_example"] = _div(row["per_example_permuted"], row["per_example_unpermuted"])
            rows.append(row)
        return pd.DataFrame(rows)


def _div(a: float, b: float) -> float:
    return float(a / b) if b else float("nan")


def gradient_split(grad_fn: GradFn, index: np.ndarray, permuted: np.ndarray,
                   batch_size: int | None = None) -> GradientSplit:
    """Split the gradient of the mean loss over examples `index` by the boolean `permuted` (per index)."""
    permuted = np.asarray(permuted, dtype=bool)
    member = np.stack([~permuted, permuted])
    return GradientSplit(subset_gradient_sums(grad_fn, np.asarray(index), member, batch_size), len(index))


def stratified_sample(strata: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """n indices drawn without replacement, each stratum getting its proportional share
    (largest remainders), so the sample has the composition of the whole (sorted)."""
    keys, counts = np.unique(strata, return_counts=True)
    share = counts * n / len(strata)
    take = np.floor(share).astype(int)
    rest = n - take.sum()
    if rest:
        take[np.argsort(-(share - take), kind="stable")[:rest]] += 1
    out = [rng.choice(np.flatnonzero(strata == k), t, replace=False) for k, t in zip(keys, take)]
    return np.sort(np.concatenate(out))


def gradient_sample(data: LabelledData, n_examples: int, seed: int = 0) -> np.ndarray:
    """The fixed random sample of the training subset used at every epoch (sorted; all if 0).

    Stratified by (permuted, training label): it has the composition of the whole training subset,
    so its gradient is the subset's gradient without the noise of random class counts."""
    n = len(data.x_train)
    if n_examples == 0 or n_examples >= n:
        return np.arange(n)
    strata = data.permuted.cpu().numpy().astype(np.int64) * 100_000 + data.train_label.cpu().numpy()
    return stratified_sample(strata, n_examples, np.random.default_rng(derived_seed(seed, "gradients", "sample")))


def split_at_epoch(run: Run, epoch: int, data: LabelledData, settings: GradientConfig) -> GradientSplit:
    """The gradient split for one checkpoint of a run, on the settings' fixed sample."""
    model = run.load_model(epoch, device=data.x_train.device)
    idx = gradient_sample(data, settings.n_examples, settings.seed)
    return gradient_split(model_grad_fn(model, data, settings.batch_size, settings.num_threads), idx,
                          data.permuted.cpu().numpy()[idx])


# ---------------------------------------------------------------------------------------------
# Over the saved epochs of a run (cached)

MEMORIZATION_LEVELS = (0.25, 0.5, 0.9)   # "auto" epochs: where the permuted examples reach these


def select_epochs(run: Run, settings: GradientConfig) -> list[int]:
    """The checkpoints to analyse. "auto": initialization, the early-stopping epoch, the end, the
    first epochs at which the permuted examples are memorized to each of MEMORIZATION_LEVELS
    (training-label accuracy), then log-spaced epochs, up to `max_epochs` saved checkpoints."""
    saved = run.checkpoint_epochs
    if settings.epochs != "auto":
        try:
            want = sorted({int(s) for s in settings.epochs.split(",") if s.strip()})
        except ValueError:
            raise ConfigError(f"epochs={settings.epochs!r}: use 'auto' or comma-separated epochs") from None
        missing = [e for e in want if e not in saved]
        if missing:
            raise ConfigError(f"epochs {missing} have no checkpoint in {run.path.name}; saved: {saved}")
        return want
    first, last = saved[0], saved[-1]
    chosen = {first, last}
    if run.early_stop_epoch in saved:
        chosen.add(run.early_stop_epoch)
    m = run.metrics.set_index("epoch")["acc_permuted_train"]
    for level in MEMORIZATION_LEVELS:
        reached = [e for e in saved if e > first and m.get(e, 0.0) >= level]
        if reached and len(chosen) < settings.max_epochs:
            chosen.add(reached[0])
    k = settings.max_epochs - len(chosen)
    if k > 0 and last > 0:
        # log-spaced targets between 1 and the end, snapped to the nearest saved epoch
        for t in np.unique(np.round(np.geomspace(1, last, k + 2)[:-1])):
            chosen.add(min(saved, key=lambda e: (abs(e - t), e)))
            if len(chosen) >= settings.max_epochs:
                break
    return sorted(chosen)


CACHE_VERSION = 2     # bump when the numbers a cache key stands for change


def epochs_cache(run: Run, settings: GradientConfig) -> ResultCache:
    """Cache entry of the epoch table: keyed by the sample (size and seed); epochs are its chunks."""
    return ResultCache.of_run(run, "gradients", {"table": "epochs", "n_examples": settings.n_examples},
                              seed=settings.seed, version=CACHE_VERSION)


def scaling_cache(run: Run, settings: GradientConfig) -> ResultCache:
    """Cache entry of the scaling test: keyed by everything that draws its subsets and its checkpoint."""
    return ResultCache.of_run(run, "gradients", {
        "table": "scaling", "sizes": list(settings.sizes), "repeats": settings.repeats,
        "pool_factor": settings.pool_factor, "epoch": settings.scaling_epoch, "balanced": settings.balanced},
        seed=settings.seed, version=CACHE_VERSION)


def epoch_rows(run: Run, epoch: int, data: LabelledData, settings: GradientConfig) -> pd.DataFrame:
    """The split table (`GradientSplit.table`) of one checkpoint, with its epoch as first column."""
    t = split_at_epoch(run, epoch, data, settings).table()
    t.insert(0, "epoch", epoch)
    return t


def gradients_over_epochs(run: Run, settings: GradientConfig, epochs: Sequence[int] | None = None,
                          data: LabelledData | None = None, progress: bool = False) -> pd.DataFrame:
    """Tidy table (one row per epoch x layer) of the gradient split over a run's checkpoints.

    Kept in the run's result cache (`epochs_cache`), one chunk per epoch: only missing epochs are
    computed, and the table is rewritten (atomically) after each one, so an interrupted analysis
    resumes.
    """
    epochs = sorted(set(epochs if epochs is not None else select_epochs(run, settings)))
    cache = epochs_cache(run, settings)
    table = cache.read()
    todo = cache.missing("table", epochs, ["epoch"])
    if todo:
        data = data if data is not None else run.load_data()
        bar = _bar(progress, len(todo), f"gradients [{run.path.name}]")
        for e in todo:
            table = cache.add("table", epoch_rows(run, e, data, settings), ["epoch"], order=["epoch"])
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
    return table[table["epoch"].isin(epochs)].reset_index(drop=True)


def _bar(progress: bool, total: int, desc: str):
    if not progress:
        return None
    from tqdm.auto import tqdm
    return tqdm(total=total, desc=desc, leave=False)


# ---------------------------------------------------------------------------------------------
# The scaling test

def balanced_order(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random order of positions 0..len(labels)-1 whose every prefix is balanced over the labels
    to within one example: round-robin over the labels (in a random order), each label's examples
    in random order, labels that run out dropping out of the rotation."""
    classes = rng.permutation(np.unique(labels))
    queues = [list(rng.permutation(np.flatnonzero(labels == c))) for c in classes]
    order = []
    while any(queues):
        for q in queues:
            if q:
                order.append(q.pop())
    return np.asarray(order, dtype=np.int64)


def nested_subsets(pools: Mapping[str, np.ndarray], sizes: Sequence[int], repeats: int, seed: int = 0,
                   labels: np.ndarray | None = None):
    """Nested random subsets of each group's pool: for every repeat a random order of the pool, and
    its first n elements for every n in `sizes`. With `labels` (indexed by the pool's entries) the
    order is balanced (`balanced_order`): every subset holds the labels in equal numbers (within one).

    Returns (pool, membership, keys): the concatenated pool, an (S, N) 0/1 matrix and one
    (group, repeat, n) key per row.
    """
    sizes = sorted(set(int(s) for s in sizes))
    groups = list(pools)
    for g in groups:
        if len(pools[g]) < sizes[-1]:
            raise ConfigError(f"the scaling test needs {sizes[-1]} examples of group {g!r} but only "
                              f"{len(pools[g])} are available: use smaller sizes")
    pool = np.concatenate([np.asarray(pools[g]) for g in groups])
    offsets = np.cumsum([0] + [len(pools[g]) for g in groups])
    rng = np.random.default_rng(derived_seed(seed, "gradients", "scaling-order"))
    rows, keys = [], []
    for gi, g in enumerate(groups):
        members = np.asarray(pools[g])
        for r in range(repeats):
            if labels is None:
                order = rng.permutation(len(members))
            else:
                order = balanced_order(np.asarray(labels)[members], rng)
            for n in sizes:
                row = np.zeros(len(pool))
                row[offsets[gi] + order[:n]] = 1.0
                rows.append(row)
                keys.append((g, r, n))
    return pool, np.stack(rows), keys


def scaling_table(grad_fn: GradFn, pools: Mapping[str, np.ndarray], sizes: Sequence[int], repeats: int,
                  seed: int = 0, batch_size: int | None = None, labels: np.ndarray | None = None) -> pd.DataFrame:
    """||sum of per-example gradients|| of random subsets of growing size n, per group and layer.

    Tidy: one row per (layer, group, repeat, n) with `norm` = ||sum_i g_i||, `per_example` =
    norm / n, `sq` = sum_i ||g_i||^2 and `coherence` = norm^2 / (n sq). `labels` (indexed by pool
    entries): balance every subset over them (see `nested_subsets`).
    """
    pool, member, keys = nested_subsets(pools, sizes, repeats, seed, labels)
    sums = subset_gradient_sums(grad_fn, pool, member, batch_size)
    gram, sq = sums.gram(), sums.sq_all()
    rows = []
    for layer in sums.layers + [ALL]:
        diag = np.diag(gram[layer])
        for s, (g, r, n) in enumerate(keys):
            norm = math.sqrt(max(diag[s], 0.0))
            rows.append({"layer": layer, "group": g, "repeat": r, "n": n, "norm": norm,
                         "per_example": norm / n, "sq": sq[layer][s],
                         "coherence": _div(diag[s], n * sq[layer][s])})
    return pd.DataFrame(rows)


def fit_slopes(table: pd.DataFrame) -> pd.DataFrame:
    """Log-log slopes of the mean (over repeats) group-sum norm against n, per layer and group,
    and of the per-example ratio (permuted / unpermuted) = slope_permuted - slope_unpermuted.

    Returns one row per layer: slope_<group> for each group, slope_ratio, slope_ratio_local (between
    the two largest n), and the ratio at the smallest and largest n.
    """
    mean = table.groupby(["layer", "group", "n"], sort=False)["norm"].mean().reset_index()
    out = []
    for layer, d in mean.groupby("layer", sort=False):
        row = {"layer": layer}
        curves = {}
        for g, dg in d.groupby("group", sort=False):
            dg = dg.sort_values("n")
            curves[g] = dg.set_index("n")["norm"]
            row[f"slope_{g}"] = float(np.polyfit(np.log(dg["n"]), np.log(dg["norm"]), 1)[0])
        if set(GROUPS) <= set(curves):
            ratio = (curves["permuted"] / curves["unpermuted"]).dropna()
            row["slope_ratio"] = float(np.polyfit(np.log(ratio.index.values), np.log(ratio.values), 1)[0])
            row["slope_ratio_local"] = float(np.log(ratio.iloc[-1] / ratio.iloc[-2])
                                             / np.log(ratio.index[-1] / ratio.index[-2])) if len(ratio) > 1 else float("nan")
            row["ratio_first"], row["ratio_last"] = float(ratio.iloc[0]), float(ratio.iloc[-1])
            row["n_first"], row["n_last"] = int(ratio.index[0]), int(ratio.index[-1])
        out.append(row)
    return pd.DataFrame(out)


def fit_two_components(table: pd.DataFrame) -> pd.DataFrame:
    """Split each group's growth into its incoherent and coherent parts.

    For n examples drawn from a group whose per-example gradients have mean mu and variance
    sigma^2 = E||g - mu||^2, E||sum g_i||^2 = n sigma^2 + n^2 ||mu||^2. A least-squares line through
    (n, mean over repeats of ||sum||^2 / n) gives sigma2 (intercept) and mu2 (slope); `n_cross` =
    sigma2 / mu2 is the n beyond which the coherent part dominates (inf when mu2 <= 0).
    `coherent_share` is n mu2 / (sigma2 + n mu2) at the largest n.
    """
    t = table.assign(y=table["norm"] ** 2 / table["n"])
    mean = t.groupby(["layer", "group", "n"], sort=False)["y"].mean().reset_index()
    rows = []
    for (layer, g), d in mean.groupby(["layer", "group"], sort=False):
        mu2, sigma2 = np.polyfit(d["n"].astype(float), d["y"], 1)
        n_max = float(d["n"].max())
        rows.append({"layer": layer, "group": g, "sigma2": float(sigma2), "mu2": float(mu2),
                     "n_cross": float(sigma2 / mu2) if mu2 > 0 else float("inf"),
                     "coherent_share": float(max(n_max * mu2, 0.0) / (sigma2 + max(n_max * mu2, 0.0)))})
    return pd.DataFrame(rows)


def model_ratio(components: pd.DataFrame, layer: str, n) -> np.ndarray:
    """Per-example ratio permuted / unpermuted that the two-component fit predicts at n per group:
    sqrt((sigma2_p / n + mu2_p) / (sigma2_u / n + mu2_u)), negative mu2 clipped to 0."""
    c = components.set_index(["layer", "group"])
    u, p = c.loc[(layer, "unpermuted")], c.loc[(layer, "permuted")]
    n = np.asarray(n, dtype=float)
    return np.sqrt((p.sigma2 / n + max(p.mu2, 0.0)) / (u.sigma2 / n + max(u.mu2, 0.0)))


def model_total_ratio(components: pd.DataFrame, layer: str, n_unpermuted: int, n_permuted: int) -> float:
    """Ratio of the two groups' parts of the loss gradient that the two-component fit predicts for
    n_unpermuted and n_permuted examples: sqrt(n_p s2_p + n_p^2 mu2_p) / sqrt(n_u s2_u + n_u^2 mu2_u)."""
    c = components.set_index(["layer", "group"])
    u, p = c.loc[(layer, "unpermuted")], c.loc[(layer, "permuted")]
    nu, npm = float(n_unpermuted), float(n_permuted)
    return float(np.sqrt((npm * p.sigma2 + npm ** 2 * max(p.mu2, 0.0)) / (nu * u.sigma2 + nu ** 2 * max(u.mu2, 0.0))))


def output_uniformity(model: BlockNet, data: LabelledData, index: np.ndarray) -> dict:
    """How close the outputs are to uniform (the premise of the derivation near initialisation):
    mean largest softmax probability (1/C when uniform) and the logits' standard deviation."""
    model = model.eval()
    dev = next(model.parameters()).device
    t = torch.as_tensor(index, device=data.x_train.device)
    with torch.no_grad():
        out = model(data.normalise(data.x_train[t]).to(dev)).float()
    return {"max_prob": float(out.softmax(1).max(1).values.mean()), "logit_std": float(out.std()),
            "uniform": 1.0 / out.shape[1]}


def scaling_pools(data: LabelledData, settings: GradientConfig) -> "dict[str, np.ndarray]":
    """Random pools of each group: pool_factor * max(sizes) examples (or all there are), with the
    group's composition of training labels when `settings.balanced` (stratified draw)."""
    perm = data.permuted.cpu().numpy()
    labels = data.train_label.cpu().numpy()
    rng = np.random.default_rng(derived_seed(settings.seed, "gradients", "scaling-pool"))
    want = settings.pool_factor * max(settings.sizes)
    pools = {}
    for g, mask in (("unpermuted", ~perm), ("permuted", perm)):
        idx = np.flatnonzero(mask)
        if want >= len(idx):
            pools[g] = idx
        elif settings.balanced:
            pools[g] = idx[stratified_sample(labels[idx], want, rng)]
        else:
            pools[g] = np.sort(rng.choice(idx, want, replace=False))
    return pools


def scaling_at_epoch(run: Run, settings: GradientConfig, data: LabelledData | None = None) -> pd.DataFrame:
    """The scaling test on a run's checkpoint (`settings.scaling_epoch`, by default initialisation),
    kept in the run's result cache (`scaling_cache`)."""

    def compute() -> pd.DataFrame:
        d = data if data is not None else run.load_data()
        model = run.load_model(settings.scaling_epoch, device=d.x_train.device)
        labels = d.train_label.cpu().numpy() if settings.balanced else None
        table = scaling_table(model_grad_fn(model, d, settings.batch_size, settings.num_threads),
                              scaling_pools(d, settings),
                              settings.sizes, settings.repeats, settings.seed, settings.batch_size, labels)
        table.insert(0, "epoch", settings.scaling_epoch)
        return table

    return scaling_cache(run, settings).get(compute)


# ---------------------------------------------------------------------------------------------
# Claim 5's numbers

def verdict(table: pd.DataFrame, metrics: pd.DataFrame, early_stop: int, layer: str = ALL,
            small: float = THRESHOLDS.gradient_small, growth: float = THRESHOLDS.gradient_growth,
            full_init: pd.DataFrame | None = None, memorized: float = THRESHOLDS.memorized) -> dict:
    """Numbers for the paper's claim 5 on one layer (default: the whole network).

    ratio_init / ratio_early / ratio_end: permuted / unpermuted part of the loss gradient at
    initialization, at the early-stopping epoch and at the end; ratio_max and its epoch.
    The memorization phase is the analysed epochs after the early-stopping epoch at which the
    permuted examples are fitted to their training labels between MEMORIZATION_LEVELS[0] and `memorized`:
    `ratio_memorizing` is the mean ratio there, `growth` = ratio_memorizing / ratio_init, and the
    mean accuracies there. `small_init`: the ratio at initialization is below `small`, measured on
    `full_init` (the split at epoch 0 on the whole training subset) when given, else on the sample;
    `grows`: growth >= the `growth` threshold (growth compares epochs of the same sample).
    """
    d = table[table["layer"] == layer].set_index("epoch").sort_index()
    r = d["ratio"]
    e0, e_end = int(r.index[0]), int(r.index[-1])
    out = {"ratio_init": float(r.iloc[0]), "ratio_end": float(r.iloc[-1]),
           "ratio_early": float(r.get(early_stop, float("nan"))), "ratio_max": float(r.max()),
           "epoch_max": int(r.idxmax()), "epoch_init": e0, "epoch_end": e_end, "early_stop": early_stop,
           "coherence_unpermuted_init": float(d["coherence_unpermuted"].iloc[0]),
           "coherence_permuted_init": float(d["coherence_permuted"].iloc[0]),
           "cosine_init": float(d["cosine"].iloc[0]), "n_sample": int(d["n"].iloc[0])}
    m = metrics.set_index("epoch")
    memo = m["acc_permuted_train"].reindex(r.index)
    phase = r.index[(r.index > early_stop) & (memo >= MEMORIZATION_LEVELS[0]).values & (memo < memorized).values]
    out["epochs_memorizing"] = [int(e) for e in phase]
    nan = float("nan")
    out["ratio_memorizing"] = float(r.loc[phase].mean()) if len(phase) else nan
    out["acc_unpermuted_memorizing"] = float(m["acc_unpermuted"].reindex(phase).mean()) if len(phase) else nan
    out["acc_permuted_memorizing"] = float(memo.loc[phase].mean()) if len(phase) else nan
    out["growth"] = out["ratio_memorizing"] / out["ratio_init"] if out["ratio_init"] > 0 else nan
    out["ratio_init_full"] = (float(full_init.set_index("layer").loc[layer, "ratio"])
                              if full_init is not None else nan)
    out["cosine_init_full"] = (float(full_init.set_index("layer").loc[layer, "cosine"])
                               if full_init is not None else nan)
    # the rule of claim 5 (False for a nan growth: no memorization phase analysed)
    claim = gradient_claim(out["ratio_init_full"] if full_init is not None else out["ratio_init"], out["growth"],
                           dataclasses.replace(THRESHOLDS, gradient_small=small, gradient_growth=growth))
    out["small_init"], out["grows"] = claim["small_init"], claim["grows"]
    return out
