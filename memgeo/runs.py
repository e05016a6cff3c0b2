"""The run folder layer: `Run`, opening and naming run folders, atomic writers, checkpoint loading.

Layout of `runs/<hash>/` (written by `memgeo.train.train`):
    config.json                 the RunConfig (plus provenance: device, memgeo version)
    metrics.csv                 one row per epoch (0 = initialisation)
    last.pt                     model + optimizer + metrics history: the resume point
    checkpoints/epoch_XXXX.pt   kept weights (the configured epochs, and the best-test epoch)
"""
from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from .config import RunConfig
from .data import LabelledData, load_data
from .models import BlockNet, build_model
from .paths import runs_dir as default_runs_dir

METRIC_COLUMNS = ["epoch", "train_loss", "lr", "acc_unpermuted", "acc_permuted_train",
                  "acc_permuted_true", "acc_test", "seconds"]


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt, or belongs to another run; the message says what to do."""


# ---------------------------------------------------------------------------------------------
# Atomic files

def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_torch_save(obj, path: Path) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def load_checkpoint(path: Path) -> dict:
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(f"checkpoint {path} is corrupt or unreadable ({type(err).__name__}: {err}); "
                              f"delete it (and, for last.pt, the run resumes from scratch)") from err


# ---------------------------------------------------------------------------------------------
# Runs

@dataclass
class Run:
    """A run folder: its config, metrics and checkpoints."""

    path: Path
    config: RunConfig

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
        """Epoch of best test accuracy (first one on ties): the paper's early-stopping point."""
        m = self.metrics
        return int(m.loc[m["acc_test"].idxmax(), "epoch"])

    def checkpoint_path(self, epoch: int) -> Path:
        return self.path / "checkpoints" / f"epoch_{epoch:04d}.pt"

    def load_state(self, epoch: int) -> dict:
        """The model state dict saved at `epoch`, checked against this run."""
        path = self.checkpoint_path(epoch)
        if not path.exists():
            raise CheckpointError(f"run {self.path.name} has no checkpoint for epoch {epoch}; "
                                  f"saved epochs: {self.checkpoint_epochs}")
        ck = load_checkpoint(path)
        if ck.get("config_hash") != self.config.hash():
            raise CheckpointError(f"{path} belongs to run {ck.get('config_hash')}, not {self.config.hash()}")
        return ck["model"]

    def load_model(self, epoch: int, device="cpu") -> BlockNet:
        model = build_model(self.config, self.num_classes)
        load_state_checked(model, self.load_state(epoch), str(self.checkpoint_path(epoch)))
        return model.to(device, memory_format=torch.channels_last).eval()

    @property
    def num_classes(self) -> int:
        return json.loads((self.path / "config.json").read_text())["num_classes"]

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
            f"It was saved from another architecture or width.")
    model.load_state_dict(state)


def open_run(path) -> Run:
    path = Path(path)
    cfg_file = path / "config.json"
    if not cfg_file.exists():
        raise FileNotFoundError(f"{path} is not a run folder (no config.json)")
    d = json.loads(cfg_file.read_text())
    return Run(path, RunConfig.from_dict(d["config"]))


def run_path(cfg: RunConfig, runs_dir=None) -> Path:
    return Path(runs_dir or default_runs_dir()) / cfg.hash()
