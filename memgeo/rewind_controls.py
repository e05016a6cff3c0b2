"""Controls for layer rewinding (`memgeo.rewind`): a parameter-matched random rewind, selectivity,
and Maini et al.'s claim as they state it.

Why: in a small CNN the deep layers hold most of the weights (at width 16, conv4 alone holds 72 %
of the parameters, the late half 95 %), so "rewinding the late layers restores generalization" may
only say "rewinding most of the weights does". Three measurements separate the two:

- **Parameter-matched random rewind** (`matched_table`): rewind as many individual weights as a
  given layer rewind does, but chosen at random over the whole network: each parameter tensor gets
  its proportional share of the count (largest remainders, so the total is exact) at uniformly
  random positions. Seeded per (seed, draw, count), so a chunk's mask does not depend on which
  other chunks were computed; a few draws are averaged. BatchNorm: its affine weight and bias are
  parameters and are counted and drawn like any other weight. Its running statistics are not
  counted; with ``bn="rewind"`` (as in the layer rewinds) the running mean and variance of a
  channel travel with that channel's scale: rewound exactly when the scale entry is, so a draw of
  every parameter is the checkpoint itself. With ``bn="recompute"`` every BatchNorm (all layers
  changed) gets the statistics of its input over the training images after the draw.
- **Selectivity** (`selectivity_table`): for each rewind, the memorization it removes against the
  clean training accuracy it costs. selectivity = (drop in accuracy of the permuted examples on
  their training labels) / (drop in accuracy of the unpermuted training examples), both in accuracy
  points; a clean drop smaller than one unpermuted example counts as one example (1/n), so that
  the ratio stays finite (it is then a lower bound). 1 = removes memorization only as much as it
  damages clean fitting; the whole checkpoint's value is the reference.
- **Maini et al.'s claim as stated** (`maini_test`): "the layers critical to memorization are not
  only the final ones". Final layers are the last `n_final` rewindable layers (default 2: the last
  hidden layer and the read-out), per layer with its parameter share; the test measures the
  largest fraction of memorization removed by one non-final layer rewound alone, and the
  parameter-matched control's fraction for that layer, so that a large layer is not favoured.
"""
from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import torch

from .blocks import batchnorms
from .cache import ResultCache
from .data import LabelledData
from .models import BlockNet
from .rewind import (METRICS, RewindError, _check_bn, _check_epochs, check_compatible, gap_table, maini_at,
                     param_counts, recompute_bn_stats, reference, rewindable_layers)
from .runs import Run
from .train import evaluate, resolve_device
from .verdicts import both_or_one

MATCHED_VERSION = 1     # bump when the numbers a matched-control cache key stands for change
DRAWS = 3               # random draws averaged per matched control
CONTROL_SEED = 0        # seed of the matched controls' masks
N_FINAL = 2             # Maini test: the last N_FINAL rewindable layers are "the final ones"
MATCHED_COLUMNS = ["rewound", "draw", "epoch", "bn", "final_epoch", "n_params", "param_share", *METRICS]


# ---------------------------------------------------------------------------------------------
# Parameter-matched random rewind

def allocate(sizes, n: int) -> list[int]:
    """Split `n` over tensors of `sizes` in proportion to their sizes: floors, then the largest
    remainders (ties to the earlier tensor) get one more, so the counts sum to exactly `n`."""
    sizes = [int(s) for s in sizes]
    total = sum(sizes)
    if not 0 <= n <= total:
        raise RewindError(f"cannot rewind {n} parameters: the network has {total}")
    quota = [n * s / total for s in sizes]
    counts = [int(np.floor(q)) for q in quota]
    rest = n - sum(counts)
    order = sorted(range(len(sizes)), key=lambda i: (-(quota[i] - counts[i]), i))
    for i in order[:rest]:
        counts[i] += 1
    return counts


def matched_masks(model: BlockNet, n: int, rng: np.random.Generator) -> dict[str, torch.Tensor]:
    """A boolean mask per parameter tensor of `model`, `n` True entries in all (`allocate`),
    at uniformly random positions within each tensor."""
    params = dict(model.named_parameters())
    counts = allocate([p.numel() for p in params.values()], n)
    masks = {}
    for (name, p), k in zip(params.items(), counts):
        flat = np.zeros(p.numel(), dtype=bool)
        flat[rng.choice(p.numel(), size=k, replace=False)] = True
        masks[name] = torch.from_numpy(flat).reshape(p.shape)
    return masks


