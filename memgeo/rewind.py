"""Rewinding layers of a memorized model to an earlier checkpoint (paper Fig. 4; Maini et al.).

Take the final model of a run, replace the parameters and buffers of chosen layers by those of an
earlier checkpoint, and evaluate. Two forms:

- ``single``: layer l alone is rewound;
- ``cumulative``: every layer from l to the output is rewound (l = the first block: the whole
  model, which is exactly checkpoint e).

BatchNorm (``bn``):
- ``"rewind"`` (default): a BatchNorm's affine parameters *and* running statistics travel with the
  layer that owns them (they are buffers named ``blocks.<layer>.…``);
- ``"recompute"``: after rewinding, the running mean and variance of every BatchNorm at or after the
  first rewound layer (their inputs changed) are set to the exact mean and (unbiased) variance of
  their input over the whole training subset (no augmentation), module by module in forward order,
  with the network in eval mode (each BatchNorm sees inputs normalised by the already recomputed
  statistics before it). BatchNorms before the first rewound layer see unchanged inputs and keep
  their statistics; rewinding nothing therefore changes nothing in either mode. Holds one layer's
  training activations in memory at a time.

Evaluation is `train.evaluate`'s four accuracies (test; permuted examples against their training
labels = memorization, and against their true labels; unpermuted examples). A sweep over
(layer, mode, epoch) keeps the final model's inputs to each block (within a memory budget;
`memgeo.blocks`), so a rewind of layer l only re-runs the blocks from l on; its predictions equal `train.evaluate` on the
same rewound model (tested). With ``budget_bytes=0`` every rewound model is built whole and
evaluated by `train.evaluate` itself (the reference path).

Results are a tidy table in the run's result cache (`memgeo.cache`, under ``rewind/``), one chunk
per rewind epoch: an interrupted sweep resumes at the first epoch it had not written. Every row
carries ``param_share``, the share of the network's parameters its rewound layers hold
(`param_counts`: a BatchNorm's scale and shift count with their layer), derived from the model
when the table is read. Controls (a parameter-matched random rewind, selectivity, Maini et al.'s
claim as stated) are in `memgeo.rewind_controls`.
"""
from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import replace

import numpy as np
import pandas as pd
import torch
from torch import nn

from .cache import ResultCache
from .config import RewindConfig, Thresholds
from .data import LabelledData
from .models import BlockNet
from .runs import CheckpointError, Run
from .blocks import BlockInputs, evaluate_from, recompute_from  # noqa: F401  (BlockInputs: public here too)
from .train import evaluate, resolve_device
from .verdicts import rewind_claim_holds

BN_OPTIONS = ("rewind", "recompute")
MODES = ("single", "cumulative")
METRICS = ("acc_test", "acc_permuted_train", "acc_permuted_true", "acc_unpermuted")
STORED_COLUMNS = ["layer", "layer_index", "mode", "epoch", "bn", "final_epoch", "rewound", *METRICS]
# param_share is derived from the model's shapes when a table is read, not stored: the cached
# numbers did not change, so neither did the cache key.
TABLE_COLUMNS = [*STORED_COLUMNS, "param_share"]
REWIND_VERSION = 2      # bump when the numbers a cache key stands for change
THRESHOLDS = Thresholds()


class RewindError(ValueError):
    """A layer, mode or BatchNorm option that rewinding cannot use; the message names what exists."""


# ---------------------------------------------------------------------------------------------
# Layers

def rewindable_layers(model: BlockNet) -> list[str]:
    """Blocks that own parameters or buffers, in order ("input" has none)."""
    owners = {model.block_of(k) for k in model.state_dict()}
    return [name for name in model.blocks if name in owners]


def check_layer(model: BlockNet, layer: str) -> str:
    names = rewindable_layers(model)
    if layer in names:
        return layer
    if layer == "input":
        raise RewindError(f"layer 'input' is the image and has no parameters to rewind; "
                          f"rewindable layers of this {model.arch}: {', '.join(names)}")
    raise RewindError(f"no layer {layer!r} in this {model.arch}; rewindable layers: {', '.join(names)}")


def layers_for(model: BlockNet, layer: str | None, mode: str = "single") -> list[str]:
    """The layers rewound for `layer` in `mode`: [layer] (single) or layer..output (cumulative).

    `layer=None` rewinds nothing."""
    if mode not in MODES:
        raise RewindError(f"unknown mode {mode!r}: choose one of {', '.join(MODES)}")
    if layer is None:
        return []
    check_layer(model, layer)
    names = rewindable_layers(model)
    return [layer] if mode == "single" else names[names.index(layer):]


