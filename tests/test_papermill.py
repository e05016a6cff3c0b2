"""Re-running one section as the book documents it (jupytext, then papermill with parameters), and
the conversion of notebook parameters to the types of the configuration fields they set."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from memgeo.book import ENV_DEFAULT_PRESET, ENV_PRESET, ENV_SET, coerce_parameter, configure_notebook
from memgeo.config import ConfigError, configure

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def clean_env(monkeypatch):
    for name in (ENV_PRESET, ENV_SET, ENV_DEFAULT_PRESET):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.mark.parametrize("value,current,expected", [
    (1, 0.5, 1.0),                      # -p eps 1
    ("0.3", 0.5, 0.3),
    (16, (1, 2, 4), (16,)),             # -p widths 16
    ("1,2,4", (1, 2, 4), (1, 2, 4)),    # -p widths 1,2,4
    ([1, 2, 4], (1, 2, 4), (1, 2, 4)),  # -y 'widths: [1, 2, 4]'
    ("[8, 16]", (1, 2, 4), (8, 16)),
    (40, "auto", "40"),                 # -p epochs 40 (an epoch list is a string field)
    ([0, 5, 40], "auto", "0,5,40"),
    ("0,5,40", "auto", "0,5,40"),
    (3.0, 10, 3),
    ("20", 10, 20),
    ("true", False, True),
    (1, False, True),
    (True, False, True),
])
def test_papermill_values_become_the_field_type(value, current, expected):
    out = coerce_parameter("x", value, current)
    assert out == expected and type(out) is type(expected)


@pytest.mark.parametrize("value,current,message", [
    ("a", (1, 2, 4), "parameter widths='a': expected a list of integers"),
    ([], (1, 2, 4), "parameter widths=[]: expected a list of integers"),
    (2.5, 10, "parameter widths=2.5: expected an integer"),
    ("x", 0.5, "parameter widths='x': expected a number"),
    (True, 0.5, "parameter widths=True: expected a number"),
    ("maybe", False, "parameter widths='maybe': expected true or false"),
    ({"a": 1}, "auto", "parameter widths={'a': 1}: expected a string"),
])
def test_unusable_values_name_the_parameter(value, current, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        coerce_parameter("widths", value, current)


def test_configure_notebook_same_run_for_int_and_float(clean_env):
    a = configure_notebook("smoke", None, {"eps": ("eps", 1)})
    b = configure_notebook("smoke", {"eps": 1.0})
    assert a.run.eps == 1.0 and a.run.hash() == b.run.hash() == configure("smoke", {"eps": 1.0}).run.hash()
    p = configure_notebook("smoke", {"probe.epochs": [0, 2]}, {
        "widths": ("sweep.widths", 16), "epochs": ("sweep.run.epochs", "3"), "M": ("probe.M", 12.0),
        "unused": ("seed", None)})
    assert p.sweep.widths == (16,) and p.sweep.run.epochs == 3 and p.probe.M == 12 and p.probe.epochs == "0,2"
    assert p.run.seed == configure("smoke").run.seed


def test_configure_notebook_errors_and_defaults(clean_env):
    with pytest.raises(ConfigError, match="parameter widths='x'"):
        configure_notebook("smoke", None, {"widths": ("sweep.widths", "x")})
    with pytest.raises(ConfigError, match=r"parameter overrides\['eps'\]='high'"):
        configure_notebook("smoke", {"eps": "high"})
    with pytest.raises(ConfigError, match="parameter overrides=3"):
        configure_notebook("smoke", 3)
    with pytest.raises(ConfigError, match="parameter preset=2"):
        configure_notebook(2)
    with pytest.raises(ConfigError, match="unknown config key"):
        configure_notebook("smoke", {"widht": 3})
    assert configure_notebook("smoke", "{eps: 0.25}").run.eps == 0.25  # -p overrides '{eps: 0.25}'
    assert configure_notebook(None).name == "cpu"
    clean_env.setenv(ENV_DEFAULT_PRESET, "smoke")      # Binder's launched default
    assert configure_notebook(None).name == "smoke"
    assert configure_notebook("cpu").name == "cpu"
    clean_env.setenv(ENV_PRESET, "paper")              # the whole-book build wins
    clean_env.setenv(ENV_SET, json.dumps({"eps": "0.3"}))
    p = configure_notebook("cpu", {"eps": 0.1})
    assert p.name == "paper" and p.run.eps == 0.3


def _glued(nb: dict) -> dict:
    """Values glued (myst_nb.glue) by an executed notebook: name -> text/plain."""
    out = {}
    for cell in nb["cells"]:
        for o in cell.get("outputs", []):
            scrap = o.get("metadata", {}).get("scrapbook", {})
            if scrap.get("name"):  # under papermill the mime types carry a prefix
                out[scrap["name"]] = o["data"].get(scrap.get("mime_prefix", "") + "text/plain")
    return out


def test_section_reruns_through_papermill_with_parameters(cifar_root, tmp_path):
    """The reproducibility page's commands: jupytext into an ignored folder, then papermill with the
    smoke preset and parameters of each kind papermill passes (int for a string field and a float
    field, a YAML list, a YAML mapping); the overrides must reach the results."""
    out = tmp_path / "papermill"
    out.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in (ENV_PRESET, ENV_SET, ENV_DEFAULT_PRESET)}
    env.update(MEMGEO_DATA_ROOT=str(cifar_root), MEMGEO_RUNS_DIR=str(tmp_path / "runs"),
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])),
               PATH=os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]))
    run = lambda *a: subprocess.run([sys.executable, "-m", *a], cwd=ROOT, env=env, capture_output=True,
                                    text=True, timeout=600)
    r = run("jupytext", "--to", "ipynb", "-o", str(out / "layers.ipynb"), "book/layers.md")
    assert r.returncode == 0, r.stderr
    r = run("papermill", str(out / "layers.ipynb"), str(out / "layers-smoke.ipynb"), "-k", "python3",
            "-p", "preset", "smoke", "-p", "M", "6", "-p", "kappa", "0", "-y", "epochs: [0, 1, 2, 3]",
            "-y", "overrides: {unverified_local_copy: true, probe.n_t: 12}")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    glued = _glued(json.loads((out / "layers-smoke.ipynb").read_text()))
    assert glued["M"] == "6" and glued["n_t"] == "12" and glued["kappa"] == "0.0"
    assert glued["analysed_epochs"] == "'0, 1, 2, 3'"
    assert "preset 'smoke'" in glued["source"] and "offline JPEG copy" in glued["source"]
    trained = configure("smoke", {"unverified_local_copy": True}).run.hash()   # the run the overrides ask for
    assert glued["source"].rstrip("'\"").endswith(f"run {trained}")
    assert any(trained in str(p) for p in (tmp_path / "runs").rglob("config.json"))
    assert not (ROOT / "book" / "layers.ipynb").exists()
