import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from memgeo.config import ConfigError, RunConfig
from memgeo.train import CheckpointError, open_run, run_path, train


def small(**kw):
    base = dict(unverified_local_copy=True, train_per_class=20, test_per_class=10, eps=0.5, width=4,
                epochs=3, batch_size=32, lr=0.05)
    base.update(kw)
    return RunConfig(**base)


def states_equal(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_run_folder_metrics_and_checkpoints(cifar_root, tmp_path):
    cfg = small()
    run = train(cfg, runs_dir=tmp_path, data_root=cifar_root, progress=False)
    assert run.path == tmp_path / cfg.hash() and run.done
    meta = json.loads((run.path / "config.json").read_text())
    assert RunConfig.from_dict(meta["config"]) == cfg.resolved() and meta["layers"][-1] == "logits"
    m = run.metrics
    assert m["epoch"].tolist() == [0, 1, 2, 3]
    assert set(m.columns) >= {"train_loss", "acc_unpermuted", "acc_permuted_train", "acc_permuted_true", "acc_test"}
    assert m[["acc_unpermuted", "acc_permuted_train", "acc_permuted_true", "acc_test"]].stack().between(0, 1).all()
    assert run.checkpoint_epochs == [0, 1, 2, 3]
    assert 0 <= run.early_stop_epoch <= 3
    # Reusing: a second call returns the same folder without training.
    mtime = (run.path / "last.pt").stat().st_mtime
    again = train(cfg, runs_dir=tmp_path, data_root=cifar_root, progress=False)
    assert again.path == run.path and (run.path / "last.pt").stat().st_mtime == mtime


def test_training_learns_the_easy_synthetic_classes(cifar_root, tmp_path):
    run = train(small(eps=0.0, epochs=6, width=8), runs_dir=tmp_path, data_root=cifar_root, progress=False)
    assert run.metrics["acc_test"].iloc[-1] > 0.5


def test_deterministic_and_resume_is_bitwise(cifar_root, tmp_path):
    cfg = small(epochs=4, checkpoints="0,4", augment=True)
    full = train(cfg, runs_dir=tmp_path / "a", data_root=cifar_root, progress=False)
    twice = train(cfg, runs_dir=tmp_path / "b", data_root=cifar_root, progress=False)
    assert states_equal(full.load_state(4), twice.load_state(4))
    part = train(cfg, runs_dir=tmp_path / "c", data_root=cifar_root, progress=False, stop_after=2)
    assert not part.done and pd.read_csv(part.path / "metrics.csv")["epoch"].max() == 2
    resumed = train(cfg, runs_dir=tmp_path / "c", data_root=cifar_root, progress=False)
    assert states_equal(full.load_state(4), resumed.load_state(4))
    pd.testing.assert_frame_equal(full.metrics.drop(columns="seconds"), resumed.metrics.drop(columns="seconds"))


def test_resume_after_sigkill(cifar_root, tmp_path):
    """Kill a real training process mid-run; the resumed run equals an uninterrupted one."""
    sets = ["unverified_local_copy=true", "train_per_class=40", "val_per_class=0", "test_per_class=10", "width=8",
            "epochs=6", "checkpoints=0,6", "batch_size=16"]
    base = [sys.executable, "-m", "memgeo", "train", "--preset", "smoke", "--quiet"]
    for s in sets:
        base += ["--set", s]
    args = base + ["--runs-dir", str(tmp_path / "k")]
    env = dict(os.environ, MEMGEO_DATA_ROOT=str(cifar_root))
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    folder = None
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        found = [p for p in (tmp_path / "k").glob("*/metrics.csv")] if (tmp_path / "k").exists() else []
        if found and len(pd.read_csv(found[0])) >= 3:   # epochs 0, 1, 2 done
            folder = found[0].parent
            break
        time.sleep(0.05)
    assert proc.poll() is None, "training finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert folder is not None
    assert not open_run(folder).done
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == str(folder)
    uninterrupted = subprocess.run(base + ["--runs-dir", str(tmp_path / "u")], env=env,
                                   capture_output=True, text=True, timeout=300)
    u = Path(uninterrupted.stdout.strip().splitlines()[-1])
    assert states_equal(open_run(folder).load_state(6), open_run(u).load_state(6))


def test_bad_input_leaves_no_run_folder(cifar_root, tmp_path):
    with pytest.raises(ConfigError, match="class 0 has only 40"):
        train(small(train_per_class=100), runs_dir=tmp_path, data_root=cifar_root, progress=False)
    from memgeo.data import DataError
    with pytest.raises(DataError, match="make_cifar10_batches"):
        train(small(), runs_dir=tmp_path, data_root=tmp_path / "nowhere", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_checkpoint_errors(cifar_root, tmp_path):
    cfg = small(epochs=2)
    run = train(cfg, runs_dir=tmp_path, data_root=cifar_root, progress=False)
    with pytest.raises(CheckpointError, match=r"no checkpoint for epoch 7; saved epochs: \[0, 1, 2\]"):
        run.load_model(7)
    # A checkpoint of another architecture: named as such.
    other = train(small(epochs=1, width=6), runs_dir=tmp_path, data_root=cifar_root, progress=False)
    from memgeo.train import load_state_checked
    from memgeo.models import build_model
    with pytest.raises(CheckpointError, match="another architecture or width"):
        load_state_checked(build_model(cfg), other.load_state(1), "ck")
    # A checkpoint copied from another run is refused.
    import shutil
    shutil.copy(other.checkpoint_path(1), run.checkpoint_path(1))
    with pytest.raises(CheckpointError, match="belongs to run"):
        run.load_state(1)
    # A corrupt file: says it is corrupt and what to do.
    run.checkpoint_path(2).write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt"):
        run.load_model(2)
    (run.path / "last.pt").write_bytes(b"garbage")
    (run.path / "metrics.csv").write_text("epoch,acc_test\n0,0.1\n")
    with pytest.raises(CheckpointError, match="corrupt"):
        train(cfg, runs_dir=tmp_path, data_root=cifar_root, progress=False)


def test_validation_split_is_held_out_and_chooses_early_stopping(cifar_root, tmp_path):
    from memgeo.data import load_data
    cfg = small(val_per_class=5, epochs=4)
    data = load_data(cfg, cifar_root)
    assert len(data.val_index) == 50 and not set(data.val_index) & set(data.train_index)
    assert torch.equal(data.y_val, torch.bincount(data.y_val, minlength=10).new_tensor(data.y_val))
    assert torch.bincount(data.y_val).tolist() == [5] * 10
    run = train(cfg, runs_dir=tmp_path, data_root=cifar_root, progress=False)
    m = run.metrics
    assert m["acc_val"].between(0, 1).all()
    assert run.early_stop_epoch == int(m.loc[m["acc_val"].idxmax(), "epoch"])
    assert run.early_stop_epoch in run.checkpoint_epochs
    # without a validation split: acc_val is nan and early stopping falls back on the test set
    plain = train(small(epochs=2), runs_dir=tmp_path, data_root=cifar_root, progress=False)
    assert plain.metrics["acc_val"].isna().all()
    assert plain.early_stop_epoch == int(plain.metrics.loc[plain.metrics["acc_test"].idxmax(), "epoch"])


def test_validation_split_too_large_is_a_config_error(cifar_root, tmp_path):
    with pytest.raises(ConfigError, match="val_per_class"):
        train(small(val_per_class=25), runs_dir=tmp_path, data_root=cifar_root, progress=False)
    assert not any(tmp_path.iterdir())


def test_evaluate_checkpoints_measures_only_kept_epochs(cifar_root, tmp_path):
    run = train(small(epochs=4, checkpoints="0,2", evaluate="checkpoints"), runs_dir=tmp_path,
                data_root=cifar_root, progress=False)
    m = run.metrics.set_index("epoch")
    assert m["acc_test"].notna().tolist() == [True, False, True, False, True]
    assert m["train_loss"].iloc[1:].notna().all()


def test_full_test_accuracy_reads_every_test_image_and_caches(cifar_root, tmp_path):
    from memgeo.heldout import full_test_accuracy, full_test_cache
    run = train(small(test_per_class=5), runs_dir=tmp_path, data_root=cifar_root, progress=False)
    acc = full_test_accuracy(run, [3, 0], data_root=cifar_root)
    assert acc.index.tolist() == [0, 3] and acc.between(0, 1).all()
    t = full_test_cache(run).read("table")
    assert t["n_test"].tolist() == [200, 200]       # 20 per class, not the 5 of the curves
    assert full_test_accuracy(run, [3], data_root=cifar_root).iloc[0] == acc.loc[3]
    with pytest.raises(CheckpointError, match="no checkpoint of epoch"):
        full_test_accuracy(run, [7], data_root=cifar_root)
