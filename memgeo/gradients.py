"""Why networks do not memorize early: the gradient contributions of permuted and unpermuted examples.

**Convention (used everywhere in this module, its report and its page): per-example means.** A
group S (the unpermuted or the permuted examples) is represented by the mean of its examples'
gradients, g_S = (1/n_S) sum_{i in S} g_i, and every "norm" and "ratio" is of these means:
``ratio`` = ||g_permuted|| / ||g_unpermuted||. (The group's share of the gradient of the mean
training loss over n examples is (n_S / n) g_S, so a ratio of group sums is (n_P / n_U) times
this one: the fraction of permuted labels, not the gradients, would set it.) The scaling test
records ||sum_S g_i|| as well, but judges the norm of the mean, ||g_S||, against n.

**Parts.** The derivative of an example's cross-entropy with respect to its logits z is p - e_y
(p = softmax(z), e_y the one-hot training label). It splits into

- the **label-dependent** part u - e_y (u = 1/C in every class), backpropagated: J^T (u - e_y) =
  grad of (mean_c z_c - z_y). It holds the label alone, and sums to zero over a set with balanced
  labels; the paper's argument concerns this part;
- the **label-independent** part p - u, backpropagated: J^T (p - u) = grad of (logsumexp z -
  mean_c z_c). It depends on the image alone (zero when the outputs are uniform).

(The backprop of -e_y alone, the literal "label" term, would carry -J^T u = -grad mean_c z_c,
the same in both groups whatever the labels; moving it into the label-independent part keeps the
label-dependent part free of any label-independent mean.) ``part`` is "total" (their sum, the
loss gradient), "dependent" or "independent"; the three come from one vmapped Jacobian per example.

For every part, layer (parameters grouped by `BlockNet.block_of`, and "all") and group this module
measures the norm of the group's mean gradient (``mean_*``), the ratio permuted / unpermuted, the
cosine between the two groups' means, the coherence ||mean g||^2 / mean ||g||^2 of each group (1
when all per-example gradients are identical, 1/n_g when they are mutually orthogonal) and the
root-mean-square per-example norm (``rms_*``).

**BatchNorm.** Per-example gradients come from `torch.func` in eval mode: BatchNorm uses running
statistics, so every example's gradient depends on that example alone (train-mode BatchNorm
couples the examples of a batch). At epoch 0 the stored running statistics are placeholders
(mean 0, variance 1: BatchNorm is the identity), never computed from data; with them activations
shrink layer by layer and the outputs are nearly uniform, so the derivation's premise would hold
by construction. The first training steps see batch statistics instead. So at epoch 0 the
statistics are **recomputed** on the training images (`memgeo.rewind.recompute_bn_stats`); the
identity-BatchNorm numbers are kept beside them (``bn="saved"``). Later checkpoints keep their
own running statistics, which training has estimated from the data (``bn="recompute_init"``, the
default; ``"recompute_all"`` recomputes them at every epoch).

The primitive `subset_gradient_sums` (`memgeo.per_example`) accumulates, chunk by chunk, the
gradient sums and sums of squared per-example norms of many subsets of a pool in one pass. The
epoch analysis uses two subsets (a fixed sample, stratified by group and training label); the
scaling test nested random subsets of each group whose sizes are multiples of the class count and
which hold every training label equally often. Results are tidy tables in the run's result cache
(`memgeo.cache`, under ``gradients/``); only what is missing is computed.
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
                          functional_state, per_example_gradients, subset_gradient_sums)
from .rewind import recompute_bn_stats
from .runs import Run

GROUPS = ("unpermuted", "permuted")
PARTS = ("total", "dependent", "independent")      # loss gradient, label-dependent, label-independent
BN_MODES = ("recompute_init", "saved", "recompute_all")
CACHE_VERSION = 3     # bump when the numbers a cache key stands for change (3: parts, BN, means)


# ---------------------------------------------------------------------------------------------
# Settings: `config.GradientConfig` (sized per preset in `config._presets`, `Preset.gradients`)

GradientSettings = GradientConfig     # its former name
THRESHOLDS = Thresholds()             # the defaults of the verdicts' thresholds


def settings_for(p: Preset, **overrides) -> GradientConfig:
    """The preset's gradient settings (`p.gradients`) with `overrides` applied."""
    return dataclasses.replace(p.gradients, **overrides)


