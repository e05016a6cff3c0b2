"""Test accuracy on the whole test split at chosen epochs of a run.

A run evaluates its test subset (`test_per_class`) after every epoch to draw its curves; the
numbers the book quotes (accuracy at the early-stopping epoch and at the end, a width's final
test error) are measured once more on every test image (10,000 for CIFAR-10), from the saved
checkpoints, and cached in the run folder (`memgeo.cache`).
"""
from __future__ import annotations

from dataclasses import replace
from typing import Iterable

import pandas as pd
import torch

from .cache import ResultCache
from .data import load_data
from .runs import CheckpointError, Run
from .train import predict

VERSION = 1


def full_test_cache(run: Run) -> ResultCache:
    return ResultCache.of_run(run, "full_test", {}, seed=None, version=VERSION)


def full_test_accuracy(run: Run, epochs: Iterable[int], data_root=None, batch_size: int = 500) -> pd.Series:
    """Accuracy on the whole test split at each of `epochs` (saved checkpoints), indexed by epoch."""
    epochs = sorted({int(e) for e in epochs})
    saved = set(run.checkpoint_epochs)
    lost = [e for e in epochs if e not in saved]
    if lost:
        raise CheckpointError(f"run {run.path} keeps no checkpoint of epoch(s) {lost} (saved: {sorted(saved)}): "
                              f"train with checkpoints that include them, e.g. --set checkpoints=all")
    cache = full_test_cache(run)
    todo = cache.missing("table", [(e,) for e in epochs], ["epoch"])
    if todo:
        # the whole test split, normalised with the run's own training statistics
        data = load_data(replace(run.config, test_per_class=0), data_root)
        rows = []
        for (e,) in todo:
            model = run.load_model(e)
            with torch.no_grad():
                pred = predict(model, data, data.x_test, batch_size)
            rows.append({"epoch": e, "acc_test_full": float((pred.cpu() == data.y_test).float().mean()),
                         "n_test": len(data.y_test)})
        cache.add("table", pd.DataFrame(rows), ["epoch"])
    t = cache.read("table").set_index("epoch")
    return t.loc[epochs, "acc_test_full"]