def param_counts(model: BlockNet) -> dict[str, int]:
    """Number of trainable parameters of each rewindable layer, in order. A BatchNorm's affine
    weight and bias count with the layer that owns them (they are rewound with it); running
    statistics are buffers, not parameters, and are not counted."""
    counts = {name: 0 for name in rewindable_layers(model)}
    for k, v in model.named_parameters():
        counts[model.block_of(k)] += v.numel()
    return counts


def param_share(model: BlockNet, layers) -> float:
    """Fraction of the network's parameters that rewinding `layers` replaces."""
    counts = param_counts(model)
    for layer in layers:
        check_layer(model, layer)
    return sum(counts[l] for l in set(layers)) / sum(counts.values())


def with_param_share(table: pd.DataFrame, model: BlockNet) -> pd.DataFrame:
    """`table` with a column param_share: the share of `model`'s parameters in each row's
    "rewound" layers ("+"-joined names)."""
    out = table.copy()
    shares = {r: param_share(model, r.split("+")) for r in out["rewound"].unique()}
    out["param_share"] = out["rewound"].map(shares).astype(float)
    return out


def _check_bn(bn: str) -> None:
    if bn not in BN_OPTIONS:
        raise RewindError(f"unknown bn={bn!r}: choose one of {', '.join(BN_OPTIONS)} "
                          f"(rewind: statistics travel with the layer; recompute: re-estimated on training data)")


def _layers_of_state(state: Mapping, block_of) -> list[str]:
    seen = []
    for k in state:
        b = block_of(k) if k.startswith("blocks.") else k
        if b not in seen:
            seen.append(b)
    return seen


def check_compatible(model: BlockNet, state: Mapping, source: str = "the checkpoint") -> None:
    """Fail clearly when `state` was saved from another architecture or width than `model`."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    shapes = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or extra or shapes:
        detail = []
        if missing or extra:
            detail.append(f"the model has layers {rewindable_layers(model)}, {source} has "
                          f"{_layers_of_state(state, model.block_of)}")
        if missing:
            detail.append(f"missing from {source}: {missing[:3]}{' …' if len(missing) > 3 else ''}")
        if extra:
            detail.append(f"not in the model: {extra[:3]}{' …' if len(extra) > 3 else ''}")
        if shapes:
            detail.append("shape mismatch: " + ", ".join(
                f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in shapes[:3]))
        raise CheckpointError(f"{source} does not fit this {model.arch}: " + "; ".join(detail) +
                              ". It was saved from another architecture or width.")


# ---------------------------------------------------------------------------------------------
# Rewinding one model

def rewound_state(model: BlockNet, source: Mapping, layers) -> dict:
    """`model`'s state dict with every parameter and buffer of `layers` taken from `source`."""
    layers = set(layers)
    for layer in layers:
        check_layer(model, layer)
    check_compatible(model, source)
    own = model.state_dict()
    return {k: (source[k].detach().to(v.device).clone() if model.block_of(k) in layers else v.detach().clone())
            for k, v in own.items()}


def rewind_model(model: BlockNet, source, layers, bn: str = "rewind", data: LabelledData | None = None,
                 batch_size: int = 128) -> BlockNet:
    """A copy of `model` (in eval mode) whose `layers` hold `source`'s parameters and buffers.

    `source` is a state dict or a model of the same architecture. With bn="recompute" the
    BatchNorm statistics from the first rewound layer on are re-estimated on `data`'s training
    images (see the module docstring)."""
    _check_bn(bn)
    if isinstance(source, nn.Module):
        source = source.state_dict()
    layers = list(layers)
    state = rewound_state(model, source, layers)
    out = copy.deepcopy(model)
    out.load_state_dict(state)
    out.eval()
    if bn == "recompute" and layers:
        if data is None:
            raise RewindError("bn='recompute' needs the training data: pass data=run.load_data()")
        recompute_bn_stats(out, data, layers=layers, batch_size=batch_size)
    return out


