"""Run folders that heal or refuse, never lie: verified reuse, re-derived files, recreated
checkpoints, and filesystem errors as one clear line."""
import errno
import json
import os
import shutil
import subprocess
import sys

import pandas as pd
import pytest
import torch

from memgeo import cli
from memgeo.config import configure
from memgeo.runs import CheckpointError, RunFolderError, checkpoint_problem, open_run
from memgeo.train import train

SETS = {"unverified_local_copy": True, "train_per_class": 20, "test_per_class": 10, "width": 4,
        "epochs": 3, "batch_size": 32, "lr": 0.05, "eps": 0.5}
CFG = configure("smoke", SETS).run          # checkpoints="all": epochs 0..3 are promised


def cli_args(runs_dir):
    args = ["train", "--preset", "smoke", "--quiet", "--runs-dir", str(runs_dir)]
    for k, v in SETS.items():
        args += ["--set", f"{k}={v}"]
    return args


def states_equal(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def reference(cifar_root, tmp_path_factory):
    """An uninterrupted run, trained once; tests work on copies of its folder."""
    return train(CFG, runs_dir=tmp_path_factory.mktemp("ref"), data_root=cifar_root, progress=False)


@pytest.fixture
def copy(reference, tmp_path):
    """A copy of the reference run folder in a fresh runs folder."""
    dst = tmp_path / "runs" / reference.path.name
    shutil.copytree(reference.path, dst)
    return dst


def again(runs_dir, cifar_root, **kw):
    return train(CFG, runs_dir=runs_dir, data_root=cifar_root, progress=False, **kw)


def leftovers(runs_dir):
    """Hidden temporary files and folders anywhere under the runs folder (the runs' lock files aside)."""
    return sorted(str(p.relative_to(runs_dir)) for p in runs_dir.rglob(".*") if not p.name.endswith(".lock"))


# --- 2. Reuse verifies the folder ---------------------------------------------------------------

def test_reuse_refuses_a_folder_holding_another_config(copy, cifar_root):
    meta = json.loads((copy / "config.json").read_text())
    meta["config"]["eps"] = 0.9
    (copy / "config.json").write_text(json.dumps(meta))
    before = (copy / "last.pt").read_bytes()
    with pytest.raises(RunFolderError) as err:
        again(copy.parent, cifar_root)
    msg = str(err.value)
    assert str(copy) in msg and "eps=0.9" in msg and "eps=0.5" in msg and "delete" in msg
    assert json.loads((copy / "config.json").read_text())["config"]["eps"] == 0.9   # untouched
    assert (copy / "last.pt").read_bytes() == before


def test_reuse_refuses_a_truncated_last_pt_and_its_advice_works(copy, cifar_root, reference):
    data = (copy / "last.pt").read_bytes()
    (copy / "last.pt").write_bytes(data[: len(data) // 2])
    assert checkpoint_problem(copy / "last.pt") is not None
    with pytest.raises(CheckpointError) as err:
        again(copy.parent, cifar_root)
    assert str(copy / "last.pt") in str(err.value) and "delete it" in str(err.value)
    # Following the advice: the run is trained again from epoch 0, identical to the reference.
    (copy / "last.pt").unlink()
    run = again(copy.parent, cifar_root)
    assert run.done and states_equal(run.load_state(3), reference.load_state(3))
    pd.testing.assert_frame_equal(run.metrics.drop(columns="seconds"), reference.metrics.drop(columns="seconds"))


def test_reuse_recreates_missing_and_truncated_checkpoints_bitwise(copy, cifar_root, reference):
    last_before = (copy / "last.pt").read_bytes()
    (copy / "checkpoints" / "epoch_0001.pt").unlink()
    ck2 = copy / "checkpoints" / "epoch_0002.pt"
    ck2.write_bytes(ck2.read_bytes()[:-100])
    with pytest.warns(UserWarning, match=r"recreated checkpoint\(s\) of epochs \[1, 2\]"):
        run = again(copy.parent, cifar_root)
    assert run.checkpoint_epochs == [0, 1, 2, 3]
    for e in (1, 2):   # equal to what the uninterrupted run saved, byte for byte
        assert states_equal(run.load_state(e), reference.load_state(e))
        assert run.checkpoint_path(e).read_bytes() == reference.checkpoint_path(e).read_bytes()
    assert (copy / "last.pt").read_bytes() == last_before        # the run itself was not retrained
    assert leftovers(copy.parent) == []                           # no replay folder left behind
    assert run.check(full=True) == []


def test_missing_checkpoint_message_leads_to_a_working_run(copy, cifar_root, reference):
    (copy / "checkpoints" / "epoch_0002.pt").unlink()
    with pytest.raises(CheckpointError, match="train this run's config again") as err:
        open_run(copy).load_model(2)
    assert "epoch 2" in str(err.value)
    with pytest.warns(UserWarning, match="recreated"):
        run = again(copy.parent, cifar_root)
    assert states_equal(run.load_state(2), reference.load_state(2))


def test_recreation_refuses_when_retraining_does_not_reproduce_the_run(copy, cifar_root):
    """A checkpoint is recreated only when retraining reproduces the recorded metrics exactly."""
    ck = torch.load(copy / "last.pt", weights_only=True)
    ck["history"][1]["acc_test"] += 0.125        # as if training had not been deterministic
    torch.save(ck, copy / "last.pt")
    (copy / "checkpoints" / "epoch_0001.pt").unlink()
    with pytest.raises(CheckpointError) as err:
        again(copy.parent, cifar_root)
    msg = str(err.value)
    assert "did not reproduce" in msg and "epoch 1" in msg and "acc_test" in msg and f"delete {copy}" in msg
    assert not (copy / "checkpoints" / "epoch_0001.pt").exists() and leftovers(copy.parent) == []


def test_full_check_finds_a_checkpoint_of_another_run(copy, cifar_root, tmp_path):
    other = train(configure("smoke", {**SETS, "seed": 1}).run, runs_dir=tmp_path / "other",
                  data_root=cifar_root, progress=False)
    shutil.copy(other.checkpoint_path(1), copy / "checkpoints" / "epoch_0001.pt")
    run = open_run(copy)
    assert run.check() == []                        # the cheap check sees a sound file
    problems = run.check(full=True)
    assert len(problems) == 1 and "epoch_0001.pt" in problems[0] and other.path.name in problems[0]


# --- 3. Re-derive what can be re-derived --------------------------------------------------------

def test_deleted_metrics_csv_is_rebuilt_from_last_pt(copy, cifar_root, reference):
    (copy / "metrics.csv").unlink()
    last_before = (copy / "last.pt").read_bytes()
    run = again(copy.parent, cifar_root)
    assert (copy / "metrics.csv").read_bytes() == (reference.path / "metrics.csv").read_bytes()
    assert run.done and (copy / "last.pt").read_bytes() == last_before


@pytest.mark.parametrize("text", ["epoch,acc_test\n0,0.1\n", "", "epoch,train_loss,lr,acc_unpermuted,"
                                  "acc_permuted_train,acc_permuted_true,acc_test,seconds\n"])
def test_stale_metrics_csv_is_rebuilt_from_last_pt(copy, cifar_root, reference, text):
    (copy / "metrics.csv").write_text(text)
    run = again(copy.parent, cifar_root)
    assert (copy / "metrics.csv").read_bytes() == (reference.path / "metrics.csv").read_bytes()
    assert run.early_stop_epoch == reference.early_stop_epoch


def test_broken_config_json_is_refused_and_its_advice_works(copy, cifar_root, reference):
    original = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text('{"config": {"eps": 0.5')
    with pytest.raises(RunFolderError) as err:
        again(copy.parent, cifar_root)
    assert str(copy / "config.json") in str(err.value) and "delete it" in str(err.value)
    with pytest.raises(RunFolderError, match="config.json"):
        open_run(copy)
    # Following the advice: config.json is rebuilt from the config; the training device is unknown.
    (copy / "config.json").unlink()
    run = again(copy.parent, cifar_root)
    rebuilt = json.loads((copy / "config.json").read_text())
    for key in ("config", "hash", "num_classes", "layers", "eps_effective", "n_train", "n_test"):
        assert rebuilt[key] == original[key], key
    assert "device" not in rebuilt and "rebuilt" in rebuilt
    assert run.meta == rebuilt and states_equal(run.load_state(3), reference.load_state(3))


def test_resumed_run_recreates_a_deleted_earlier_checkpoint(cifar_root, tmp_path, reference):
    part = train(CFG, runs_dir=tmp_path, data_root=cifar_root, progress=False, stop_after=2)
    part.checkpoint_path(1).unlink()
    with pytest.warns(UserWarning, match=r"epochs \[1\]"):
        run = train(CFG, runs_dir=tmp_path, data_root=cifar_root, progress=False)
    for e in range(4):
        assert states_equal(run.load_state(e), reference.load_state(e))
    pd.testing.assert_frame_equal(run.metrics.drop(columns="seconds"), reference.metrics.drop(columns="seconds"))


# --- 4. Filesystem errors: one clear line, exit 2, nothing left behind -----------------------------

def _cli(monkeypatch, capsys, cifar_root, runs_dir):
    monkeypatch.setenv("MEMGEO_DATA_ROOT", str(cifar_root))
    monkeypatch.setenv("MEMGEO_RUNS_DIR", str(runs_dir))     # restored after the test
    rc = cli.main(cli_args(runs_dir))
    err = capsys.readouterr().err.strip().splitlines()
    return rc, [line for line in err if "Warning" not in line and "warnings.warn" not in line]


def test_read_only_runs_folder(monkeypatch, capsys, cifar_root, tmp_path):
    runs = tmp_path / "ro"
    real_mkdir = type(runs).mkdir

    def mkdir(self, *a, **kw):   # root ignores chmod: a read-only folder, simulated
        if str(self).startswith(str(tmp_path)):
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real_mkdir(self, *a, **kw)

    monkeypatch.setattr(type(runs), "mkdir", mkdir)
    with pytest.raises(RunFolderError, match="Permission denied.*writable.*--runs-dir"):
        again(runs, cifar_root)
    rc, err = _cli(monkeypatch, capsys, cifar_root, runs)
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: ") and str(runs) in err[0]


class _FullDisk:
    """`open` for memgeo.runs whose files raise ENOSPC on write once `after` writes succeeded."""

    def __init__(self, after=0):
        self.after = after

    def __call__(self, file, mode="r", *a, **kw):
        f = open(file, mode, *a, **kw)
        if "w" not in mode:
            return f
        outer = self

        class Writer:
            def __enter__(self):
                return self

            def __exit__(self, *exc):
                f.close()

            def write(self, data):
                if outer.after <= 0:
                    raise OSError(errno.ENOSPC, "No space left on device")
                outer.after -= 1
                return f.write(data)

            def __getattr__(self, name):
                return getattr(f, name)

        return Writer()


def test_full_disk_mid_run_leaves_no_temporary_file_and_resumes(monkeypatch, cifar_root, tmp_path, reference):
    import memgeo.runs
    part = train(CFG, runs_dir=tmp_path, data_root=cifar_root, progress=False, stop_after=1)
    monkeypatch.setattr(memgeo.runs, "open", _FullDisk(), raising=False)
    with pytest.raises(RunFolderError) as err:
        train(CFG, runs_dir=tmp_path, data_root=cifar_root, progress=False)
    msg = str(err.value)
    assert "No space left on device" in msg and "free space" in msg and str(part.path) in msg
    assert leftovers(tmp_path) == []                  # no .last.pt.tmp-<pid>
    monkeypatch.undo()
    run = train(CFG, runs_dir=tmp_path, data_root=cifar_root, progress=False)
    assert states_equal(run.load_state(3), reference.load_state(3))


def test_full_disk_while_creating_leaves_nothing(monkeypatch, capsys, cifar_root, tmp_path):
    import memgeo.runs
    monkeypatch.setattr(memgeo.runs, "open", _FullDisk(after=1), raising=False)
    with pytest.raises(RunFolderError, match="No space left"):
        again(tmp_path / "runs", cifar_root)
    assert leftovers(tmp_path / "runs") == []          # no .<hash>.creating-<pid>
    assert [p.name for p in (tmp_path / "runs").iterdir()] == [f".{CFG.resolved().hash()}.lock"]
    rc, err = _cli(monkeypatch, capsys, cifar_root, tmp_path / "runs")
    assert rc == 2 and len(err) == 1 and "No space left on device" in err[0]


def test_broken_config_json_from_the_cli(monkeypatch, capsys, cifar_root, copy):
    (copy / "config.json").write_text("{")
    rc, err = _cli(monkeypatch, capsys, cifar_root, copy.parent)
    assert rc == 2 and len(err) == 1 and str(copy / "config.json") in err[0] and "delete it" in err[0]


def test_stale_leftovers_of_dead_processes_are_removed(copy, cifar_root, tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        runs = copy.parent
        stale = runs / f".{copy.name}.creating-{dead.pid}"
        busy = runs / f".{copy.name}.creating-{live.pid}"
        for d in (stale, busy):
            (d / "checkpoints").mkdir(parents=True)
            (d / "config.json").write_text("{}")
        stale_tmp = copy / f".last.pt.tmp-{dead.pid}"
        stale_tmp.write_bytes(b"half")
        busy_tmp = copy / "checkpoints" / f".epoch_0001.pt.tmp-{live.pid}"
        busy_tmp.write_bytes(b"half")
        again(runs, cifar_root)
        assert not stale.exists() and not stale_tmp.exists()
        assert busy.exists() and busy_tmp.exists()
    finally:
        live.kill()
        live.wait()


def test_another_configs_folder_advice_works(copy, cifar_root, reference):
    """Following the refusal's advice (delete the folder) leads to a working run."""
    meta = json.loads((copy / "config.json").read_text())
    meta["config"]["seed"] = 7
    (copy / "config.json").write_text(json.dumps(meta))
    with pytest.raises(RunFolderError, match="delete it; then train again"):
        again(copy.parent, cifar_root)
    shutil.rmtree(copy)
    run = again(copy.parent, cifar_root)
    assert run.config == CFG and states_equal(run.load_state(3), reference.load_state(3))
