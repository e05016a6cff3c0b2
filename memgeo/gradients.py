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
the training labels. Results are cached as tidy CSV tables in the run
folder, under ``gradients/``, and only what is missing is computed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from .config import ConfigError, Preset
from .data import LabelledData, derived_seed
from .models import BlockNet
from .cache import ResultCache
from .runs import Run

GROUPS = ("unpermuted", "permuted")
ALL = "all"   # pseudo-layer: every parameter of the network together

GradFn = Callable[[np.ndarray], "dict[str, torch.Tensor]"]


# ---------------------------------------------------------------------------------------------
# Settings

@dataclass(frozen=True)
class GradientSettings:
    """What the gradient analysis computes (the epoch table and the scaling test)."""

    n_examples: int = 1024          # fixed random sample of the training subset (0 = all of it)
    epochs: str = "auto"            # "auto" (init, log-spaced, early stop, end) or "0,5,40"
    max_epochs: int = 9             # how many epochs "auto" picks (early stop and end included)
    sizes: tuple[int, ...] = (16, 32, 64, 128, 256, 512)   # n for the scaling test
    repeats: int = 4                # random nested subsets per group in the scaling test
    pool_factor: int = 2            # scaling pool per group = pool_factor * max(sizes)
    scaling_epoch: int = 0          # the checkpoint the scaling test uses (0 = initialisation)
    balanced: bool = True           # scaling subsets balanced over training labels (within one)
    seed: int = 0
    batch_size: int = 64            # examples per vmap call (memory only; not in the cache key)
    num_threads: int = 1            # CPU threads for per-example gradients (0: torch's setting; not in the key)

    def __post_init__(self) -> None:
        if self.n_examples < 0:
            raise ConfigError(f"n_examples={self.n_examples} must be >= 0 (0 means the whole training subset)")
        if not self.sizes or min(self.sizes) < 1:
            raise ConfigError(f"sizes={self.sizes}: give positive subset sizes")
        if self.repeats < 1 or self.pool_factor < 1 or self.batch_size < 1 or self.max_epochs < 2:
            raise ConfigError("repeats, pool_factor and batch_size must be >= 1 and max_epochs >= 2")
        if self.num_threads < 0:
            raise ConfigError(f"num_threads={self.num_threads} must be >= 0 (0 keeps torch's setting)")


def settings_for(p: Preset, **overrides) -> GradientSettings:
    """Gradient settings sized for a preset (`smoke` seconds, `cpu` a few minutes, `paper` a GPU)."""
    base = {"smoke": dict(n_examples=200, max_epochs=3, repeats=3),
            "cpu": dict(n_examples=1024, max_epochs=9, repeats=4),
            "paper": dict(n_examples=10000, max_epochs=12, repeats=8)}.get(p.name, {})
    base["sizes"] = tuple(p.grad_sizes)
    base.update(overrides)
    return GradientSettings(**base)


# ---------------------------------------------------------------------------------------------
# Per-example gradients

def layer_parameters(model: BlockNet) -> "dict[str, list[str]]":
    """Trainable parameter names grouped by the layer that owns them, in layer order."""
    out: dict[str, list[str]] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            out.setdefault(model.block_of(name), []).append(name)
    return out


def per_example_gradients(model: BlockNet, x: torch.Tensor, y: torch.Tensor) -> "dict[str, torch.Tensor]":
    """Per-example gradients of the cross-entropy of (x, y), flattened per layer: {layer: (B, P_layer)}.

    Eval mode (BatchNorm on running statistics) through torch.func; `x` is a float, normalised batch.
    """
    from torch.func import functional_call, grad, vmap

    if model.training:
        raise ValueError("per-example gradients need the model in eval mode (call model.eval()): "
                         "train-mode BatchNorm couples the examples of a batch")
    groups = layer_parameters(model)
    params = {k: v.detach() for k, v in model.named_parameters() if v.requires_grad}
    buffers = {k: v.detach() for k, v in model.named_buffers()}

    def loss_one(p, b, xi, yi):
        return F.cross_entropy(functional_call(model, (p, b), (xi[None],)), yi[None])

    g = vmap(grad(loss_one), in_dims=(None, None, 0, 0))(params, buffers, x, y)
    n = x.shape[0]
    return {layer: torch.cat([g[k].reshape(n, -1) for k in names], dim=1) for layer, names in groups.items()}