def rewind_run(run: Run, layer: str | None, epoch: int, mode: str = "single", bn: str = "rewind",
               final_epoch: int | None = None, data: LabelledData | None = None, device=None) -> BlockNet:
    """The run's final model with `layer` (single) or `layer`..output (cumulative) rewound to `epoch`."""
    device = device or resolve_device(run.config.device)
    final_epoch = run.config.epochs if final_epoch is None else final_epoch
    _check_epochs(run, [epoch, final_epoch])
    final = run.load_model(final_epoch, device)
    layers = layers_for(final, layer, mode)
    if bn == "recompute" and data is None:
        data = run.load_data(device)
    return rewind_model(final, run.load_state(epoch), layers, bn, data)


def recompute_bn_stats(model: BlockNet, data: LabelledData, layers=None, batch_size: int = 128) -> list[str]:
    """Set the running statistics of every BatchNorm at or after the first of `layers` (all layers
    if None) to the mean and unbiased variance of its input over the training images (eval mode,
    forward order). Modifies `model`; returns the names of the BatchNorm modules recomputed."""
    names = rewindable_layers(model)
    layers = names if layers is None else [check_layer(model, l) for l in layers]
    if not layers:
        return []
    first = min(layers, key=names.index)
    return recompute_from(model, first, BlockInputs(model, data, batch_size))[0]


# ---------------------------------------------------------------------------------------------
# Sweeps over (layer, mode, epoch), cached in the run folder

def _check_epochs(run: Run, epochs) -> None:
    saved = run.checkpoint_epochs
    bad = sorted({int(e) for e in epochs} - set(saved))
    if bad:
        raise CheckpointError(f"run {run.path.name} has no checkpoint for epoch(s) {bad}; "
                              f"saved epochs: {saved}")


def default_epochs(run: Run, n: int = RewindConfig().n_epochs, final_epoch: int | None = None) -> list[int]:
    """About `n` saved epochs to rewind to: 0, the early-stopping epoch (even when it is the final
    one, so that the summaries have it), and roughly log-spaced epochs from 1 to three quarters of
    training (snapped to saved checkpoints)."""
    final = run.config.epochs if final_epoch is None else final_epoch
    saved = [e for e in run.checkpoint_epochs if e < final]
    if not saved:
        return []
    es = run.early_stop_epoch
    chosen = {saved[0]} | ({es} if es in run.checkpoint_epochs and es <= final else set())
    k = max(n - len(chosen), 0)
    # Up to three quarters of training: later rewinds barely differ from the final model.
    targets = np.geomspace(1, max(round(0.75 * final), 1), num=k) if k else []
    for t in targets:
        rest = [e for e in saved if e not in chosen]
        if not rest:
            break
        chosen.add(min(rest, key=lambda e: (abs(np.log1p(e) - np.log1p(t)), e)))
    return sorted(chosen)


def rewind_cache(run: Run, layers, modes, bn: str, final_epoch: int, device: torch.device) -> ResultCache:
    """Cache entry of a rewind table: keyed by what is rewound and how, and the kind of device it is
    evaluated on; the rewind epochs are its chunks."""
    return ResultCache.of_run(run, "rewind", {"layers": list(layers), "modes": list(modes), "bn": bn,
                                              "final_epoch": int(final_epoch), "device": device.type},
                              seed=None, version=REWIND_VERSION)


