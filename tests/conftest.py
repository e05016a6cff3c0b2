"""Shared fixtures: tiny datasets written in the official file formats."""
import hashlib
import pickle
from pathlib import Path

import numpy as np
import pytest


def write_cifar_batches(folder: Path, per_class_train: int, per_class_test: int, classes: int = 10,
                        label_key: str = "labels", seed: int = 0, hundred: bool = False) -> None:
    """Write CIFAR-10 (data_batch_1..5, test_batch, batches.meta) or CIFAR-100 (train, test, meta)
    python pickles. Images are class-dependent noise so a small net can learn them."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    protos = rng.integers(0, 256, size=(classes, 3072))

    def make(n_per):
        y = np.repeat(np.arange(classes), n_per)
        rng.shuffle(y)
        x = np.clip(protos[y] * 0.6 + rng.integers(0, 256, size=(len(y), 3072)) * 0.4, 0, 255).astype(np.uint8)
        return x, y

    xtr, ytr = make(per_class_train)
    xte, yte = make(per_class_test)
    if hundred:
        for name, x, y in (("train", xtr, ytr), ("test", xte, yte)):
            with open(folder / name, "wb") as f:
                pickle.dump({"data": x, "fine_labels": y.tolist(), "coarse_labels": (y // 5).tolist(),
                             "filenames": [f"{i}.png" for i in range(len(y))]}, f)
        with open(folder / "meta", "wb") as f:
            pickle.dump({"fine_label_names": [f"class{c}" for c in range(classes)],
                         "coarse_label_names": [f"super{c}" for c in range(classes // 5)]}, f)
        return
    parts = np.array_split(np.arange(len(ytr)), 5)
    for b, idx in enumerate(parts):
        with open(folder / f"data_batch_{b + 1}", "wb") as f:
            pickle.dump({"batch_label": f"training batch {b + 1} of 5", "labels": ytr[idx].tolist(),
                         "data": xtr[idx], "filenames": [f"{i}.png" for i in idx]}, f)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({"batch_label": "testing batch 1 of 1", "labels": yte.tolist(), "data": xte,
                     "filenames": [f"{i}.png" for i in range(len(yte))]}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"class{c}" for c in range(classes)], "num_cases_per_batch": 0,
                     "num_vis": 3072}, f)


def md5(path: Path) -> str:
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="session")
def cifar_root(tmp_path_factory) -> Path:
    """A tiny CIFAR-10 in the official python layout (40 train / 20 test images per class)."""
    root = tmp_path_factory.mktemp("data")
    write_cifar_batches(root / "cifar-10-batches-py", 40, 20)
    return root


@pytest.fixture(scope="session")
def smoke_reports(cifar_root, tmp_path_factory):
    """Every section report of the book on the smoke preset (tiny synthetic CIFAR-10): what the
    notebooks glue, draw and display. Runs and caches live in a temporary runs folder."""
    from memgeo.config import configure
    from memgeo.reports.double_descent import double_descent_report
    from memgeo.reports.gradients import gradients_report
    from memgeo.reports.layers import layers_report
    from memgeo.reports.methods import methods_report
    from memgeo.reports.rewind import rewind_report

    mp = pytest.MonkeyPatch()
    mp.setenv("MEMGEO_RUNS_DIR", str(tmp_path_factory.mktemp("runs")))
    mp.setenv("MEMGEO_DATA_ROOT", str(cifar_root))
    try:
        p = configure("smoke", {"unverified_local_copy": True, "checks.n_t": 400, "checks.n_dichotomies": 4})
        yield p, {"layers": layers_report(p, progress=False), "rewind": rewind_report(p),
                  "double_descent": double_descent_report(p, progress=False), "gradients": gradients_report(p),
                  "methods": methods_report(p)}
    finally:
        mp.undo()
