"""Where data and runs live by default (overridable by environment variables).

Defaults are relative to the repository that holds the package, so notebooks executed from `book/`
and commands run from the root find the same folders.
"""
import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def data_root() -> Path:
    """Folder holding the datasets (MEMGEO_DATA_ROOT, default `<repo>/data`)."""
    return Path(os.environ.get("MEMGEO_DATA_ROOT", REPO_ROOT / "data"))


def runs_dir() -> Path:
    """Folder holding run folders keyed by config hash (MEMGEO_RUNS_DIR, default `<repo>/runs`)."""
    return Path(os.environ.get("MEMGEO_RUNS_DIR", REPO_ROOT / "runs"))


def cached_frame(key: str, compute):
    """A pandas DataFrame computed once and kept in `<runs>/cache/<key>.pkl` (atomic write).

    For results that are not tied to one run (e.g. the methods page's validation tables); the key
    must name everything the result depends on."""
    import pandas as pd
    path = runs_dir() / "cache" / f"{key}.pkl"
    if path.exists():
        return pd.read_pickle(path)
    frame = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    frame.to_pickle(tmp)
    os.replace(tmp, path)
    return frame