def model_grad_fn(model: BlockNet, data: LabelledData, batch_size: int = 64, num_threads: int = 0) -> GradFn:
    """Per-example gradient function over the training subset (indices -> {layer: (B, P)}),
    against the training labels, in eval mode and contiguous memory format.

    `num_threads` > 0 sets torch's CPU threads during each call (restored after): the vmapped
    per-example convolutions are small and scale poorly over threads, and on a shared CPU one
    thread was 2-8x faster per example than two (4.9 ms against 10-40 ms on the cpu preset's model).
    """
    model = model.to(memory_format=torch.contiguous_format).eval()
    first = next(model.parameters())
    dev, dtype = first.device, first.dtype

    def fn(idx: np.ndarray) -> "dict[str, torch.Tensor]":
        t = torch.as_tensor(idx, device=data.x_train.device)
        x = data.normalise(data.x_train[t], dtype=dtype).to(dev).contiguous()
        if num_threads <= 0 or dev.type != "cpu":
            return per_example_gradients(model, x, data.train_label[t].to(dev))
        before = torch.get_num_threads()
        torch.set_num_threads(num_threads)
        try:
            return per_example_gradients(model, x, data.train_label[t].to(dev))
        finally:
            torch.set_num_threads(before)

    fn.batch_size = batch_size
    return fn


@dataclass
class SubsetSums:
    """Per layer: `sums[layer]` (S, P) gradient sum of every subset, `sq[layer]` (S,) sum of
    squared per-example norms; `counts` (S,) subset sizes."""

    sums: "dict[str, torch.Tensor]"
    sq: "dict[str, torch.Tensor]"
    counts: np.ndarray

    @property
    def layers(self) -> list[str]:
        return list(self.sums)

    def gram(self) -> "dict[str, np.ndarray]":
        """Per layer (and "all"): the (S, S) matrix of dot products between subset sums."""
        out = {k: (v.double() @ v.double().T).cpu().numpy() for k, v in self.sums.items()}
        out[ALL] = sum(out.values())
        return out

    def sq_all(self) -> "dict[str, np.ndarray]":
        out = {k: v.double().cpu().numpy() for k, v in self.sq.items()}
        out[ALL] = sum(out.values())
        return out


def subset_gradient_sums(grad_fn: GradFn, pool: np.ndarray, membership: np.ndarray,
                         batch_size: int | None = None) -> SubsetSums:
    """Gradient sums of many subsets of a pool in one pass over its per-example gradients.

    `pool` (N,) indices passed to `grad_fn`; `membership` (S, N) 0/1: subset s holds pool[j] when
    membership[s, j]. Only pool examples in at least one subset are evaluated, `batch_size` at a time.
    """
    pool = np.asarray(pool)
    member = np.asarray(membership, dtype=np.float64)
    if member.ndim != 2 or member.shape[1] != len(pool):
        raise ValueError(f"membership must be (subsets, {len(pool)}), got {member.shape}")
    used = np.flatnonzero(member.any(0))
    bs = batch_size or getattr(grad_fn, "batch_size", 64)
    sums: dict[str, torch.Tensor] = {}
    sq: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for start in range(0, len(used), bs):
            cols = used[start:start + bs]
            g = grad_fn(pool[cols])
            for layer, gl in g.items():
                m = torch.as_tensor(member[:, cols], dtype=gl.dtype, device=gl.device)
                s, q = m @ gl, m @ gl.pow(2).sum(1)
                if layer in sums:
                    sums[layer] += s
                    sq[layer] += q
                else:
                    sums[layer], sq[layer] = s, q
    if not sums:
        raise ValueError("every subset is empty")
    return SubsetSums(sums, sq, member.sum(1).astype(int))


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


