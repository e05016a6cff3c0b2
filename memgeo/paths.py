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

