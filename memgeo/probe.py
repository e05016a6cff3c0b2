"""Probing a run: manifolds of four types, layer activations, and their geometry over epochs.

Manifold types (paper Fig. 1A), each P manifolds x M examples:
- ``unpermuted``: training examples whose label was not changed, grouped by that label;
- ``permuted``: examples whose label was changed, grouped by their (wrong) training label;
  high capacity here means memorization;
- ``restored``: the same pool of changed examples grouped by their true label; high capacity here
  means the network still represents the true classes of mislabelled images;
- ``test``: held-out images grouped by their label.

The manifold sets are drawn once per run (fixed by the probe seed) and reused at every epoch; each
layer has one fixed random projection (shared across epochs and types) when it is wider than
`proj_dim`. Features are the block outputs (post-activation; after pooling where a block pools),
taken in eval mode. Results are kept in the run's result cache (`memgeo.cache`): the geometry
under `geometry/<key>/` (tables summary and per_manifold, resumed per (epoch, layer, type)), the
simulated-capacity check under `simulated/<key>/`.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import torch

from .cache import ResultCache, cached_table
from .config import ConfigError, ProbeConfig
from .data import LabelledData, derived_seed
from .geometry import ENGINE_VERSION, RandomProjection, analyze
from .geometry.centers import CENTER_SEARCHES
from .models import BlockNet
from .runs import Run

TYPES = ("unpermuted", "permuted", "restored", "test")


@dataclasses.dataclass(frozen=True)
class ManifoldSet:
    """Indices of the examples of every manifold: `index[type][p]` is an (M,) array into the
    training set (or the test set for type "test"); `classes[p]` is the class of manifold p."""

    classes: tuple[int, ...]
    index: dict

    def images(self, data: LabelledData, kind: str) -> torch.Tensor:
        src = data.x_test if kind == "test" else data.x_train
        return src[torch.as_tensor(np.concatenate(self.index[kind]), device=src.device)]


def sample_manifolds(data: LabelledData, P: int, M: int, seed: int = 0, types=TYPES) -> ManifoldSet:
    """Draw P manifolds of M examples for each type (deterministic by seed).

    Fails clearly when a class has fewer than M examples of a type, saying how many it has.
    """
    C = data.num_classes
    if P > C:
        raise ConfigError(f"P={P} manifolds but the dataset has {C} classes: use P <= {C}")
    rng = np.random.default_rng(derived_seed(seed, "manifolds"))
    classes = tuple(sorted(rng.choice(C, P, replace=False).tolist())) if P < C else tuple(range(C))
    perm = data.permuted.cpu().numpy()
    true, train = data.true_label.cpu().numpy(), data.train_label.cpu().numpy()
    pools = {"unpermuted": (~perm, true), "permuted": (perm, train), "restored": (perm, true),
             "test": (np.ones(len(data.y_test), bool), data.y_test.cpu().numpy())}
    index = {}
    for kind in types:
        mask, labels = pools[kind]
        sets = []
        for c in classes:
            idx = np.flatnonzero(mask & (labels == c))
            if len(idx) < M:
                raise ConfigError(
                    f"manifold type {kind!r}: class {c} has only {len(idx)} examples, but M={M} were asked "
                    f"for: lower probe.M to <= {len(idx)}, or use more training examples per class"
                    + (" or a larger eps" if kind in ("permuted", "restored") else ""))
            sets.append(np.sort(rng.choice(idx, M, replace=False)))
        index[kind] = sets
    return ManifoldSet(classes, index)


class Probe:
    """Layer activations of the manifold examples, randomly projected to at most `proj_dim`.

    One projection per layer, fixed by (seed, layer) and reused for every epoch and type."""

    def __init__(self, proj_dim: int = 5000, seed: int = 0):
        self.proj_dim = proj_dim
        self.seed = seed
        self._proj: dict[str, RandomProjection] = {}

    def projection(self, layer: str, n_in: int) -> RandomProjection:
        p = self._proj.get(layer)
        if p is None or p.n_in != n_in:
            p = RandomProjection(n_in, self.proj_dim, derived_seed(self.seed, "projection", layer) % (2 ** 31))
            self._proj[layer] = p
        return p

    @torch.no_grad()
    def layer_features(self, model: BlockNet, x: torch.Tensor, normalise, layer: str,
                       batch_size: int = 250) -> np.ndarray:
        """(n, d) float64 features of `layer` for uint8 images x, d <= proj_dim. Only this layer's
        features are held, so peak memory is one layer at a time."""
        was_training = model.training
        model.eval()
        dev, fmt = next(model.parameters()).device, model.memory_format
        out = []
        for i in range(0, len(x), batch_size):
            xb = normalise(x[i:i + batch_size].to(dev)).contiguous(memory_format=fmt)
            f = model.forward_features(xb, [layer])[layer].flatten(1).float()
            out.append(self.projection(layer, f.shape[1])(f).cpu())
        model.train(was_training)
        return torch.cat(out).double().numpy()

    def features(self, model: BlockNet, data: LabelledData, mset: ManifoldSet, kind: str, layer: str) -> list:
        """P arrays (M, d): the manifolds of one type at one layer."""
        x = mset.images(data, kind)
        f = self.layer_features(model, x, data.normalise, layer)
        return np.split(f, np.cumsum([len(i) for i in mset.index[kind]])[:-1])


# The analysed epochs every run has, by role (the early-stopping epoch differs between seeds).
EPOCH_ROLES = ("initialisation", "early stop", "end")
GEOMETRY_SETTINGS = ("P", "M", "n_t", "kappa", "proj_dim", "center_searches")
CHUNK = ("epoch", "layer", "type")


def geometry_cache(run: Run, probe: ProbeConfig) -> ResultCache:
    """The cache entry of a run's geometry: keyed by the probe settings that change the numbers,
    the run's seed (manifold draws, projections, t-vectors) and the engine version (results of an
    engine that gives other numbers are not reused)."""
    return ResultCache.of_run(run, "geometry", {k: getattr(probe, k) for k in GEOMETRY_SETTINGS},
                              seed=run.config.seed, version=ENGINE_VERSION)


# Version of the simulated check's table (2: center correlations, features and rank per row,
# the input layer once, the best of probe.center_searches center searches; 3: the share of
# dichotomies separable at no number of features, and the capacity of the separable ones).
SIM_TABLE_VERSION = 3
# Layers whose features do not change in training: analysed at the first epoch only.
STATIC_LAYERS = ("input",)
# A simulated-check row counts when its layer has at least this many times P / alpha features.
SIM_FEATURE_MARGIN = 2.0


def simulated_cache(run: Run, probe: ProbeConfig) -> ResultCache:
    """The cache entry of the simulated-capacity check (mean-field capacity at kappa = 0 beside it)."""
    settings = {k: getattr(probe, k) for k in ("P", "M", "n_t", "proj_dim", "sim_dichotomies")}
    settings.update(n_searches=probe.center_searches, table=SIM_TABLE_VERSION)
    return ResultCache.of_run(run, "simulated", settings, seed=run.config.seed, version=ENGINE_VERSION)


def select_epochs(run: Run, probe: ProbeConfig) -> list[int]:
    """Epochs to analyse: explicit list, or "auto": initialisation, the early-stopping epoch, the
    epoch where permuted examples are half fitted, the end, and log-spaced ones between."""
    saved = run.checkpoint_epochs
    if probe.epochs != "auto":
        wanted = [int(e) for e in probe.epochs.split(",")]
        missing = [e for e in wanted if e not in saved]
        if missing:
            raise ConfigError(f"probe.epochs asks for {missing}, which have no checkpoint; saved: {saved}")
        return sorted(set(wanted))
    m = run.metrics
    key = {0, run.early_stop_epoch, saved[-1]}
    half = m.loc[m["acc_permuted_train"] >= 0.5, "epoch"]
    if len(half):
        key.add(int(half.iloc[0]))
    key &= set(saved)
    grid = np.unique(np.round(np.geomspace(1, max(saved[-1], 1), 4 * probe.max_epochs)).astype(int))
    for e in grid:
        if len(key) >= probe.max_epochs:
            break
        near = min(saved, key=lambda s: abs(s - e))
        key.add(near)
    return sorted(key)


def geometry_over_epochs(run: Run, probe: ProbeConfig, epochs=None, layers=None, types=TYPES,
                         progress: bool = True, device="cpu") -> tuple[pd.DataFrame, pd.DataFrame]:
    """Geometry for every (epoch x layer x type), cached in the run folder.

    Returns (summary, per_manifold): tidy tables. Epochs already in the cache are not recomputed;
    each finished epoch is written at once, so an interrupted analysis resumes.
    """
    seed = run.config.seed
    cache = geometry_cache(run, probe)
    epochs = select_epochs(run, probe) if epochs is None else list(epochs)
    data = run.load_data(device)
    mset = sample_manifolds(data, probe.P, probe.M, seed, types)
    summary, per = cache.read("summary"), cache.read("per_manifold")
    pr = Probe(probe.proj_dim, seed)
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(epochs), desc=f"geometry [{run.path.name}]", unit="epoch", leave=False)
    for epoch in epochs:
        model = run.load_model(epoch, device)
        names = model.layer_names if layers is None else list(layers)
        have = summary[summary["epoch"] == epoch] if len(summary) else summary
        todo = [(l, k) for l in names for k in types
                if not len(have) or not ((have["layer"] == l) & (have["type"] == k)).any()]
        rows, prow = [], []
        for layer in names:
            for kind in types:
                if (layer, kind) not in todo:
                    continue
                feats = pr.features(model, data, mset, kind, layer)
                res = analyze(feats, kappa=probe.kappa, n_t=probe.n_t, seed=seed, n_searches=probe.center_searches)
                rows.append({"epoch": epoch, "layer": layer, "depth": model.layer_names.index(layer),
                             "type": kind, "capacity": res.capacity, "radius": res.radius,
                             "dimension": res.dimension, "center_correlation": res.center_correlation,
                             "K": res.K, "features": feats[0].shape[1]})
                for p, c in enumerate(mset.classes):
                    prow.append({"epoch": epoch, "layer": layer, "type": kind, "manifold": c,
                                 "capacity": res.per_manifold.capacity[p], "radius": res.per_manifold.radius[p],
                                 "dimension": res.per_manifold.dimension[p]})
        if rows:
            per = cache.add("per_manifold", pd.DataFrame(prow), CHUNK)
            summary = cache.add("summary", pd.DataFrame(rows), CHUNK)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    keep = summary["epoch"].isin(epochs)
    if layers is not None:
        keep &= summary["layer"].isin(list(layers))
    keep &= summary["type"].isin(list(types))
    s = summary[keep].sort_values(["epoch", "depth", "type"]).reset_index(drop=True)
    pm = per[per["epoch"].isin(epochs) & per["type"].isin(list(types))]
    pm = pm[pm["layer"].isin(s["layer"].unique())].reset_index(drop=True)
    return s, pm


def select_sim_epochs(run: Run, probe: ProbeConfig, analysed: list[int]) -> list[int]:
    """Epochs for the simulated-capacity check: initialisation, early stop and end ("auto")."""
    if probe.sim_epochs != "auto":
        return sorted({int(e) for e in probe.sim_epochs.split(",")})
    return sorted({analysed[0], run.early_stop_epoch, analysed[-1]} & set(analysed))


def simulated_check(run: Run, probe: ProbeConfig, epochs, layers=None, types=("test",),
                    progress: bool = True, device="cpu") -> pd.DataFrame:
    """Simulated capacity (random projections, random dichotomies, exact separability) next to the
    mean-field capacity of the same manifolds, for the paper's Fig. 1B check. Cached like the
    geometry. Both see the same data: global mean removed and the low-rank center subspace
    projected out (the best of ``probe.center_searches`` searches, the same in both), as the
    mean-field analysis does. A layer of ``STATIC_LAYERS`` (the input) is the same at every
    epoch: it is analysed once, at the first epoch. Rows also hold the center correlation before
    and after the removal, the layer's features N and the rank of the points."""
    from .geometry import simulated_capacity
    seed = run.config.seed
    cache = simulated_cache(run, probe)
    data = run.load_data(device)
    mset = sample_manifolds(data, probe.P, probe.M, seed, TYPES)
    pr = Probe(probe.proj_dim, seed)
    names = run.meta["layers"] if layers is None else list(layers)
    epochs = sorted(epochs)
    wanted = [(epoch, layer, kind) for epoch in epochs for layer in names for kind in types
              if layer not in STATIC_LAYERS or epoch == epochs[0]]
    jobs = cache.missing("table", wanted, CHUNK)
    df = cache.read("table")
    bar = None
    if progress and jobs:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(jobs), desc="simulated capacity", leave=False)
    model_epoch, model = None, None
    for epoch, layer, kind in jobs:
        if epoch != model_epoch:
            model, model_epoch = run.load_model(epoch, device), epoch
        feats = pr.features(model, data, mset, kind, layer)
        mf = analyze(feats, kappa=0.0, n_t=probe.n_t, seed=seed, n_searches=probe.center_searches)
        sim = simulated_capacity(feats, n_dichotomies=probe.sim_dichotomies, seed=seed,
                                 remove_center_subspace=True, n_searches=probe.center_searches)
        row = {"epoch": epoch, "layer": layer, "depth": model.layer_names.index(layer), "type": kind,
               "capacity_meanfield": mf.capacity, "capacity_simulated": sim.capacity,
               "capacity_simulated_err": sim.capacity_err, "center_correlation": mf.center_correlation,
               "residual_correlation": mf.residual_correlation, "K": mf.K,
               "features": feats[0].shape[1], "rank": sim.rank, "n_c": sim.n_c,
               "unseparable": sim.unseparable, "capacity_simulated_separable": sim.capacity_separable}
        df = cache.add("table", pd.DataFrame([row]), CHUNK)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    keep = df["epoch"].isin(epochs) & df["type"].isin(list(types)) & df["layer"].isin(names)
    keep &= ~df["layer"].isin(list(STATIC_LAYERS)) | (df["epoch"] == epochs[0])
    return df[keep].sort_values(["epoch", "depth", "type"]).reset_index(drop=True)


