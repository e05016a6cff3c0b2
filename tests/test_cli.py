import os
import subprocess
import sys

import pytest
import torch


def cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "memgeo", *args], capture_output=True, text=True,
                          env=dict(os.environ, **(env or {})), timeout=300)


def test_train_prints_run_folder_last(cifar_root, tmp_path):
    r = cli("train", "--preset", "smoke", "--quiet", "--runs-dir", str(tmp_path), "--set", "unverified_local_copy=1",
            "--set", "train_per_class=10", "--set", "test_per_class=5", "--set", "epochs=1",
            env={"MEMGEO_DATA_ROOT": str(cifar_root)})
    assert r.returncode == 0, r.stderr
    last = r.stdout.strip().splitlines()[-1]
    assert os.path.isfile(os.path.join(last, "metrics.csv")) and os.path.dirname(last) == str(tmp_path)


def test_bad_values_exit_nonzero_with_message(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("runs")
    r = cli("train", "--preset", "smoke", "--set", "eps=2", "--runs-dir", str(tmp_path))
    assert r.returncode == 2 and "eps=2.0 is outside [0, 1]" in r.stderr
    r = cli("train", "--preset", "tiny", "--runs-dir", str(tmp_path))
    assert r.returncode == 2 and "unknown preset 'tiny'" in r.stderr
    r = cli("train", "--preset", "smoke", "--set", "widht=3", "--runs-dir", str(tmp_path))
    assert r.returncode == 2 and "unknown config key(s) widht" in r.stderr
    r = cli("train", "--preset", "smoke", "--set", "unverified_local_copy=1", "--runs-dir", str(tmp_path), env={"MEMGEO_DATA_ROOT": str(tmp_path_factory.mktemp("empty"))})
    assert r.returncode == 2 and "CIFAR-10 copy is incomplete" in r.stderr
    assert list(tmp_path.iterdir()) == []


def test_bad_values_of_any_type_name_the_key_in_process(tmp_path, monkeypatch, capsys):
    from memgeo.cli import main
    monkeypatch.setenv("MEMGEO_RUNS_DIR", str(tmp_path))      # main sets it; restored after
    assert main(["train", "--preset", "smoke", "--set", "seed=1.5", "--runs-dir", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == "error: seed='1.5': expected an int"


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_cuda_without_a_gpu_is_one_line(tmp_path, monkeypatch, capsys):
    from memgeo.cli import main
    monkeypatch.setenv("MEMGEO_RUNS_DIR", str(tmp_path))
    assert main(["train", "--preset", "smoke", "--set", "device=cuda", "--runs-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: device='cuda' but no CUDA GPU is visible: use device=cpu or auto"]
    assert list(tmp_path.iterdir()) == []