def class_sizes(sizes: Sequence[int], num_classes: int, strict: bool = False) -> tuple[int, ...]:
    """Scaling-test subset sizes as multiples of the class count, so that every subset holds each
    training label exactly n / C times: each size rounded to the nearest multiple (at least C),
    duplicates dropped. `strict`: refuse sizes that are not multiples instead of rounding them."""
    C = int(num_classes)
    out = tuple(sorted({max(C, C * round(int(s) / C)) for s in sizes}))
    if strict and out != tuple(sorted(set(int(s) for s in sizes))):
        raise ConfigError(f"gradients.sizes={tuple(sizes)}: the scaling test needs multiples of the class "
                          f"count {C}, e.g. {tuple(C * 2 ** k for k in range(1, 7))}")
    if len(out) < 2:
        raise ConfigError(f"gradients.sizes={tuple(sizes)} gives fewer than two distinct multiples of the "
                          f"class count {C} ({out}): give sizes spanning at least two multiples")
    return out


# ---------------------------------------------------------------------------------------------
# Per-example gradients split into parts

def per_example_parts(model: BlockNet, x: torch.Tensor, y: torch.Tensor) -> "dict[str, torch.Tensor]":
    """Per-example gradients of the three parts (see the module docstring), flattened per layer:
    {"<part>/<layer>": (B, P_layer)}. Eval mode through torch.func; `x` a float, normalised batch."""
    from torch.func import functional_call, jacrev, vmap

    groups, params, buffers = functional_state(model)

    def two(p, b, xi, yi):
        z = functional_call(model, (p, b), (xi[None],))[0]
        zbar, zy = z.mean(), z.gather(0, yi[None])[0]      # gather: indexing by a tensor breaks vmap
        return torch.stack([torch.logsumexp(z, 0) - zbar, zbar - zy])   # independent, dependent

    j = vmap(jacrev(two), in_dims=(None, None, 0, 0))(params, buffers, x, y)
    n, out = x.shape[0], {}
    for layer, names in groups.items():
        flat = torch.cat([j[k].reshape(n, 2, -1) for k in names], dim=2)
        out[f"independent/{layer}"], out[f"dependent/{layer}"] = flat[:, 0], flat[:, 1]
        out[f"total/{layer}"] = flat[:, 0] + flat[:, 1]
    return out


def parts_grad_fn(model: BlockNet, data: LabelledData, batch_size: int = 64, num_threads: int = 0) -> GradFn:
    """`per_example_parts` over the training subset (indices -> {"<part>/<layer>": (B, P)}), against
    the training labels, in eval mode and contiguous memory format (the vmapped convolutions run
    several times faster so on the CPU). `num_threads` > 0: torch's CPU threads during each call
    (restored after; small vmapped convolutions scale poorly over threads)."""
    model = model.to(memory_format=torch.contiguous_format).eval()
    first = next(model.parameters())
    dev, dtype = first.device, first.dtype

    def fn(idx: np.ndarray) -> "dict[str, torch.Tensor]":
        t = torch.as_tensor(idx, device=data.x_train.device)
        x = data.normalise(data.x_train[t], dtype=dtype).to(dev).contiguous()
        before = torch.get_num_threads()
        if num_threads > 0 and dev.type == "cpu":
            torch.set_num_threads(num_threads)
        try:
            return per_example_parts(model, x, data.train_label[t].to(dev))
        finally:
            torch.set_num_threads(before)

    fn.batch_size = batch_size
    return fn


def split_parts(sums: SubsetSums) -> "dict[str, SubsetSums]":
    """The sums of a parts function ("<part>/<layer>" keys) as one SubsetSums per part; a plain
    gradient function's sums ("<layer>" keys) are the "total" part."""
    out: dict[str, SubsetSums] = {}
    for key in sums.sums:
        part, _, layer = key.rpartition("/")
        s = out.setdefault(part or "total", SubsetSums({}, {}, sums.counts))
        s.sums[layer], s.sq[layer] = sums.sums[key], sums.sq[key]
    return out


# ---------------------------------------------------------------------------------------------
# The split of the gradient into the two groups