def masked_state(model: BlockNet, source, masks: dict[str, torch.Tensor]) -> dict:
    """`model`'s state dict with the masked entries of each parameter taken from `source`; a
    BatchNorm channel's running mean and variance follow the mask of its scale (weight), its
    batch counter is the source's when any channel is rewound."""
    check_compatible(model, source)
    own = model.state_dict()
    state = {k: v.detach().clone() for k, v in own.items()}

    def take(key, mask):
        src = source[key].to(state[key].device)
        state[key] = torch.where(mask.to(state[key].device), src, state[key])

    for key, mask in masks.items():
        take(key, mask)
    for name, bn in batchnorms(model, set(rewindable_layers(model))):
        scale = masks.get(f"{name}.weight")
        if scale is None:           # no affine scale: no weight to travel with; statistics kept
            continue
        for stat in ("running_mean", "running_var"):
            if f"{name}.{stat}" in state:
                take(f"{name}.{stat}", scale)
        if f"{name}.num_batches_tracked" in state and bool(scale.any()):
            state[f"{name}.num_batches_tracked"] = source[f"{name}.num_batches_tracked"].clone()
    return state


def matched_model(model: BlockNet, source, n: int, rng: np.random.Generator, bn: str = "rewind",
                  data: LabelledData | None = None, batch_size: int = 128) -> BlockNet:
    """A copy of `model` (eval mode) with `n` random individual parameters taken from `source`
    (see the module docstring for BatchNorm)."""
    _check_bn(bn)
    if isinstance(source, torch.nn.Module):
        source = source.state_dict()
    out = copy.deepcopy(model)
    out.load_state_dict(masked_state(model, source, matched_masks(model, n, rng)))
    out.eval()
    if bn == "recompute" and n > 0:
        if data is None:
            raise RewindError("bn='recompute' needs the training data: pass data=run.load_data()")
        recompute_bn_stats(out, data, batch_size=batch_size)
    return out


def _rng(seed: int, draw: int, n: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(draw), int(n)])


def matched_cache(run: Run, epoch: int, final_epoch: int, bn: str, seed: int, device: torch.device) -> ResultCache:
    """Cache entry of the matched controls to one epoch; (rewound, draw) are its chunks."""
    return ResultCache.of_run(run, "rewind_matched", {"epoch": int(epoch), "final_epoch": int(final_epoch),
                                                      "bn": bn, "device": device.type},
                              seed=int(seed), version=MATCHED_VERSION)