def rewind_table(run: Run, epochs=None, layers=None, modes=MODES, bn: str = "rewind",
                 final_epoch: int | None = None, data: LabelledData | None = None, data_root=None,
                 device=None, batch_size: int = 128, cache: bool = True, budget_bytes: int | None = None,
                 progress: bool = False) -> pd.DataFrame:
    """Evaluate the final model with each layer (single) and each layer..output (cumulative)
    rewound to each epoch. One row per (layer, mode, epoch); columns `TABLE_COLUMNS`.

    Kept in the run's result cache (`rewind_cache`, used when `cache`), one chunk per epoch: epochs
    already computed are read, a half-finished sweep resumes. `budget_bytes` caps the memory for the final model's block
    inputs (default: 1 GiB on the CPU, 8 GiB on a GPU; 0 turns the shortcut off)."""
    _check_bn(bn)
    device = torch.device(device) if device is not None else resolve_device(run.config.device)
    final_epoch = run.config.epochs if final_epoch is None else int(final_epoch)
    if final_epoch not in run.checkpoint_epochs:
        raise CheckpointError(f"run {run.path.name} has no checkpoint for the final epoch {final_epoch} "
                              f"(is it still training?); saved epochs: {run.checkpoint_epochs}")
    epochs = default_epochs(run, final_epoch=final_epoch) if epochs is None else sorted({int(e) for e in epochs})
    _check_epochs(run, epochs)
    for m in modes:
        if m not in MODES:
            raise RewindError(f"unknown mode {m!r}: choose one of {', '.join(MODES)}")
    final = run.load_model(final_epoch, device)
    names = rewindable_layers(final)
    layers = names if layers is None else [check_layer(final, l) for l in layers]
    layers = sorted(set(layers), key=names.index)
    modes = [m for m in MODES if m in modes]

    store = rewind_cache(run, layers, modes, bn, final_epoch, device) if cache else None
    todo = store.missing("table", epochs, ["epoch"]) if store else list(epochs)
    rows = []
    if todo:
        rows = _rewind_rows(run, final, names, todo, layers, modes, bn, final_epoch, data, data_root, device,
                            batch_size, budget_bytes, progress, store)
    table = store.read() if store else pd.DataFrame(rows, columns=STORED_COLUMNS)
    table = with_param_share(table[table["epoch"].isin(epochs)], final)
    order = {m: i for i, m in enumerate(MODES)}
    table = table.sort_values(["mode", "epoch", "layer_index"], key=lambda s: s.map(order) if s.name == "mode" else s)
    return table.reset_index(drop=True)


def _rewind_rows(run: Run, final: BlockNet, names, epochs, layers, modes, bn, final_epoch, data, data_root, device,
                 batch_size, budget_bytes, progress, store) -> list[dict]:
    """The rows of `rewind_table` for `epochs`; each epoch's rows are added to `store` (if any) as
    soon as they are computed."""
    rows = []
    if data is None:
        data = run.load_data(device, data_root)
    if budget_bytes is None:
        budget_bytes = (8 if device.type == "cuda" else 1) << 30
    inputs = BlockInputs(final, data, batch_size, budget_bytes)
    # Rewinding every layer is the checkpoint itself (bitwise, tested): when the run was evaluated
    # on this kind of device, its metrics at that epoch are the answer and need no second pass.
    trained_on = run.meta.get("device", "")
    recorded = run.metrics.set_index("epoch") if (bn == "rewind" and trained_on
                                                  and torch.device(trained_on).type == device.type) else None
    todo = list(epochs)
    bar = None
    if progress and todo:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(todo) * len(layers) * len(modes), desc=f"rewind [{run.path.name}]", leave=False)
    for epoch in todo:
        source = run.load_state(epoch)
        check_compatible(final, source, f"checkpoint {run.checkpoint_path(epoch)}")
        new = []
        seen: dict[tuple, dict] = {}
        if epoch == final_epoch:    # rewinding to the final epoch changes nothing: one evaluation
            same = evaluate(final, data, batch_size)
            seen = {tuple(layers_for(final, l, m)): same for m in modes for l in layers}
        for mode in modes:
            for layer in layers:
                rewound = layers_for(final, layer, mode)
                if tuple(rewound) in seen:      # cumulative from the last layer == single
                    metrics = seen[tuple(rewound)]
                elif recorded is not None and rewound == names and epoch in recorded.index:
                    metrics = {k: float(recorded.loc[epoch, k]) for k in METRICS}
                    seen[tuple(rewound)] = metrics
                elif budget_bytes == 0:         # reference path: the whole model, train.evaluate
                    model = rewind_model(final, source, rewound, bn, data, batch_size)
                    metrics = evaluate(model, data, batch_size)
                    seen[tuple(rewound)] = metrics
                else:
                    model = rewind_model(final, source, rewound, "rewind")
                    outputs = recompute_from(model, rewound[0], inputs)[1] if bn == "recompute" else None
                    metrics = evaluate_from(model, rewound[0], inputs, outputs)
                    seen[tuple(rewound)] = metrics
                new.append({"layer": layer, "layer_index": names.index(layer) + 1, "mode": mode,
                            "epoch": epoch, "bn": bn, "final_epoch": final_epoch,
                            "rewound": "+".join(rewound), **metrics})
                if bar is not None:
                    bar.update(1)
        rows += new
        if store is not None:
            store.add("table", pd.DataFrame(new, columns=STORED_COLUMNS), ["epoch"])
    if bar is not None:
        bar.close()
    return rows