def coherence(per_example: torch.Tensor) -> float:
    """||sum_i g_i||^2 / (n sum_i ||g_i||^2) of an (n, P) stack: 1 identical, 1/n orthogonal."""
    g = per_example.double()
    return float(g.sum(0).pow(2).sum() / (len(g) * g.pow(2).sum()))


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


def split_at_epoch(run: Run, epoch: int, data: LabelledData, settings: GradientSettings) -> GradientSplit:
    """The gradient split for one checkpoint of a run, on the settings' fixed sample."""
    model = run.load_model(epoch, device=data.x_train.device)
    idx = gradient_sample(data, settings.n_examples, settings.seed)
    return gradient_split(model_grad_fn(model, data, settings.batch_size, settings.num_threads), idx,
                          data.permuted.cpu().numpy()[idx])


# ---------------------------------------------------------------------------------------------
# Over the saved epochs of a run (cached)

MEMORIZATION_LEVELS = (0.25, 0.5, 0.9)   # "auto" epochs: where the permuted examples reach these


def select_epochs(run: Run, settings: GradientSettings) -> list[int]:
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


def epochs_cache(run: Run, settings: GradientSettings) -> ResultCache:
    """Cache entry of the epoch table: keyed by the sample (size and seed); epochs are its chunks."""
    return ResultCache.of_run(run, "gradients", {"table": "epochs", "n_examples": settings.n_examples},
                              seed=settings.seed, version=CACHE_VERSION)


def scaling_cache(run: Run, settings: GradientSettings) -> ResultCache:
    """Cache entry of the scaling test: keyed by everything that draws its subsets and its checkpoint."""
    return ResultCache.of_run(run, "gradients", {
        "table": "scaling", "sizes": list(settings.sizes), "repeats": settings.repeats,
        "pool_factor": settings.pool_factor, "epoch": settings.scaling_epoch, "balanced": settings.balanced},
        seed=settings.seed, version=CACHE_VERSION)


def epoch_rows(run: Run, epoch: int, data: LabelledData, settings: GradientSettings) -> pd.DataFrame:
    """The split table (`GradientSplit.table`) of one checkpoint, with its epoch as first column."""
    t = split_at_epoch(run, epoch, data, settings).table()
    t.insert(0, "epoch", epoch)
    return t


