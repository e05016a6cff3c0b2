"""Glue between the notebooks, papermill and the book build.

Each notebook's `parameters` cell holds `preset` and `overrides`; `configure_notebook` turns them
into a `Preset`. When the whole book is built (`python -m memgeo book`), the preset and overrides
travel to every notebook through the environment variables MEMGEO_PRESET and MEMGEO_SET (JSON),
which win over the notebook's own values. With those variables unset (papermill on one notebook),
the notebook's parameters are used as given.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from .config import Preset, configure
from .paths import REPO_ROOT

ENV_PRESET = "MEMGEO_PRESET"
ENV_SET = "MEMGEO_SET"


def configure_notebook(preset: str = "cpu", overrides: dict | None = None) -> Preset:
    """The configuration a notebook runs with (book-wide settings from the environment win)."""
    name = os.environ.get(ENV_PRESET) or preset
    merged = dict(overrides or {})
    merged.update(json.loads(os.environ.get(ENV_SET) or "{}"))
    return configure(name, merged)


def describe(p: Preset, run=None, widths=None) -> str:
    """One line naming what a figure was made from (for captions): `run` defaults to the
    preset's main run; `widths` names a sweep's widths instead of one run."""
    r = run or p.run
    src = "offline JPEG copy of CIFAR-10 (unverified)" if r.unverified_local_copy else r.dataset
    what = f"widths {', '.join(map(str, widths))}" if widths else f"width {r.width}"
    tail = f"preset '{p.name}'" + ("" if widths else f", run {r.hash()}")
    return (f"{r.model} ({what}) on {src}, {r.train_per_class or 'all'} per class, "
            f"eps={r.eps}, seed {r.seed}, {tail}")


def build_book(preset: str, overrides: dict, keep_going: bool = False) -> int:
    """Train what is missing (with progress bars), then build the book; print where the HTML is."""
    from .engine import run_all
    from .sweep import width_configs

    p = configure(preset, overrides)
    os.environ[ENV_PRESET] = preset
    os.environ[ENV_SET] = json.dumps(overrides)
    t0 = time.time()
    print(f"[memgeo] preset {preset!r}, overrides {overrides or '{}'}", flush=True)
    # Every run the sections read, in one pool (finished runs are reused, cut-off ones resume):
    # on a CPU the runs train side by side as one-thread processes, longest first.
    configs = [p.run] + width_configs(p.sweep)
    print(f"[memgeo] training: the shared run and {len(p.sweep.widths)} widths (reused if present)", flush=True)
    runs = run_all(configs)
    print(f"[memgeo]   shared run {runs[0].path}", flush=True)
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