@dataclass
class GradientSplit:
    """Per part: the gradient sums of the two groups (subset 0: unpermuted, 1: permuted)."""

    parts: "dict[str, SubsetSums]"
    n: int

    def mean(self, group: str, layer: str, part: str = "total") -> torch.Tensor:
        """The group's mean per-example gradient g_S = (1/n_S) sum_{i in S} g_i."""
        s = self.parts[part]
        k = GROUPS.index(group)
        return s.sums[layer][k] / int(s.counts[k])

    def table(self) -> pd.DataFrame:
        """One row per part x layer (and "all"): norms of the group means, ratio, cosine, coherence."""
        rows = []
        for part, s in self.parts.items():
            gram, sq = s.gram(), s.sq_all()
            nu, npm = (int(c) for c in s.counts)
            for layer in s.layers + [ALL]:
                G, q = gram[layer], sq[layer]
                su, sp = math.sqrt(max(G[0, 0], 0.0)), math.sqrt(max(G[1, 1], 0.0))
                row = {"part": part, "layer": layer, "n": self.n, "n_unpermuted": nu, "n_permuted": npm,
                       "mean_all": math.sqrt(max(G[0, 0] + G[1, 1] + 2 * G[0, 1], 0.0)) / self.n,
                       "mean_unpermuted": _div(su, nu), "mean_permuted": _div(sp, npm),
                       "cosine": _div(G[0, 1], su * sp),
                       "coherence_unpermuted": _div(G[0, 0], nu * q[0]),
                       "coherence_permuted": _div(G[1, 1], npm * q[1]),
                       "rms_unpermuted": math.sqrt(_div(q[0], nu)), "rms_permuted": math.sqrt(_div(q[1], npm))}
                row["ratio"] = _div(row["mean_permuted"], row["mean_unpermuted"])
                rows.append(row)
        return pd.DataFrame(rows)


def _div(a: float, b: float) -> float:
    return float(a / b) if b else float("nan")


def gradient_split(grad_fn: GradFn, index: np.ndarray, permuted: np.ndarray,
                   batch_size: int | None = None) -> GradientSplit:
    """Split the per-example gradients of examples `index` by the boolean `permuted` (per index)."""
    permuted = np.asarray(permuted, dtype=bool)
    member = np.stack([~permuted, permuted])
    sums = subset_gradient_sums(grad_fn, np.asarray(index), member, batch_size)
    return GradientSplit(split_parts(sums), len(index))


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
    """The fixed random sample of the training subset used at every epoch (sorted; all if 0),
    stratified by (permuted, training label): it has the composition of the whole training subset."""
    n = len(data.x_train)
    if n_examples == 0 or n_examples >= n:
        return np.arange(n)
    strata = data.permuted.cpu().numpy().astype(np.int64) * 100_000 + data.train_label.cpu().numpy()
    return stratified_sample(strata, n_examples, np.random.default_rng(derived_seed(seed, "gradients", "sample")))


def model_at(run: Run, epoch: int, data: LabelledData, bn: str = "recompute_init") -> BlockNet:
    """A checkpoint in eval mode with the BatchNorm statistics `bn` asks for (see BN_MODES and the
    module docstring): recomputed on the training images at epoch 0 ("recompute_init") or at every
    epoch ("recompute_all"), or the stored ones ("saved"; the identity at epoch 0)."""
    if bn not in BN_MODES:
        raise ConfigError(f"bn={bn!r}: use one of {BN_MODES}")
    model = run.load_model(epoch, device=data.x_train.device)
    if bn == "recompute_all" or (bn == "recompute_init" and epoch == 0):
        recompute_bn_stats(model, data)
    return model.eval()


