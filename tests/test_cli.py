import os
import subprocess
import sys


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
