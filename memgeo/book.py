"""Glue between the notebooks, papermill and the book build.

Each notebook's `parameters` cell holds `preset`, `overrides` and the section's own parameters;
its next cell passes them to `configure_notebook`, which turns them into a `Preset`. When the
whole book is built (`python -m memgeo book`), the preset and overrides travel to every notebook
through the environment variables MEMGEO_PRESET and MEMGEO_SET (JSON), which win over the
notebook's own values. With those variables unset (papermill on one notebook), the notebook's
parameters are used as given; a notebook whose `preset` is None uses MEMGEO_DEFAULT_PRESET (the
Binder environment sets it to `smoke`), else `cpu`.

Parameters arrive as papermill passes them: `-p name value` gives an int, a float, a bool or a
string, `-y 'name: [1, 2]'` any YAML value. `notebook_overrides` converts each to the type of the
configuration field it sets (an int for an integer field, a float for eps, a tuple of ints for
widths, a comma-separated string for an epoch list), and raises `ConfigError` naming the
parameter when that is not possible.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any, Mapping

from .config import ConfigError, Preset, config_group, configure, preset as preset_named
from .paths import REPO_ROOT

ENV_PRESET = "MEMGEO_PRESET"
ENV_SET = "MEMGEO_SET"
ENV_DEFAULT_PRESET = "MEMGEO_DEFAULT_PRESET"
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _current(p: Preset, key: str):
    """The preset's value for a config key (prefixes as in `configure`); KeyError if there is none."""
    head, _, tail = key.rpartition(".")
    obj = config_group(p, head)
    if obj is None or tail not in {f.name for f in fields(obj)}:
        raise KeyError(key)
    value = getattr(obj, tail)
    if is_dataclass(value):
        raise KeyError(key)
    return value


def _int(value: Any) -> int:
    if isinstance(value, bool):
        raise TypeError
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        return int(value.strip())
    raise TypeError


def _items(value: Any) -> list:
    """A list from a YAML list, a tuple, a single number or a string such as "1,2,4" or "[1, 2, 4]"."""
    if isinstance(value, (list, tuple)):
        return list(value)
    if isinstance(value, str):
        return [v for v in value.strip().strip("[]()").replace(",", " ").split() if v]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return [value]
    raise TypeError


def coerce_parameter(name: str, value: Any, current: Any) -> Any:
    """`value`, as papermill or YAML gives it, converted to the type of the field's `current` value.

    Raises ConfigError naming the parameter `name` when the value cannot be read as that type."""
    what = ("true or false" if isinstance(current, bool) else "an integer" if isinstance(current, int)
            else "a number" if isinstance(current, float) else "a list of integers, e.g. 1,2,4 or [1, 2, 4]"
            if isinstance(current, tuple) else "a string")
    try:
        if isinstance(current, bool):
            if isinstance(value, bool):
                return value
            if isinstance(value, int) and value in (0, 1):
                return bool(value)
            if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
                return value.strip().lower() in _TRUE
        elif isinstance(current, int):
            return _int(value)
        elif isinstance(current, float):
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return float(value)
            if isinstance(value, str):
                return float(value.strip())
        elif isinstance(current, tuple):
            items = tuple(_int(v) for v in _items(value))
            if items:
                return items
        elif isinstance(current, str):
            if isinstance(value, str):
                return value
            if isinstance(value, (int, float, list, tuple)) and not isinstance(value, bool):
                # an epoch list such as probe.epochs: -p epochs 40, -y 'epochs: [0, 5, 40]'
                return ",".join(str(_int(v)) for v in _items(value))
        else:
            return value
    except (TypeError, ValueError):
        pass
    raise ConfigError(f"parameter {name}={value!r}: expected {what}")


def notebook_overrides(p: Preset, overrides: Mapping[str, Any], names: Mapping[str, str] | None = None) -> dict:
    """Overrides for `configure`, each value converted to the type of the field it sets.

    `names` maps a config key to the parameter name used in error messages (default: the key).
    Keys that name no field are passed on unchanged, for `configure` to report."""
    out = {}
    for key, value in overrides.items():
        try:
            current = _current(p, key)
        except KeyError:
            out[key] = value
            continue
        out[key] = coerce_parameter((names or {}).get(key, key), value, current)
    return out


def _overrides_parameter(overrides: Any) -> dict:
    if overrides is None:
        return {}
    if isinstance(overrides, str):  # -p overrides '{eps: 0.3}' arrives as a string
        import yaml
        try:
            overrides = yaml.safe_load(overrides) if overrides.strip() else {}
        except yaml.YAMLError:
            pass
    if not isinstance(overrides, Mapping):
        raise ConfigError(f"parameter overrides={overrides!r}: expected a mapping of config keys to values, "
                          "e.g. -y 'overrides: {eps: 0.3, probe.M: 20}'")
    return {str(k): v for k, v in overrides.items()}