def sim_rows(sim: pd.DataFrame, P: int, feature_margin: float = SIM_FEATURE_MARGIN,
             static_layers=STATIC_LAYERS) -> pd.DataFrame:
    """The simulated check's rows with the signed relative deviation (simulated - mean-field) /
    mean-field and whether each row counts (``retained``, and ``excluded`` saying why not).

    Rules: (1) the simulated capacity is P / n_c, n_c the number of random features at which half
    the dichotomies separate, and a projection of an N-feature layer has at most N features: n_c
    can be found only if N is well above the P / alpha that the mean-field capacity alpha
    predicts. A row counts when N >= ``feature_margin`` x P / alpha (2: the upper half of the
    dichotomies' critical n also lies inside N). As alpha <= 2 at kappa = 0, this needs N >= P,
    so the logits (N = number of classes = P) never count. (2) Each distinct layer/epoch counts
    once: a layer of ``static_layers`` (the input, which training does not change) only at its
    first epoch."""
    out = sim.copy()
    if out.empty:
        return out.assign(deviation=[], retained=[], excluded=[])
    mf = out["capacity_meanfield"]
    out["deviation"] = _relative_deviation(out, "capacity_simulated")
    if "capacity_simulated_separable" in out:
        out["deviation_separable"] = _relative_deviation(out, "capacity_simulated_separable")
    needed = feature_margin * P / mf
    few = out["features"] < needed
    first = out.groupby(["layer", "type"])["epoch"].transform("min")
    repeat = out["layer"].isin(list(static_layers)) & (out["epoch"] != first)
    out["retained"] = ~few & ~repeat
    out["excluded"] = np.where(repeat, "repeat of an unchanged layer",
                               np.where(few, f"features < {feature_margin:g} P / alpha", ""))
    return out