# ---------------------------------------------------------------------------------------------
# Summaries: the paper's claim and Maini et al.'s protocol

def reference(run: Run, final_epoch: int | None = None) -> dict:
    """Peak (early-stopping) and final accuracies from the run's metrics."""
    m = run.metrics.set_index("epoch")
    final_epoch = run.config.epochs if final_epoch is None else final_epoch
    es = run.early_stop_epoch
    return {"peak_epoch": es, "peak_test": float(m.loc[es, "acc_test"]),
            "final_epoch": final_epoch, "final_test": float(m.loc[final_epoch, "acc_test"]),
            "peak_memorization": float(m.loc[es, "acc_permuted_train"]),
            "final_memorization": float(m.loc[final_epoch, "acc_permuted_train"]),
            "peak_unpermuted": float(m.loc[es, "acc_unpermuted"]),
            "final_unpermuted": float(m.loc[final_epoch, "acc_unpermuted"])}


def gap_table(table: pd.DataFrame, run: Run, epoch: int | None = None) -> pd.DataFrame:
    """Rewinds to `epoch` (default: the early-stopping epoch), one row per (mode, layer), with

    - gap_recovered = (acc_test - final) / (peak - final): the fraction of the test accuracy lost
      between the early-stopping epoch and the end that the rewind gives back;
    - memorization_removed = (mem_final - mem) / (mem_final - mem_checkpoint): the fraction of the
      memorization acquired since `epoch` that the rewind takes away (1 = as much as rewinding the
      whole model to `epoch`)."""
    ref = reference(run, int(table["final_epoch"].iloc[0]))
    epoch = ref["peak_epoch"] if epoch is None else epoch
    m = run.metrics.set_index("epoch")
    mem_ck = float(m.loc[epoch, "acc_permuted_train"])
    t = table[table["epoch"] == epoch].copy()
    if t.empty:
        raise RewindError(f"no rewinds to epoch {epoch} in the table; its epochs: {sorted(table['epoch'].unique())}")
    gap = ref["peak_test"] - ref["final_test"]
    t["gap_recovered"] = (t["acc_test"] - ref["final_test"]) / gap if gap > 0 else np.nan
    dm = ref["final_memorization"] - mem_ck
    t["memorization_removed"] = (ref["final_memorization"] - t["acc_permuted_train"]) / dm if dm > 0 else np.nan
    cols = ["mode", "layer", "layer_index", "rewound", "param_share", *METRICS, "gap_recovered",
            "memorization_removed"]
    return t[cols].reset_index(drop=True)


def _argmax(s: pd.Series):
    """Index of the largest value, None when every value is missing."""
    s = s.dropna()
    return s.idxmax() if len(s) else None


def _halves(names: list[str]) -> tuple[list[str], list[str]]:
    k = len(names) // 2
    return names[:k], names[k:]


def summary(table: pd.DataFrame, run: Run, threshold: float = THRESHOLDS.recovered) -> dict:
    """Numbers for the text: peak, final, best rewind (and its layers), and whether the claim holds.

    The paper's claim is judged at the early-stopping epoch: "late" layers are the deeper half of
    the rewindable layers (for an odd count the middle one is late), "early" the rest. It holds
    when some cumulative rewind that starts in the late half recovers at least `threshold` of the
    gap and no single early layer does (`verdicts.rewind_claim_holds`)."""
    ref = reference(run, int(table["final_epoch"].iloc[0]))
    names = list(table.sort_values("layer_index")["layer"].drop_duplicates())
    early, late = _halves(names)
    best = table.loc[table["acc_test"].idxmax()]
    g = gap_table(table, run)
    cum = g[g["mode"] == "cumulative"].set_index("layer")
    sgl = g[g["mode"] == "single"].set_index("layer")
    late_cum = cum.loc[[l for l in late if l in cum.index]]
    early_sgl = sgl.loc[[l for l in early if l in sgl.index]]
    late_best = _argmax(late_cum["gap_recovered"])
    early_best = _argmax(early_sgl["gap_recovered"])
    # The fewest final layers whose cumulative rewind recovers `threshold` of the gap.
    fewest = None
    for layer in reversed(names):
        if layer in cum.index and cum.loc[layer, "gap_recovered"] >= threshold:
            fewest = layer
            break
    late_frac = float(late_cum.loc[late_best, "gap_recovered"]) if late_best else float("nan")
    early_frac = float(early_sgl.loc[early_best, "gap_recovered"]) if early_best else float("nan")
    holds = rewind_claim_holds(late_frac, early_frac, replace(THRESHOLDS, recovered=threshold))
    return {
        **ref, "gap": ref["peak_test"] - ref["final_test"], "threshold": threshold,
        "best_test": float(best["acc_test"]), "best_layer": str(best["layer"]), "best_mode": str(best["mode"]),
        "best_epoch": int(best["epoch"]), "best_rewound": str(best["rewound"]),
        "early_layers": early, "late_layers": late,
        "late_best_layer": late_best, "late_best_fraction": late_frac,
        "late_best_rewound": str(late_cum.loc[late_best, "rewound"]) if late_best else "",
        "late_best_param_share": float(late_cum.loc[late_best, "param_share"]) if late_best else float("nan"),
        "early_best_layer": early_best, "early_best_fraction": early_frac,
        "fewest_layer": fewest,
        "fewest_count": (len(names) - names.index(fewest)) if fewest else 0,
        "fewest_fraction": float(cum.loc[fewest, "gap_recovered"]) if fewest else float("nan"),
        "claim_holds": holds,
    }