def gradients_over_epochs(run: Run, settings: GradientSettings, epochs: Sequence[int] | None = None,
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


def scaling_pools(data: LabelledData, settings: GradientSettings) -> "dict[str, np.ndarray]":
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


def scaling_at_epoch(run: Run, settings: GradientSettings, data: LabelledData | None = None) -> pd.DataFrame:
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
# Summary numbers and figures

def verdict(table: pd.DataFrame, metrics: pd.DataFrame, early_stop: int, layer: str = ALL,
            small: float = 0.5, growth: float = 1.5, full_init: pd.DataFrame | None = None) -> dict:
    """Numbers for the paper's claim 5 on one layer (default: the whole network).

    ratio_init / ratio_early / ratio_end: permuted / unpermuted part of the loss gradient at
    initialization, at the early-stopping epoch and at the end; ratio_max and its epoch.
    The memorization phase is the analysed epochs after the early-stopping epoch at which the
    permuted examples are fitted to their training labels between MEMORIZATION_LEVELS[0] and 0.99:
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
    phase = r.index[(r.index > early_stop) & (memo >= MEMORIZATION_LEVELS[0]).values & (memo < 0.99).values]
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
    out["small_init"] = bool((out["ratio_init_full"] if full_init is not None else out["ratio_init"]) < small)
    out["grows"] = bool(out["growth"] >= growth)   # False when nan (no memorization phase analysed)
    return out


def summary_numbers(run: Run, data: LabelledData, settings: GradientSettings, table: pd.DataFrame,
                    full_init: pd.DataFrame, scaling: pd.DataFrame, small: float = 0.5, growth: float = 1.5,
                    slope_tol: float = 0.15, layer: str = ALL) -> dict:
    """Every number (and the few sentences that depend on them) that the book's gradient section
    quotes, as plain Python values ready for `glue`.

    `table`: gradients_over_epochs; `full_init`: the split at epoch 0 on the whole training subset;
    `scaling`: scaling_at_epoch. Thresholds: `small` (ratio at init), `growth` (memorization phase
    over init), `slope_tol` (distance of the fitted slope from -1/2).
    """
    early = run.early_stop_epoch
    v = verdict(table, run.metrics, early, layer=layer, small=small, growth=growth, full_init=full_init)
    slopes = fit_slopes(scaling).set_index("layer")
    comp_t = fit_two_components(scaling)
    comp = comp_t.set_index(["layer", "group"])
    uni = output_uniformity(run.load_model(0, device=data.x_train.device), data,
                            gradient_sample(data, settings.n_examples, settings.seed))
    s_all, s_log = slopes.loc[layer], slopes.loc["logits"]
    d = table[table["layer"] == layer]
    pre = d[(d["epoch"] > d["epoch"].min()) & (d["epoch"] <= early)]["ratio"]
    n_u, n_p = int(d["n_unpermuted"].iloc[0]), int(d["n_permuted"].iloc[0])
    fu, fp = int(full_init["n_unpermuted"].iloc[0]), int(full_init["n_permuted"].iloc[0])
    mu2_u, mu2_p = float(comp.loc[(layer, "unpermuted"), "mu2"]), float(comp.loc[(layer, "permuted"), "mu2"])
    C = data.num_classes
    out = {
        "n_sample": v["n_sample"], "n_train": len(data.x_train), "n_unpermuted": n_u, "n_permuted": n_p,
        "n_unperm_all": fu, "n_perm_all": fp,
        "epochs": ", ".join(str(e) for e in sorted(table["epoch"].unique())),
        "early": early, "epoch_end": v["epoch_end"],
        "max_prob": uni["max_prob"], "uniform": uni["uniform"], "logit_std": uni["logit_std"],
        "ratio_init": v["ratio_init"], "ratio_early": v["ratio_early"], "ratio_end": v["ratio_end"],
        "ratio_max": v["ratio_max"], "epoch_max": v["epoch_max"],
        "ratio_init_logits": float(table[(table["layer"] == "logits") & (table["epoch"] == v["epoch_init"])]["ratio"].iloc[0]),
        "ratio_min_pre": float(pre.min()) if len(pre) else float("nan"),
        "ratio_max_pre": float(pre.max()) if len(pre) else float("nan"),
        "ratio_init_full": v["ratio_init_full"], "cosine_init": v["cosine_init"],
        "cosine_init_full": v["cosine_init_full"],
        "ratio_init_full_fit": model_total_ratio(comp_t, layer, fu, fp),
        "coh_u_init": v["coherence_unpermuted_init"], "coh_p_init": v["coherence_permuted_init"],
        "inv_n_u": 1 / n_u, "inv_n_p": 1 / n_p,
        "memo_levels": ", ".join(f"{q:.0%}" for q in MEMORIZATION_LEVELS),
        "ratio_mem": v["ratio_memorizing"], "growth": v["growth"],
        "epochs_mem": ", ".join(str(e) for e in v["epochs_memorizing"]) or "none",
        "acc_u_mem": v["acc_unpermuted_memorizing"], "acc_p_mem": v["acc_permuted_memorizing"],
        "slope_u": s_all["slope_unpermuted"], "slope_p": s_all["slope_permuted"],
        "slope_ratio": s_all["slope_ratio"], "slope_ratio_logits": s_log["slope_ratio"],
        "slope_ratio_local": s_all["slope_ratio_local"], "slope_pred": -0.5,
        "sizes": ", ".join(str(n) for n in settings.sizes), "repeats": settings.repeats,
        "pool_factor": settings.pool_factor,
        "ratio_first": s_all["ratio_first"], "ratio_last": s_all["ratio_last"],
        "n_first": int(s_all["n_first"]), "n_last": int(s_all["n_last"]),
        "ncross_u": float(comp.loc[(layer, "unpermuted"), "n_cross"]),
        "mu_ratio": float(np.sqrt(max(mu2_p, 0.0) / mu2_u)) if mu2_u > 0 else float("nan"),
        "ratio_pred_full": float(model_ratio(comp_t, layer, fu)),
        "C": C, "floor_pred": 1 / (C - 1),
        "small": small, "growth_min": growth, "slope_tol": slope_tol,
    }
    later = d[d["epoch"] > d["epoch"].min()].sort_values("epoch")
    if len(later):
        first = later.iloc[0]
        out.update(epoch_first=int(first["epoch"]), coh_u_first=float(first["coherence_unpermuted"]),
                   coh_p_first=float(first["coherence_permuted"]), cosine_first=float(first["cosine"]))
    else:
        out.update(epoch_first=-1, coh_u_first=float("nan"), coh_p_first=float("nan"), cosine_first=float("nan"))
    mem = d[d["epoch"].isin(v["epochs_memorizing"])]
    out["coh_u_mem"] = float(mem["coherence_unpermuted"].mean()) if len(mem) else float("nan")
    out["coh_p_mem"] = float(mem["coherence_permuted"].mean()) if len(mem) else float("nan")
    out["cosine_mem"] = float(mem["cosine"].mean()) if len(mem) else float("nan")
    # Is the rise a clean switch? An early checkpoint may already be as high as the memorization phase.
    caveat = ""
    if len(pre) and v["epochs_memorizing"] and pre.max() >= 0.9 * v["ratio_memorizing"]:
        e_hi = int(d.loc[pre.idxmax(), "epoch"])
        acc_hi = float(run.metrics.set_index("epoch")["acc_permuted_train"].get(e_hi, float("nan")))
        caveat = (f"The rise is not monotone, though: at epoch {e_hi}, before the early-stopping epoch and with "
                  f"the permuted examples fitted to only {acc_hi:.2f} of their training labels, the ratio already "
                  f"reached {pre.max():.2f}, close to its mean over the memorization phase. Averaged over the "
                  f"checkpoints after initialization up to the early-stopping epoch it is {pre.mean():.2f}, "
                  f"against {v['ratio_memorizing']:.2f} during memorization.")
    out["caveat_text"] = caveat
    out["coh_u_side"] = "below" if out["coh_u_init"] < out["inv_n_u"] else "above"
    out["coh_p_side"] = "below" if out["coh_p_init"] < out["inv_n_p"] else "above"
    out["small_init_word"] = "is" if v["small_init"] else "is not"
    if v["epochs_memorizing"]:
        out["grows_word"] = (
            ("grows" if v["grows"] else "does not grow enough to count")
            + f": over the memorization phase (epochs {out['epochs_mem']}, where the permuted examples are "
            f"fitted to {out['acc_p_mem']:.2f} of their training labels on average and the unpermuted ones "
            f"to {out['acc_u_mem']:.2f}) it averages {out['ratio_mem']:.2f}, {out['growth']:.2f} times its "
            f"value at initialization on the same sample")
    else:
        out["grows_word"] = ("cannot be judged: no analysed epoch after the early-stopping epoch falls in the "
                             "memorization phase")
    slope_ok = abs(out["slope_ratio"] + 0.5) <= slope_tol
    out["slope_word"] = "agrees with" if slope_ok else "is far from"
    if mu2_u > 0:
        fit = (f"The unpermuted examples have a coherent part, which dominates beyond about "
               f"{out['ncross_u']:.0f} examples. ")
        if mu2_p > 0:
            fit += (f"The permuted examples' coherent part is {out['mu_ratio']:.2f} times as large in norm "
                    f"(predicted: {out['floor_pred']:.2f}). ")
        else:
            fit += (f"The permuted examples show none: their fitted coherent part is zero or negative, within "
                    f"the noise (the predicted one, {out['floor_pred']:.2f} times the unpermuted one in norm, "
                    f"is below what this fit resolves). ")
        fit += (f"Extrapolated to all {fu} unpermuted examples of the training subset (and as many permuted "
                f"ones), the fit gives a per-example ratio of {out['ratio_pred_full']:.2f}.")
        if mu2_p <= 0 or out["mu_ratio"] < 0.5:
            mech = (f"The two-component fit agrees with the argument: the unpermuted examples' gradients add "
                    f"coherently beyond about {out['ncross_u']:.0f} examples and the permuted ones' hardly at "
                    f"all, so the ratio keeps falling, its slope approaching -1/2 only for many more examples "
                    f"than that (local slope {out['slope_ratio_local']:.2f} at the largest n).")
        else:
            mech = (f"The permuted examples' gradients keep a coherent part {out['mu_ratio']:.2f} times that of "
                    f"the unpermuted ones, so the ratio levels off near that value instead of falling like the "
                    f"inverse square root of n.")
    else:
        fit = (f"The fit finds no coherent part in the unpermuted examples' gradients: with at most "
               f"{out['n_last']} examples per group, the class signal of the initial features does not show "
               f"above the per-example variation.")
        mech = "The fit finds no coherent part in either group at these sizes, so the mechanism is not seen."
    out["fit_text"], out["mechanism_text"] = fit, mech
    out["verdict"] = ("reproduces" if (v["small_init"] and v["grows"]) else
                      "reproduces only in part" if (v["small_init"] or v["grows"]) else "does not reproduce")
    return {k: (val.item() if isinstance(val, np.generic) else val) for k, val in out.items()}


def plot_ratio(table: pd.DataFrame, metrics: pd.DataFrame, early_stop: int, caption: str = ""):
    """Ratio permuted / unpermuted per layer against epoch (top) and the accuracies (bottom)."""
    from .plots import figure

    fig, (ax, bx) = figure(2, 1, height=6.2, sharex=True, gridspec_kw={"height_ratios": [3, 2]})
    for layer, d in table.groupby("layer", sort=False):
        style = dict(color="k", lw=2.5) if layer == ALL else dict(lw=1.4)
        ax.plot(d["epoch"], d["ratio"], marker="o", ms=3.5, label=layer, **style)
    ax.axhline(1, color="grey", lw=0.8, ls=":")
    ax.set_yscale("log")
    _plain_log_ticks(ax)
    ax.set_ylabel("||permuted part|| /\n||unpermuted part||")
    ax.legend(ncol=1, loc="center left", bbox_to_anchor=(1.01, 0.5), title="layer")
    for name, label in (("acc_unpermuted", "unpermuted\n(true label)"),
                        ("acc_permuted_train", "permuted, training\nlabel (memorized)"), ("acc_test", "test")):
        bx.plot(metrics["epoch"], metrics[name], label=label)
    bx.set_ylabel("accuracy")
    bx.set_xlabel("epoch")
    bx.legend(loc="center left", bbox_to_anchor=(1.01, 0.5))
    for a in (ax, bx):
        a.axvline(early_stop, color="tab:red", ls="--", lw=1)
    ax.text(early_stop, ax.get_ylim()[1], " early stop", color="tab:red", va="top")
    if caption:
        fig.suptitle(_wrap(caption), fontsize=9)
    return fig


def _wrap(text: str, width: int = 100) -> str:
    import textwrap
    return textwrap.fill(text, width)


def plot_scaling(table: pd.DataFrame, slopes: pd.DataFrame, layers: Sequence[str] | None = None, caption: str = "",
                 components: pd.DataFrame | None = None):
    """Log-log: group-sum norms against n (top) and the per-example ratio with its fit (bottom);
    with `components` (fit_two_components), the ratio the two-component fit predicts (thin dashed)."""
    import matplotlib.pyplot as plt

    from .plots import figure

    layers = list(layers or table["layer"].unique())
    mean = table.groupby(["layer", "group", "n"], sort=False)["norm"].mean().reset_index()
    fig, (ax, bx) = figure(2, 1, height=6.6)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, layer in enumerate(layers):
        c = colors[i % len(colors)]
        d = mean[mean["layer"] == layer]
        s = slopes.set_index("layer").loc[layer]
        for g, ls in (("unpermuted", "-"), ("permuted", "--")):
            dg = d[d["group"] == g].sort_values("n")
            ax.plot(dg["n"], dg["norm"] / dg["norm"].iloc[0], ls, color=c, marker="o", ms=3.5,
                    label=f"{layer} {g} ({s[f'slope_{g}']:.2f})")
        u = d[d["group"] == "unpermuted"].set_index("n")["norm"]
        p = d[d["group"] == "permuted"].set_index("n")["norm"]
        ratio = (p / u).sort_index()
        bx.plot(ratio.index, ratio.values, marker="o", ms=3.5, color=c, label=f"{layer} (slope {s['slope_ratio']:.2f})")
        if components is not None:
            nn = np.geomspace(ratio.index.min(), ratio.index.max(), 50)
            bx.plot(nn, model_ratio(components, layer, nn), color=c, lw=0.8, ls="--")
    n = np.array(sorted(table["n"].unique()), dtype=float)
    ax.plot(n, n / n[0], color="grey", lw=0.8, ls=":", label="slope 1")
    ax.plot(n, np.sqrt(n / n[0]), color="grey", lw=0.8, ls="-.", label="slope 1/2")
    ax.set(xscale="log", yscale="log", xlabel="n examples per group", ylabel="||sum of n gradients||\n(rel. to smallest n)")
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), title="group (fitted slope)")
    measured = [line for line in bx.get_lines() if line.get_marker() == "o"]
    ref = measured[-1].get_ydata()[-1] if measured else 1.0   # through the last layer's largest n
    bx.plot(n, ref * (n / n[-1]) ** -0.5, color="grey", ls=":", label="predicted slope -1/2")
    bx.set(xscale="log", yscale="log", xlabel="n examples per group", ylabel="per-example ratio\npermuted / unpermuted")
    bx.legend(loc="center left", bbox_to_anchor=(1.01, 0.5))
    for a in (ax, bx):
        _plain_log_ticks(a)
    if caption:
        fig.suptitle(_wrap(caption), fontsize=9)
    return fig


def _plain_log_ticks(ax) -> None:
    """Plain numbers instead of powers of ten on log axes."""
    from matplotlib.ticker import FuncFormatter, NullFormatter, ScalarFormatter

    if ax.get_xscale() == "log":
        ax.set_xticks(sorted({int(t) for line in ax.get_lines() if line.get_marker() == "o" for t in line.get_xdata()}))
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
    plain = FuncFormatter(lambda y, _: f"{y:.3g}")
    lo, hi = ax.get_ylim()
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(plain if np.log10(hi / lo) < 1.2 else NullFormatter())
    ax.tick_params(axis="y", which="minor", labelsize=8)


def plot_coherence(table: pd.DataFrame, early_stop: int, caption: str = ""):
    """Coherence of each group against epoch, one panel per group, one line per layer."""
    from .plots import figure, shared_legend

    fig, axes = figure(1, 2, panel_height=3.0, sharey=True)
    for ax, g in zip(axes, GROUPS):
        for layer, d in table.groupby("layer", sort=False):
            style = dict(color="k", lw=2.5) if layer == ALL else dict(lw=1.4)
            ax.plot(d["epoch"], d[f"coherence_{g}"], marker="o", ms=3.5, label=layer, **style)
            n_g = d[f"n_{g}"].iloc[0]
        ax.axhline(1 / n_g, color="grey", ls=":", lw=1, label="1/n (orthogonal)")
        ax.axvline(early_stop, color="tab:red", ls="--", lw=1)
        ax.set(yscale="log", xlabel="epoch", title=f"{g} (n = {n_g})")
        _plain_log_ticks(ax)
    axes[0].set_ylabel("coherence\n||sum g||^2 / (n sum ||g||^2)")
    shared_legend(fig, axes, ncol=4)
    if caption:
        fig.suptitle(_wrap(caption), fontsize=9)
    return fig
