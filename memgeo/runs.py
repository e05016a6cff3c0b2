"""The run folder layer: `Run`, opening and naming run folders, checking them, atomic writers,
checkpoint loading, and the errors a run folder can raise.

Layout of `runs/<hash>/` (written by `memgeo.train.train`):
    config.json                 the RunConfig (plus provenance: device, memgeo version)
    metrics.csv                 one row per epoch (0 = initialisation), re-derived from last.pt
    last.pt                     model + optimizer + metrics history: the resume point
    checkpoints/epoch_XXXX.pt   kept weights (the configured epochs, and the early-stopping epoch)

A folder is checked cheaply (`Run.check`): config.json parses and names this run, last.pt and every
promised checkpoint is a complete torch zip archive, metrics.csv lists the epochs; `full=True`
loads every file. Temporary names start with a dot and end in `-<pid>` (`.last.pt.tmp-<pid>`,
`.<hash>.creating-<pid>`, `.<hash>.replay-<pid>`); those of dead processes are removed by the next
training of the run (`remove_stale`).
"""
from __future__ import annotations

import errno
import functools
import io
import json
import os
import re
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from .config import RunConfig
from .data import LabelledData, load_data
from .models import BlockNet, build_model
from .paths import runs_dir as default_runs_dir

METRIC_COLUMNS = ["epoch", "train_loss", "lr", "acc_unpermuted", "acc_permuted_train",
                  "acc_permuted_true", "acc_test", "acc_val", "seconds"]


def selection_column(cfg: RunConfig) -> str:
    """The metric the early-stopping epoch maximises: validation accuracy when the run holds a
    validation split out, else test accuracy (the paper's choice)."""
    return "acc_val" if cfg.val_per_class else "acc_test"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt, or belongs to another run; the message says what to do."""


class RunRepairWarning(UserWarning):
    """A run folder was repaired: a file re-derived from last.pt or a checkpoint recreated."""


class RunFolderError(RuntimeError):
    """A run folder, or the folder of runs, cannot be used as it is: not writable, a full disk, a
    broken config.json, or another run's files. One line naming the path and the fix."""


RUNS_DIR_FIX = "train into another folder with --runs-dir DIR (or MEMGEO_RUNS_DIR)"


def filesystem_error(err: OSError, path=None) -> RunFolderError:
    """An OSError as a RunFolderError naming the path and what to do about it."""
    where = path or err.filename or "the runs folder"
    what = f"{err.strerror or err} ({type(err).__name__}, errno {err.errno})"
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        fix = (f"free space on that disk, or {RUNS_DIR_FIX}; a cut-off run resumes from its last saved "
               f"epoch")
    elif err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        folder = Path(where).parent
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        fix = f"make {folder} writable, or {RUNS_DIR_FIX}"
    else:
        fix = f"check that the folder exists on a working disk, or {RUNS_DIR_FIX}"
    return RunFolderError(f"cannot use {where}: {what}; {fix}")


# ---------------------------------------------------------------------------------------------
# Atomic files

def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to `.<name>.tmp-<pid>` and rename; on failure the temporary file is removed and an
    OSError (a full disk, a read-only folder) becomes a RunFolderError naming `path`."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        if isinstance(err, OSError):
            raise filesystem_error(err, path) from err
        raise


def atomic_torch_save(obj, path: Path) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def redo_advice(path: Path) -> str:
    """What training the run again does about a deleted file (the advice of every error message)."""
    if path.name == "last.pt":
        return "train this run's config again: the run is retrained from epoch 0"
    return ("train this run's config again: it is recreated by retraining up to its epoch, "
            "checked against the recorded metrics")


def load_checkpoint(path: Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}: {redo_advice(path)}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(f"checkpoint {path} is corrupt or unreadable ({type(err).__name__}: {err}); "
                              f"delete it and {redo_advice(path)}") from err