def maini_table(table: pd.DataFrame, run: Run) -> pd.DataFrame:
    """Maini et al.'s protocol: each layer rewound alone, at every epoch of the table. Per row, the
    memorization left (accuracy of permuted examples on their training labels), the memorization
    removed (absolute, and as a fraction of what rewinding the whole model to that epoch removes),
    and the change in accuracy on unpermuted (clean) training examples and on the test set."""
    ref = reference(run, int(table["final_epoch"].iloc[0]))
    m = run.metrics.set_index("epoch")
    t = table[table["mode"] == "single"].copy()
    mem_ck = t["epoch"].map(m["acc_permuted_train"])
    t["memorization"] = t["acc_permuted_train"]
    t["memorization_drop"] = ref["final_memorization"] - t["acc_permuted_train"]
    full = ref["final_memorization"] - mem_ck
    t["memorization_removed"] = np.where(full > 0, t["memorization_drop"] / full.where(full > 0, 1), np.nan)
    t["clean_drop"] = ref["final_unpermuted"] - t["acc_unpermuted"]
    t["test_change"] = t["acc_test"] - ref["final_test"]
    return t[["layer", "layer_index", "epoch", "param_share", "memorization", "memorization_drop",
              "memorization_removed", "clean_drop", "test_change"]].reset_index(drop=True)


def maini_at(table: pd.DataFrame, run: Run, epoch: int | None = None) -> tuple[int, pd.DataFrame]:
    """(epoch, `maini_table` rows of the single rewinds to it, indexed by layer in order); epoch
    None: the early-stopping epoch."""
    if epoch is None:
        epoch = reference(run, int(table["final_epoch"].iloc[0]))["peak_epoch"]
    t = maini_table(table, run)
    t = t[t["epoch"] == epoch].sort_values("layer_index").set_index("layer")
    if t.empty:
        raise RewindError(f"no single rewinds to epoch {epoch}; epochs in the table: {sorted(table['epoch'].unique())}")
    return epoch, t


def maini_summary(table: pd.DataFrame, run: Run, epoch: int | None = None,
                  threshold: float = THRESHOLDS.recovered) -> dict:
    """Where single-layer rewinds to `epoch` (default: early stopping) remove memorization."""
    epoch, t = maini_at(table, run, epoch)
    names = list(t.index)
    early, late = _halves(names)
    top = _argmax(t["memorization_drop"])
    strong = [l for l in names if t.loc[l, "memorization_removed"] >= threshold]
    total = float(t["memorization_drop"].clip(lower=0).sum())
    share_late = float(t.loc[late, "memorization_drop"].clip(lower=0).sum() / total) if total > 0 else float("nan")
    return {"epoch": epoch, "top_layer": top, "top_removed": float(t.loc[top, "memorization_removed"]),
            "top_drop": float(t.loc[top, "memorization_drop"]),
            "top_memorization": float(t.loc[top, "memorization"]),
            "top_clean_drop": float(t.loc[top, "clean_drop"]),
            "strong_layers": strong, "n_strong": len(strong), "n_layers": len(names),
            "strong_in_late_only": bool(strong) and all(l in late for l in strong),
            "late_share": share_late, "early_layers": early, "late_layers": late,
            "per_layer": t}