def split_at_epoch(run: Run, epoch: int, data: LabelledData, settings: GradientConfig,
                   bn: str = "recompute_init") -> GradientSplit:
    """The gradient split (all parts) of one checkpoint of a run, on the settings' fixed sample."""
    model = model_at(run, epoch, data, bn)
    idx = gradient_sample(data, settings.n_examples, settings.seed)
    return gradient_split(parts_grad_fn(model, data, settings.batch_size, settings.num_threads), idx,
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


def epochs_cache(run: Run, settings: GradientConfig, bn: str = "recompute_init") -> ResultCache:
    """Cache entry of the epoch table: keyed by the sample (size and seed) and the BatchNorm mode;
    epochs are its chunks."""
    return ResultCache.of_run(run, "gradients", {"table": "epochs", "n_examples": settings.n_examples, "bn": bn},
                              seed=settings.seed, version=CACHE_VERSION)


def scaling_cache(run: Run, settings: GradientConfig, sizes: Sequence[int], bn: str = "recompute_init") -> ResultCache:
    """Cache entry of the scaling test: everything that draws its subsets, its checkpoint and BN mode."""
    return ResultCache.of_run(run, "gradients", {
        "table": "scaling", "sizes": [int(s) for s in sizes], "repeats": settings.repeats,
        "pool_factor": settings.pool_factor, "epoch": settings.scaling_epoch, "balanced": settings.balanced,
        "bn": bn}, seed=settings.seed, version=CACHE_VERSION)


def epoch_rows(run: Run, epoch: int, data: LabelledData, settings: GradientConfig,
               bn: str = "recompute_init") -> pd.DataFrame:
    """The split table (`GradientSplit.table`) of one checkpoint, with its epoch as first column."""
    t = split_at_epoch(run, epoch, data, settings, bn).table()
    t.insert(0, "epoch", epoch)
    return t


def gradients_over_epochs(run: Run, settings: GradientConfig, epochs: Sequence[int] | None = None,
                          data: LabelledData | None = None, progress: bool = False,
                          bn: str = "recompute_init") -> pd.DataFrame:
    """Tidy table (one row per epoch x part x layer) of the gradient split over a run's checkpoints.

    Kept in the run's result cache (`epochs_cache`), one chunk per epoch: only missing epochs are
    computed, and the table is rewritten (atomically) after each one, so an interrupted analysis
    resumes.
    """
    if bn not in BN_MODES:
        raise ConfigError(f"bn={bn!r}: use one of {BN_MODES}")
    epochs = sorted(set(epochs if epochs is not None else select_epochs(run, settings)))
    cache = epochs_cache(run, settings, bn)
    table = cache.read()
    todo = cache.missing("table", epochs, ["epoch"])
    if todo:
        data = data if data is not None else run.load_data()
        bar = _bar(progress, len(todo), f"gradients [{run.path.name}]")
        for e in todo:
            table = cache.add("table", epoch_rows(run, e, data, settings, bn), ["epoch"], order=["epoch"])
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
    """Gradient sums of random subsets of growing size n, per part, layer and group.

    Tidy: one row per (part, layer, group, repeat, n) with `norm` = ||sum_i g_i||, `mean` = norm / n
    (the norm of the group mean, the quantity judged), `sq` = sum_i ||g_i||^2 and `coherence` =
    norm^2 / (n sq). `labels` (indexed by pool entries): balance every subset over them.
    """
    pool, member, keys = nested_subsets(pools, sizes, repeats, seed, labels)
    parts = split_parts(subset_gradient_sums(grad_fn, pool, member, batch_size))
    rows = []
    for part, sums in parts.items():
        gram, sq = sums.gram(), sums.sq_all()
        for layer in sums.layers + [ALL]:
            diag = np.diag(gram[layer])
            for s, (g, r, n) in enumerate(keys):
                norm = math.sqrt(max(diag[s], 0.0))
                rows.append({"part": part, "layer": layer, "group": g, "repeat": r, "n": n, "norm": norm,
                             "mean": norm / n, "sq": sq[layer][s], "coherence": _div(diag[s], n * sq[layer][s])})
    return pd.DataFrame(rows)


def fit_slopes(table: pd.DataFrame) -> pd.DataFrame:
    """Each group's own log-log slope of the norm of its mean gradient (mean over repeats) against
    n, per part and layer: 0 for a coherent group (the mean converges), -1/2 for an incoherent one
    (the mean of n independent zero-mean gradients). One row per (part, layer): slope_<group>."""
    mean = table.groupby(["part", "layer", "group", "n"], sort=False)["mean"].mean().reset_index()
    out = []
    for (part, layer), d in mean.groupby(["part", "layer"], sort=False):
        row = {"part": part, "layer": layer}
        for g, dg in d.groupby("group", sort=False):
            row[f"slope_{g}"] = float(np.polyfit(np.log(dg["n"]), np.log(dg["mean"]), 1)[0])
        out.append(row)
    return pd.DataFrame(out)


def fit_two_components(table: pd.DataFrame) -> pd.DataFrame:
    """Split each group's mean gradient into its coherent and incoherent parts.

    For n examples drawn from a group whose per-example gradients have mean mu and variance
    sigma^2 = E||g - mu||^2, E||mean g||^2 = sigma^2 / n + ||mu||^2. A least-squares line through
    (n, mean over repeats of n ||mean g||^2) gives sigma2 (intercept) and mu2 (slope); `n_cross` =
    sigma2 / mu2 is the n beyond which the coherent part dominates (inf when mu2 <= 0).
    `coherent_share` = mu2 / (sigma2 / n + mu2) at the largest n tested (mu2 clipped at 0): the
    fraction of E||mean g||^2 there that is the group's common mean. One row per (part, layer, group).
    """
    t = table.assign(y=table["n"] * table["mean"] ** 2)
    mean = t.groupby(["part", "layer", "group", "n"], sort=False)["y"].mean().reset_index()
    rows = []
    for (part, layer, g), d in mean.groupby(["part", "layer", "group"], sort=False):
        mu2, sigma2 = np.polyfit(d["n"].astype(float), d["y"], 1)
        n_max, m = float(d["n"].max()), max(float(mu2), 0.0)
        rows.append({"part": part, "layer": layer, "group": g, "sigma2": float(sigma2), "mu2": float(mu2),
                     "n_cross": float(sigma2 / mu2) if mu2 > 0 else float("inf"),
                     "coherent_share": _div(m, sigma2 / n_max + m)})
    return pd.DataFrame(rows)


def model_mean_norm(components: pd.DataFrame, part: str, layer: str, group: str, n) -> np.ndarray:
    """The norm of a group's mean gradient that the two-component fit predicts at n:
    sqrt(sigma2 / n + max(mu2, 0))."""
    c = components.set_index(["part", "layer", "group"]).loc[(part, layer, group)]
    return np.sqrt(np.maximum(c.sigma2 / np.asarray(n, dtype=float) + max(c.mu2, 0.0), 0.0))


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


def uniformity_at_init(run: Run, data: LabelledData, settings: GradientConfig) -> pd.DataFrame:
    """`output_uniformity` at initialisation on the settings' sample, with the stored BatchNorm
    statistics (the identity; row "saved") and with them recomputed on the training images (row
    "recompute_init"), indexed by `bn`; cached in the run folder."""
    cache = ResultCache.of_run(run, "gradients", {"table": "uniformity", "n_examples": settings.n_examples},
                               seed=settings.seed, version=CACHE_VERSION)

    def compute() -> pd.DataFrame:
        sample = gradient_sample(data, settings.n_examples, settings.seed)
        return pd.DataFrame([{"bn": bn, **output_uniformity(model_at(run, 0, data, bn), data, sample)}
                             for bn in ("saved", "recompute_init")])

    return cache.get(compute).set_index("bn")


def scaling_pools(data: LabelledData, settings: GradientConfig, sizes: Sequence[int]) -> "dict[str, np.ndarray]":
    """Random pools of each group: pool_factor * max(sizes) examples (or all there are), with the
    group's composition of training labels when `settings.balanced` (stratified draw)."""
    perm = data.permuted.cpu().numpy()
    labels = data.train_label.cpu().numpy()
    rng = np.random.default_rng(derived_seed(settings.seed, "gradients", "scaling-pool"))
    want = settings.pool_factor * max(sizes)
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


def scaling_at_epoch(run: Run, settings: GradientConfig, data: LabelledData | None = None,
                     bn: str = "recompute_init", strict_sizes: bool = False) -> pd.DataFrame:
    """The scaling test on a run's checkpoint (`settings.scaling_epoch`, by default initialisation,
    where "recompute_init" recomputes BatchNorm), with `settings.sizes` made multiples of the class
    count (`class_sizes`), kept in the run's result cache (`scaling_cache`)."""
    sizes = class_sizes(settings.sizes, run.num_classes, strict=strict_sizes)

    def compute() -> pd.DataFrame:
        d = data if data is not None else run.load_data()
        model = model_at(run, settings.scaling_epoch, d, bn)
        labels = d.train_label.cpu().numpy() if settings.balanced else None
        table = scaling_table(parts_grad_fn(model, d, settings.batch_size, settings.num_threads),
                              scaling_pools(d, settings, sizes), sizes, settings.repeats, settings.seed,
                              settings.batch_size, labels)
        table.insert(0, "epoch", settings.scaling_epoch)
        return table

    return scaling_cache(run, settings, sizes, bn).get(compute)


# ---------------------------------------------------------------------------------------------
# Claim 5's numbers (one training seed)

STATS = ("gradient_ratio_init", "gradient_ratio_init_identity_bn", "gradient_ratio_init_total",
         "gradient_ratio_learning", "gradient_ratio_memorizing", "gradient_growth",
         "gradient_slope_permuted", "gradient_slope_unpermuted",
         "gradient_coherent_share_permuted", "gradient_coherent_share_unpermuted")


def ratios(table: pd.DataFrame, part: str = "dependent", layer: str = ALL, column: str = "ratio") -> pd.Series:
    """A column of the epoch table for one part and layer, indexed by epoch."""
    d = table[(table["part"] == part) & (table["layer"] == layer)]
    if d.empty:
        raise ValueError(f"the table has no rows for part {part!r} and layer {layer!r}")
    return d.set_index("epoch")[column].sort_index()


def phase_epochs(epochs: Sequence[int], metrics: pd.DataFrame, early_stop: int,
                 memorized: float = THRESHOLDS.memorized) -> "dict[str, list[int]]":
    """The analysed epochs of the two phases compared. "learning": epochs 1 to the early-stopping
    epoch (not initialisation, whose BatchNorm and outputs differ from every trained checkpoint's).
    "memorizing": epochs after the early-stopping epoch at which the permuted examples are fitted
    to their training labels between MEMORIZATION_LEVELS[0] and `memorized` (being memorized)."""
    acc = metrics.set_index("epoch")["acc_permuted_train"]
    memo = [int(e) for e in epochs if e > early_stop and MEMORIZATION_LEVELS[0] <= acc.get(e, np.nan) < memorized]
    return {"learning": [int(e) for e in epochs if 1 <= e <= early_stop], "memorizing": memo}


def _mean_at(s: pd.Series, epochs: Sequence[int]) -> float:
    return float(s.loc[list(epochs)].mean()) if len(epochs) else float("nan")


def claim_stats(table: pd.DataFrame, init: pd.DataFrame, init_identity: pd.DataFrame, scaling: pd.DataFrame,
                metrics: pd.DataFrame, early_stop: int, layer: str = ALL,
                memorized: float = THRESHOLDS.memorized) -> dict:
    """The numbers one training seed contributes to claim 5 (names in STATS; nan when undefined),
    on one layer (default: the whole network). All ratios are of per-example means (permuted /
    unpermuted), of the label-dependent part unless named "total".

    `table`: gradients_over_epochs (the sample); `init` / `init_identity`: the split at epoch 0
    with BatchNorm recomputed / identity (the whole training subset); `scaling`: scaling_at_epoch.
    """
    dep = ratios(table, "dependent", layer)
    ph = phase_epochs(list(dep.index), metrics, early_stop, memorized)
    learning, memorizing = _mean_at(dep, ph["learning"]), _mean_at(dep, ph["memorizing"])
    slopes = fit_slopes(scaling).set_index(["part", "layer"]).loc[("dependent", layer)]
    share = fit_two_components(scaling).set_index(["part", "layer", "group"])["coherent_share"]
    return {"gradient_ratio_init": float(ratios(init, "dependent", layer).loc[0]),
            "gradient_ratio_init_identity_bn": float(ratios(init_identity, "dependent", layer).loc[0]),
            "gradient_ratio_init_total": float(ratios(init, "total", layer).loc[0]),
            "gradient_ratio_learning": learning, "gradient_ratio_memorizing": memorizing,
            "gradient_growth": _div(memorizing, learning) if learning > 0 else float("nan"),
            "gradient_slope_permuted": float(slopes["slope_permuted"]),
            "gradient_slope_unpermuted": float(slopes["slope_unpermuted"]),
            "gradient_coherent_share_permuted": float(share.loc[("dependent", layer, "permuted")]),
            "gradient_coherent_share_unpermuted": float(share.loc[("dependent", layer, "unpermuted")])}