def matched_table(run: Run, rewound, epoch: int | None = None, draws: int = DRAWS, seed: int = CONTROL_SEED,
                  bn: str = "rewind", final_epoch: int | None = None, data: LabelledData | None = None,
                  device=None, batch_size: int = 128, cache: bool = True) -> pd.DataFrame:
    """The parameter-matched random control of each layer rewind in `rewound` (lists of layers, or
    "+"-joined names as in the rewind tables) to `epoch` (default: early stopping): `draws` random
    draws each, one row per (rewound, draw), columns `MATCHED_COLUMNS`. Cached in the run folder."""
    _check_bn(bn)
    if draws < 1:
        raise RewindError(f"draws must be >= 1, got {draws}")
    device = torch.device(device) if device is not None else resolve_device(run.config.device)
    final_epoch = run.config.epochs if final_epoch is None else int(final_epoch)
    epoch = run.early_stop_epoch if epoch is None else int(epoch)
    _check_epochs(run, [epoch, final_epoch])
    final = run.load_model(final_epoch, device)
    counts, names = param_counts(final), rewindable_layers(final)
    total = sum(counts.values())
    sets = []
    for r in rewound:
        layers = r.split("+") if isinstance(r, str) else list(r)
        bad = [l for l in layers if l not in counts]
        if bad:
            raise RewindError(f"no rewindable layer {bad[0]!r}; rewindable layers: {', '.join(names)}")
        key = "+".join(sorted(set(layers), key=names.index))
        if key not in sets:
            sets.append(key)
    if not sets:
        return pd.DataFrame(columns=MATCHED_COLUMNS)
    chunks = [(r, d) for r in sets for d in range(draws)]
    store = matched_cache(run, epoch, final_epoch, bn, seed, device) if cache else None
    todo = store.missing("table", chunks, ["rewound", "draw"]) if store else chunks
    rows = []
    if todo:
        source = run.load_state(epoch)
        data = run.load_data(device) if data is None else data
        for r, d in todo:
            n = sum(counts[l] for l in r.split("+"))
            model = matched_model(final, source, n, _rng(seed, d, n), bn, data, batch_size)
            row = {"rewound": r, "draw": d, "epoch": epoch, "bn": bn, "final_epoch": final_epoch,
                   "n_params": n, "param_share": n / total, **evaluate(model, data, batch_size)}
            rows.append(row)
            if store is not None:
                store.add("table", pd.DataFrame([row], columns=MATCHED_COLUMNS), ["rewound", "draw"])
    table = store.read() if store else pd.DataFrame(rows, columns=MATCHED_COLUMNS)
    keep = pd.Series([(r, d) in set(chunks) for r, d in zip(table["rewound"], table["draw"])], index=table.index)
    table = table[keep]
    table = table.assign(_o=table["rewound"].map(sets.index)).sort_values(["_o", "draw"]).drop(columns="_o")
    return table.reset_index(drop=True)


def matched_means(matched: pd.DataFrame) -> pd.DataFrame:
    """Mean of each accuracy over the draws, one row per rewound set (index: rewound), with the
    number of draws and the standard deviation of the test accuracy over them."""
    g = matched.groupby("rewound", sort=False)
    out = g[["n_params", "param_share", *METRICS]].mean()
    out["test_sd"] = g["acc_test"].std(ddof=1)      # nan for a single draw
    out["draws"] = g.size()
    return out


# ---------------------------------------------------------------------------------------------
# Control table, selectivity, Maini et al.'s claim

def _n_unpermuted(run: Run) -> int:
    meta = run.meta
    return max(int(round(meta["n_train"] * (1 - meta["eps_effective"]))), 1)


def selectivity(memorization_drop, clean_drop, n_unpermuted: int):
    """Memorization drop / clean drop (accuracy points), with a clean drop below one unpermuted
    example (1/n_unpermuted) counted as one example; nan where a drop is missing."""
    floor = 1.0 / n_unpermuted
    return np.asarray(memorization_drop, float) / np.maximum(np.asarray(clean_drop, float), floor)


def control_table(table: pd.DataFrame, run: Run, matched: pd.DataFrame, epoch: int | None = None) -> pd.DataFrame:
    """The rewinds to `epoch` (default: early stopping; `rewind.gap_table`) next to their
    parameter-matched random controls: for each, gap recovered, memorization removed (fractions as
    in `gap_table`), clean drop and selectivity, rewind and control (suffix _matched) side by side.
    Rewinds without a control have nan in the control's columns."""
    ref = reference(run, int(table["final_epoch"].iloc[0]))
    epoch = ref["peak_epoch"] if epoch is None else epoch
    g = gap_table(table, run, epoch)
    m = run.metrics.set_index("epoch")
    mem_ck = float(m.loc[epoch, "acc_permuted_train"])
    n_unp = _n_unpermuted(run)
    gap = ref["peak_test"] - ref["final_test"]
    dm = ref["final_memorization"] - mem_ck
    means = matched_means(matched) if len(matched) else pd.DataFrame(columns=METRICS)

    def derived(frame: pd.DataFrame) -> pd.DataFrame:
        out = pd.DataFrame(index=frame.index)
        out["gap_recovered"] = (frame["acc_test"] - ref["final_test"]) / gap if gap > 0 else np.nan
        out["memorization_drop"] = ref["final_memorization"] - frame["acc_permuted_train"]
        out["memorization_removed"] = out["memorization_drop"] / dm if dm > 0 else np.nan
        out["clean_drop"] = ref["final_unpermuted"] - frame["acc_unpermuted"]
        out["selectivity"] = selectivity(out["memorization_drop"], out["clean_drop"], n_unp)
        return out

    own = derived(g)
    ctl = derived(means.reindex(g["rewound"]).reset_index(drop=True).astype(float))
    out = g[["mode", "layer", "layer_index", "rewound", "param_share", "acc_test"]].copy()
    for col in own.columns:
        out[col] = own[col]
        out[f"{col}_matched"] = ctl[col].to_numpy()
    out["acc_test_matched"] = means["acc_test"].reindex(g["rewound"]).to_numpy() if len(means) else np.nan
    return out