def synthetic_control(M: int, Ps=(10, 50, 100), *, radius: float = 1.0, n_t: int = 200,
                      seed: int = 0, n_searches: int = CENTER_SEARCHES, root=None) -> pd.DataFrame:
    """The finite-P control of :func:`memgeo.geometry.simulated.finite_p_control` (Gaussian clouds at the probe's
    M, P = 10, 50, 100), computed once and kept in the result cache (runs/cache/sim_control/)."""
    from .geometry.simulated import finite_p_control
    settings = {"M": int(M), "Ps": [int(p) for p in Ps], "radius": float(radius), "n_t": int(n_t),
                "n_searches": int(n_searches), "table": 2}   # 2: unseparable share, separable capacity
    return cached_table("sim_control", settings,
                        lambda: pd.DataFrame(finite_p_control(M, Ps, radius=radius, n_t=n_t, seed=seed,
                                                              n_searches=n_searches)),
                        seed=seed, version=ENGINE_VERSION, root=root)


def sim_statistics(rows: pd.DataFrame, control: pd.DataFrame) -> dict[str, float]:
    """The numbers the Fig. 1B verdict is decided on: ``sim_median_abs_dev`` and
    ``sim_signed_median_dev`` (median |deviation| and median deviation over the retained rows of
    :func:`sim_rows`), ``sim_n_rows`` (how many), and ``sim_control_p<P>`` (the synthetic
    control's median |deviation| over its draws at P manifolds); nan when undefined.

    And the test of one cause of the gap: ``sim_unseparable`` (mean share of the dichotomies that
    no number of features separates, over the retained rows), ``sim_median_abs_dev_separable``
    (median |deviation| when the simulated capacity counts only the separable dichotomies) and
    their control counterparts ``sim_control_unseparable_p<P>`` and ``sim_control_sep_p<P>``."""
    kept = rows[rows["retained"]] if len(rows) else rows
    dev = kept["deviation"].to_numpy(float) if len(kept) else np.zeros(0)
    out = {"sim_median_abs_dev": _median_abs(dev),
           "sim_signed_median_dev": float(np.median(dev)) if dev.size else float("nan"),
           "sim_n_rows": float(dev.size),
           "sim_unseparable": _mean(kept, "unseparable"),
           "sim_median_abs_dev_separable": _median_abs(_column(kept, "deviation_separable"))}
    for P in (10, 50, 100):
        c = control[control["P"] == P] if len(control) else control
        out[f"sim_control_p{P}"] = _median_abs(_column(c, "deviation"))
        out[f"sim_control_unseparable_p{P}"] = _mean(c, "unseparable")
        sep = _relative_deviation(c, "capacity_simulated_separable") if "capacity_simulated_separable" in c else []
        out[f"sim_control_sep_p{P}"] = _median_abs(sep)
    return out


def _relative_deviation(t: pd.DataFrame, simulated: str) -> pd.Series:
    """(simulated - mean-field) / mean-field capacity, row by row."""
    return (t[simulated] - t["capacity_meanfield"]) / t["capacity_meanfield"]


def _column(t: pd.DataFrame, name: str) -> np.ndarray:
    return t[name].to_numpy(float) if len(t) and name in t else np.zeros(0)


def _median_abs(v: np.ndarray) -> float:
    v = np.asarray(v, float)
    v = v[np.isfinite(v)]
    return float(np.median(np.abs(v))) if v.size else float("nan")


def _mean(t: pd.DataFrame, name: str) -> float:
    v = _column(t, name)
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else float("nan")