def configure_notebook(preset: str | None = "cpu", overrides: Mapping[str, Any] | None = None,
                       named: Mapping[str, tuple[str, Any]] | None = None) -> Preset:
    """The configuration a notebook runs with, from its parameters (book-wide settings from the
    environment win); also applies the book's figure style.

    `named` holds the section's own parameters: {parameter name: (config key, value)}, e.g.
    {"widths": ("sweep.widths", widths)}; a value of None keeps the preset's. Every value is
    converted to its field's type (see `coerce_parameter`); later sources win: named parameters,
    then `overrides`, then MEMGEO_SET."""
    from .plots import use_book_style

    use_book_style()
    name = os.environ.get(ENV_PRESET) or preset or os.environ.get(ENV_DEFAULT_PRESET) or "cpu"
    if not isinstance(name, str):
        raise ConfigError(f"parameter preset={name!r}: expected one of smoke, cpu, paper")
    base = preset_named(name)
    merged: dict[str, Any] = {}
    labels: dict[str, str] = {}
    for param, (key, value) in (named or {}).items():
        if value is not None:
            merged[key] = value
            labels[key] = param
    for key, value in _overrides_parameter(overrides).items():
        merged[key] = value
        labels[key] = f"overrides[{key!r}]"
    for key, value in json.loads(os.environ.get(ENV_SET) or "{}").items():
        merged[key] = value
        labels[key] = f"{ENV_SET} {key}"
    return configure(name, notebook_overrides(base, merged, labels))


def glue_all(values: Mapping[str, Any]) -> None:
    """Glue every value of a section report (`memgeo.reports`) under its name, for the page's text."""
    from myst_nb import glue

    for name, value in values.items():
        glue(name, value, display=False)


def describe(p: Preset, run=None, widths=None) -> str:
    """One line naming what a figure was made from (for captions): `run` defaults to the
    preset's main run; `widths` names a sweep's widths instead of one run."""
    r = run or p.run
    src = "offline JPEG copy of CIFAR-10 (unverified)" if r.unverified_local_copy else r.dataset
    what = f"widths {', '.join(map(str, widths))}" if widths else f"width {r.width}"
    tail = f"preset '{p.name}'" + ("" if widths else f", run {r.hash()}")
    return (f"{r.model} ({what}) on {src}, {r.train_per_class or 'all'} per class, "
            f"eps={r.eps}, seed {r.seed}, {tail}")


def training_configs(p: Preset) -> list:
    """Every run the book reads: the shared run and the sweep's widths, for the page's own seed
    and for every training seed the verdicts are replicated over (no run twice)."""
    from .sweep import width_configs
    configs = []
    for q in [p, *p.replicas()]:
        configs += [c for c in [q.run, *width_configs(q.sweep)] if c not in configs]
    return configs


def build_book(preset: str, overrides: dict, keep_going: bool = False) -> int:
    """Train what is missing (with progress bars), then build the book; print where the HTML is."""
    from .engine import run_all

    p = configure(preset, overrides)
    os.environ[ENV_PRESET] = preset
    os.environ[ENV_SET] = json.dumps(overrides)
    t0 = time.time()
    print(f"[memgeo] preset {preset!r}, overrides {overrides or '{}'}", flush=True)
    # Every run the sections read, in one pool (finished runs are reused, cut-off ones resume):
    # on a CPU the runs train side by side as one-thread processes, longest first.
    configs = training_configs(p)
    print(f"[memgeo] training: the shared run and {len(p.sweep.widths)} widths for each of seeds "
          f"{', '.join(map(str, p.seeds))} ({len(configs)} runs, reused if present)", flush=True)
    runs = run_all(configs)
    print(f"[memgeo]   shared run {runs[0].path}", flush=True)
    # Every seed's analyses side by side (one process per core), before the notebooks read them.
    from .reports.intro import compute_analyses
    print(f"[memgeo] analyses of every seed ({time.time() - t0:.0f} s so far)", flush=True)
    sec = compute_analyses(p, log=lambda line: print(line, flush=True))
    print(f"[memgeo]   analyses done in {sec:.0f} s", flush=True)
    print(f"[memgeo] executing notebooks and building the book ({time.time() - t0:.0f} s so far)", flush=True)
    jb = shutil.which("jupyter-book", path=str(Path(sys.executable).parent)) or "jupyter-book"
    # --all: Sphinx would skip pages whose source did not change, but their results depend on
    # memgeo and on the runs; memgeo's own caches make re-executing every page cheap.
    cmd = [jb, "build", str(REPO_ROOT), "--path-output", str(REPO_ROOT), "-W", "-n", "--all"]
    if keep_going:
        cmd.append("--keep-going")
    rc = subprocess.call(cmd, cwd=REPO_ROOT)
    html = REPO_ROOT / "_build" / "html" / "index.html"
    print(f"[memgeo] book build {'finished' if rc == 0 else 'FAILED'} in {time.time() - t0:.0f} s", flush=True)
    if rc == 0:
        print(f"[memgeo] open {html}")
    return rc