def checkpoint_selectivity(run: Run, epoch: int | None = None, final_epoch: int | None = None) -> float:
    """The selectivity of rewinding the whole model to `epoch` (the checkpoint itself): the reference."""
    ref = reference(run, final_epoch)
    epoch = ref["peak_epoch"] if epoch is None else epoch
    m = run.metrics.set_index("epoch")
    return float(selectivity(ref["final_memorization"] - m.loc[epoch, "acc_permuted_train"],
                             ref["final_unpermuted"] - m.loc[epoch, "acc_unpermuted"], _n_unpermuted(run)))


def final_layers(names: list[str], n_final: int = N_FINAL) -> list[str]:
    """The last `n_final` of the rewindable layers `names` (at least one is left non-final)."""
    if not 1 <= n_final < len(names):
        raise RewindError(f"n_final must be between 1 and {len(names) - 1} for layers {', '.join(names)}; "
                          f"got {n_final}")
    return names[-n_final:]


def maini_test(table: pd.DataFrame, run: Run, matched: pd.DataFrame, epoch: int | None = None,
               n_final: int = N_FINAL, threshold: float = 0.5) -> dict:
    """Maini et al.'s claim as they state it, on single-layer rewinds to `epoch` (default: early
    stopping): the largest fraction of memorization removed by one non-final layer alone
    (`nonfinal_removed`, its layer, its parameter share) and its parameter-matched control
    (`nonfinal_matched`); the same for the final layers (`final_removed`: the largest of them,
    each alone); per_layer: the table. `verdict`: this run's reading (`verdicts.both_or_one`) of
    "that non-final layer removes at least `threshold` of the memorization" and "more than its
    matched control"; the claim itself is decided over seeds (`memgeo.claims`)."""
    epoch, t = maini_at(table, run, epoch)
    ctl = control_table(table, run, matched, epoch)
    ctl = ctl[ctl["mode"] == "single"].set_index("layer")
    t["memorization_removed_matched"] = ctl["memorization_removed_matched"].reindex(t.index)
    t["excess_over_matched"] = t["memorization_removed"] - t["memorization_removed_matched"]
    names = list(t.index)
    final = final_layers(names, n_final)
    t["final"] = [l in final for l in names]
    nonfinal = t[~t["final"]]["memorization_removed"].dropna()
    top = nonfinal.idxmax() if len(nonfinal) else None
    fin = t[t["final"]]["memorization_removed"].dropna()
    nan = float("nan")
    out = {"epoch": epoch, "final_layers": final, "nonfinal_layers": [l for l in names if l not in final],
           "nonfinal_top": top,
           "nonfinal_removed": float(t.loc[top, "memorization_removed"]) if top else nan,
           "nonfinal_matched": float(t.loc[top, "memorization_removed_matched"]) if top else nan,
           "nonfinal_share": float(t.loc[top, "param_share"]) if top else nan,
           "final_top": fin.idxmax() if len(fin) else None,
           "final_removed": float(fin.max()) if len(fin) else nan,
           "final_share": float(t.loc[final, "param_share"].sum()), "per_layer": t}
    excess = t[~t["final"]]["excess_over_matched"].dropna()
    out["nonfinal_best_excess_layer"] = excess.idxmax() if len(excess) else None
    out["nonfinal_best_excess"] = float(excess.max()) if len(excess) else nan
    holds_size = bool(out["nonfinal_removed"] >= threshold)
    beats = bool(out["nonfinal_removed"] > out["nonfinal_matched"])
    out["verdict"] = both_or_one(holds_size, beats)
    return out