def checkpoint_problem(path: Path) -> str | None:
    """None if `path` looks like a complete checkpoint, else what is wrong (cheap: no unpickling).

    torch.save writes a zip archive whose central directory sits at the end: a truncated or
    overwritten file has none, or members that reach past the end of the file."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with zipfile.ZipFile(path) as z:
            infos = z.infolist()
    except FileNotFoundError:
        return f"{path} is missing"
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as err:
        return f"{path} is corrupt: truncated, or not a checkpoint ({type(err).__name__}: {err})"
    if not any(i.filename.endswith("/data.pkl") for i in infos):
        return f"{path} is corrupt: not a torch checkpoint (no data.pkl in the archive)"
    if any(i.header_offset + i.compress_size > size for i in infos):
        return f"{path} is corrupt: truncated"
    return None


def _pid_of(name: str) -> int:
    return int(name.rsplit("-", 1)[1])


def pid_alive(pid: int) -> bool:
    """Is process `pid` alive on this machine (another user's counts)? Our own pid is not: a
    leftover with it is from an earlier, failed attempt of this process."""
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stale_leftovers(path: Path) -> list[Path]:
    """The leftovers of dead processes for the run folder `path`: `.<hash>.creating-<pid>` and
    `.<hash>.replay-<pid>` beside it, `.<name>.tmp-<pid>` files in it (those of live processes are
    not listed)."""
    path = Path(path)
    found = []
    if path.parent.is_dir():
        found += [p for p in path.parent.glob(f".{path.name}.*-*")
                  if re.fullmatch(rf"\.{re.escape(path.name)}\.(creating|replay)-\d+", p.name)]
    for folder in (path, path / "checkpoints"):
        if folder.is_dir():
            found += [p for p in folder.glob(".*.tmp-*") if re.fullmatch(r"\..+\.tmp-\d+", p.name)]
    return [p for p in found if not pid_alive(_pid_of(p.name))]


def remove_stale(path: Path) -> list[Path]:
    """Remove `stale_leftovers(path)` (call it holding the run's lock); returns what was removed."""
    removed = []
    for p in stale_leftovers(path):
        try:
            if p.is_dir():
                shutil.rmtree(p)
            else:
                p.unlink(missing_ok=True)
        except OSError:     # e.g. a read-only folder of finished runs: leftovers do no harm there
            continue
        removed.append(p)
    return removed


def read_meta(path: Path) -> dict:
    """The parsed config.json of run folder `path` (RunFolderError if missing or broken)."""
    f = Path(path) / "config.json"
    try:
        meta = json.loads(f.read_text())
        RunConfig.from_dict(meta["config"])
        return meta
    except FileNotFoundError:
        raise RunFolderError(f"{path} is not a run folder (no config.json); if it is a run whose config.json was "
                             f"deleted, train its config again to rebuild it") from None
    except OSError as err:
        raise filesystem_error(err, f) from err
    except (ValueError, KeyError, TypeError) as err:   # JSONDecodeError and ConfigError are ValueErrors
        raise RunFolderError(f"{f} is broken ({type(err).__name__}: {err}): delete it and train this run's "
                             f"config again, which rebuilds it from the config and last.pt") from err


def config_difference(found: RunConfig, wanted: RunConfig) -> str:
    """'eps=0.9 where this config has eps=0.5, ...' (device aside)."""
    a, b = found.to_dict(), wanted.to_dict()
    diff = [f"{k}={a[k]!r} where this config has {k}={b[k]!r}" for k in a if k != "device" and a[k] != b.get(k)]
    return ", ".join(diff) or "the same fields but another hash"


# ---------------------------------------------------------------------------------------------
# Runs

@dataclass
class Run:
    """A run folder: its config, metrics and checkpoints."""

    path: Path
    config: RunConfig
    trained_now: int = 0    # epochs trained by the call that returned this Run (0: reused)

    @functools.cached_property
    def meta(self) -> dict:
        """config.json, parsed once: the config and provenance (num_classes, layers, device, ...)."""
        return read_meta(self.path)

    @property
    def metrics(self) -> pd.DataFrame:
        return pd.read_csv(self.path / "metrics.csv")

    @property
    def done(self) -> bool:
        p = self.path / "metrics.csv"
        return p.exists() and int(pd.read_csv(p)["epoch"].max()) >= self.config.epochs

    @property
    def checkpoint_epochs(self) -> list[int]:
        return sorted(int(p.stem.split("_")[1]) for p in (self.path / "checkpoints").glob("epoch_*.pt"))

    @property
    def early_stop_epoch(self) -> int:
        """The early-stopping epoch: best validation accuracy (test accuracy without a validation
        split), the first one on ties."""
        m = self.metrics
        return int(m.loc[m[selection_column(self.config)].idxmax(), "epoch"])

    def checkpoint_path(self, epoch: int) -> Path:
        return self.path / "checkpoints" / f"epoch_{epoch:04d}.pt"

    def promised_epochs(self, last_epoch: int | None = None, best_epoch: int | None = None) -> list[int]:
        """Epochs whose checkpoints the run must hold: the configured ones up to its last epoch and
        the early-stopping epoch (both read from metrics.csv unless given)."""
        if last_epoch is None or best_epoch is None:
            m = self.metrics
            last_epoch = int(m["epoch"].max()) if last_epoch is None else last_epoch
            best_epoch = (int(m.loc[m[selection_column(self.config)].idxmax(), "epoch"]) if best_epoch is None
                          else best_epoch)
        return sorted({e for e in self.config.checkpoint_epochs() if e <= last_epoch} | {best_epoch})

    def load_state(self, epoch: int) -> dict:
        """The model state dict saved at `epoch`, checked against this run."""
        path = self.checkpoint_path(epoch)
        if not path.exists():
            try:
                promised = epoch in self.promised_epochs()
            except (OSError, ValueError, KeyError):    # no readable metrics.csv: nothing to promise
                promised = False
            raise CheckpointError(f"run {self.path.name} has no checkpoint for epoch {epoch}; "
                                  f"saved epochs: {self.checkpoint_epochs}"
                                  + (f". It should have one: {redo_advice(path)}" if promised else ""))
        ck = load_checkpoint(path)
        if ck.get("config_hash") != self.config.hash():
            raise CheckpointError(f"{path} belongs to run {ck.get('config_hash')}, not {self.config.hash()}: "
                                  f"delete it and {redo_advice(path)}")
        return ck["model"]

    def check(self, full: bool = False) -> list[str]:
        """What is wrong with this folder (an empty list: nothing). Cheap by default: config.json
        names this run, metrics.csv lists epochs 0..N, last.pt and every promised checkpoint is a
        complete archive. `full=True` also loads every file: checkpoints and last.pt must belong to
        this run and fit its model, and metrics.csv must equal last.pt's history."""
        problems = []
        try:
            found = RunConfig.from_dict(read_meta(self.path)["config"])
            if found.hash() != self.config.hash():
                problems.append(f"{self.path / 'config.json'} is another run's: "
                                f"{config_difference(found, self.config)}")
        except RunFolderError as err:
            problems.append(str(err))
        last = self.path / "last.pt"
        problem = checkpoint_problem(last)
        if problem:
            problems.append(problem)
        try:
            m = self.metrics
            if not metrics_plausible(m):
                problems.append(f"{self.path / 'metrics.csv'} does not list epochs 0..N with columns {METRIC_COLUMNS}")
                m = None
        except (OSError, ValueError) as err:   # pandas parser errors are ValueErrors
            problems.append(f"{self.path / 'metrics.csv'} is missing or unreadable ({type(err).__name__})")
            m = None
        if m is None:
            return problems
        for e in self.promised_epochs():
            problem = checkpoint_problem(self.checkpoint_path(e))
            if problem:
                problems.append(problem)
            elif full:
                try:
                    load_state_checked(build_model(self.config, self.num_classes), self.load_state(e),
                                       str(self.checkpoint_path(e)))
                except (CheckpointError, RunFolderError) as err:
                    problems.append(str(err))
        if full and not checkpoint_problem(last):
            try:
                ck = load_checkpoint(last)
                if ck.get("config_hash") != self.config.hash():
                    problems.append(f"{last} belongs to run {ck.get('config_hash')}, not {self.config.hash()}")
                elif metrics_text(ck["history"]) != (self.path / "metrics.csv").read_text():
                    problems.append(f"{self.path / 'metrics.csv'} differs from the history in {last}")
            except CheckpointError as err:
                problems.append(str(err))
        return problems

    def load_model(self, epoch: int, device="cpu") -> BlockNet:
        model = build_model(self.config, self.num_classes)
        load_state_checked(model, self.load_state(epoch), str(self.checkpoint_path(epoch)))
        return model.place(device).eval()

    @property
    def num_classes(self) -> int:
        return self.meta["num_classes"]

    def load_data(self, device="cpu", root=None) -> LabelledData:
        return load_data(self.config, root, device)


def load_state_checked(model: BlockNet, state: dict, source: str) -> None:
    """Load a state dict, failing clearly when it is from another architecture or width."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    shapes = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or extra or shapes:
        raise CheckpointError(
            f"{source} does not fit a {model.arch} with layers {model.layer_names[1:]}: "
            f"missing {missing[:3]}, unexpected {extra[:3]}, shape mismatch {shapes[:3]}. "
            f"It was saved from another architecture or width (if it is this run's own file, the model "
            f"code changed since: delete the run folder and train its config again).")
    model.load_state_dict(state)


def open_run(path) -> Run:
    """The run in folder `path` (its config.json is read once: `Run.meta`)."""
    path = Path(path)
    meta = read_meta(path)
    run = Run(path, RunConfig.from_dict(meta["config"]))
    vars(run)["meta"] = meta     # the cached_property, filled
    return run


def metrics_plausible(m: pd.DataFrame) -> bool:
    """The cheap check of metrics.csv: memgeo's columns, and rows for epochs 0..N in order."""
    return len(m) > 0 and list(m.columns) == METRIC_COLUMNS and m["epoch"].tolist() == list(range(len(m)))


def metrics_text(history: list[dict]) -> str:
    """metrics.csv as derived from last.pt's history."""
    return pd.DataFrame(history, columns=METRIC_COLUMNS).to_csv(index=False)


def run_path(cfg: RunConfig, runs_dir=None) -> Path:
    return Path(runs_dir or default_runs_dir()) / cfg.hash()
