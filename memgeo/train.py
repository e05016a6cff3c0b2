"""Training runs: one folder per config hash, resumable, with tidy metrics and checkpoints.

Layout of `runs/<hash>/`:
    config.json                 the RunConfig (plus provenance: device, memgeo version)
    metrics.csv                 one row per epoch (0 = initialisation)
    last.pt                     model + optimizer + metrics history: the resume point
    checkpoints/epoch_XXXX.pt   kept weights (the configured epochs, and the best-test epoch)

Every file is written to a temporary name and renamed, so a kill never leaves a half-written file;
`last.pt` is the single source of truth and metrics.csv is re-derived from it. Each epoch's
shuffling, augmentation and dropout draw from generators seeded by (seed, epoch), so a resumed run
is bitwise identical to an uninterrupted one on the CPU.
"""
from __future__ import annotations

import io
import json
import math
import os
import shutil
import sys
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from . import __version__
from .config import RunConfig
from .data import LabelledData, augment, derived_seed, load_data
from .models import BlockNet, build_model
from .paths import runs_dir as default_runs_dir
from .precision import native_bf16_cpu

METRIC_COLUMNS = ["epoch", "train_loss", "lr", "acc_unpermuted", "acc_permuted_train",
                  "acc_permuted_true", "acc_test", "seconds"]


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt, or belongs to another run; the message says what to do."""


def resolve_device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device={spec!r} but no CUDA GPU is visible: use device=cpu or auto")
    return torch.device(spec)


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
# Evaluation

@torch.no_grad()
def predict(model: BlockNet, data: LabelledData, x: torch.Tensor, batch_size: int = 128) -> torch.Tensor:
    """Predicted classes of uint8 images, in eval mode (the model's mode is restored)."""
    was_training = model.training
    model.eval()
    preds = []
    dev = next(model.parameters()).device
    for i in range(0, len(x), batch_size):
        xb = data.normalise(x[i:i + batch_size].to(dev)).contiguous(memory_format=torch.channels_last)
        with autocast(model):
            preds.append(model(xb).argmax(1))
    model.train(was_training)
    return torch.cat(preds)


def evaluate(model: BlockNet, data: LabelledData, batch_size: int = 128) -> dict[str, float]:
    """Accuracies that track memorization: unpermuted examples; permuted examples against their
    training labels (memorization) and their true labels (restored); the held-out test set."""
    return accuracies(data, predict(model, data, data.x_train, batch_size), predict(model, data, data.x_test, batch_size))


def accuracies(data: LabelledData, pred: torch.Tensor, test: torch.Tensor) -> dict[str, float]:
    """The four accuracies of `evaluate` from predicted classes of the training and test sets."""
    pred, test = pred.cpu(), test.cpu()
    perm = data.permuted.cpu()
    true, train = data.true_label.cpu(), data.train_label.cpu()

    def acc(mask, labels):
        return float((pred[mask] == labels[mask]).float().mean()) if mask.any() else float("nan")

    return {"acc_unpermuted": acc(~perm, true), "acc_permuted_train": acc(perm, train),
            "acc_permuted_true": acc(perm, true),
            "acc_test": float((test == data.y_test.cpu()).float().mean())}


def autocast(model: BlockNet):
    """The numeric context a model runs in: bf16 autocast for `precision="bf16"` (on the CPU or a
    GPU; deterministic on the CPU for a fixed thread count), plain float32 otherwise."""
    dev = next(model.parameters()).device
    return torch.autocast(dev.type, dtype=torch.bfloat16, enabled=model.precision == "bf16")


# ---------------------------------------------------------------------------------------------
# Runs

@dataclass
class Run:
    """A run folder: its config, metrics and checkpoints."""

    path: Path
    config: RunConfig
    trained_now: int = 0    # epochs trained by the call that returned this Run (0: reused)

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


def learning_rate(cfg: RunConfig, epoch: int) -> float:
    """Learning rate used during `epoch` (1-based)."""
    if cfg.schedule == "cosine":
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * (epoch - 1) / cfg.epochs))
    if cfg.schedule == "step":   # x0.1 at 50 % and 75 % of training
        return cfg.lr * (0.1 ** ((epoch - 1 >= cfg.epochs // 2) + (epoch - 1 >= 3 * cfg.epochs // 4)))
    return cfg.lr


def make_optimizer(cfg: RunConfig, model: BlockNet) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def train_one_epoch(model, opt, data: LabelledData, cfg: RunConfig, epoch: int, device) -> float:
    model.train()
    g = torch.Generator(device="cpu").manual_seed(derived_seed(cfg.seed, "epoch", epoch))
    torch.manual_seed(derived_seed(cfg.seed, "dropout", epoch))
    n = len(data.x_train)
    order = torch.randperm(n, generator=g).to(device)
    total, count = 0.0, 0
    for i in range(0, n, cfg.batch_size):
        idx = order[i:i + cfg.batch_size]
        xb = data.x_train[idx]
        if cfg.augment:
            xb = augment(xb, g)
        xb = data.normalise(xb).contiguous(memory_format=torch.channels_last)
        yb = data.train_label[idx]
        with autocast(model):
            loss = F.cross_entropy(model(xb), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total += float(loss.detach()) * len(idx)
        count += len(idx)
    return total / count


@contextmanager
def run_lock(path: Path, announce: bool = True):
    """Hold the lock of run folder `path` (a file beside it): one process at a time trains, heals
    or cleans up a run; another asking for the same run waits, then finds it done and reuses it."""
    from filelock import FileLock, Timeout
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path.parent / f".{path.name}.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        if announce:
            print(f"[memgeo] run {path.name} is being trained by another process: waiting for it",
                  file=sys.stderr, flush=True)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def train(cfg: RunConfig, runs_dir=None, data_root=None, progress: bool = True,
          stop_after: int | None = None) -> Run:
    """Train `cfg` (or reuse/resume its run folder) and return the Run.

    Safe to call from several processes at once for the same config: they take turns through the
    run's lock, and only the first trains. `stop_after` ends after that many new epochs (as a kill
    would): for tests of resuming. The returned Run's `trained_now` counts the epochs trained here.
    """
    cfg = cfg.resolved()    # precision "auto" -> what this machine trains in (named by the hash)
    path = run_path(cfg, runs_dir)
    done = finished_run(path)
    if done is not None:
        return done
    device = resolve_device(cfg.device)
    if cfg.precision == "bf16" and device.type == "cpu" and not native_bf16_cpu():
        warnings.warn("precision='bf16' on a CPU without native bfloat16 support is about 10x slower "
                      "than fp32: use precision=fp32 or auto (this changes the run, and so its folder)",
                      RuntimeWarning)
    # Everything that can fail on bad input happens before anything is written.
    data = load_data(cfg, data_root, device)
    with run_lock(path, announce=progress):
        done = finished_run(path)   # another process may have trained it while this one waited
        if done is not None:
            return done
        return _train_locked(cfg, path, data, device, progress, stop_after)


def finished_run(path: Path) -> Run | None:
    """The run in folder `path` if it has finished training, else None."""
    if (path / "last.pt").exists() and (path / "metrics.csv").exists():
        run = open_run(path)
        if run.done:
            return run
    return None


def _train_locked(cfg: RunConfig, path: Path, data: LabelledData, device, progress: bool,
                  stop_after: int | None) -> Run:
    model = build_model(cfg, data.num_classes)
    # channels_last: about 1.6x faster convolutions on the CPU here, and the fast path on GPUs.
    model.to(device, memory_format=torch.channels_last)
    opt = make_optimizer(cfg, model)
    keep = set(cfg.checkpoint_epochs())

    last = path / "last.pt"
    if last.exists():
        ck = load_checkpoint(last)
        if ck.get("config_hash") != cfg.hash():
            raise CheckpointError(f"{last} belongs to run {ck.get('config_hash')}, not {cfg.hash()}: "
                                  f"delete {path} and train again")
        load_state_checked(model, ck["model"], str(last))
        opt.load_state_dict(ck["optimizer"])
        history, start, best = ck["history"], ck["epoch"], ck["best"]
    else:
        tmp = path.with_name(f".{path.name}.creating-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / "checkpoints").mkdir(parents=True)
        meta = {"config": cfg.to_dict(), "hash": cfg.hash(), "num_classes": data.num_classes,
                "layers": model.layer_names, "device": str(device), "memgeo_version": __version__,
                "torch_version": torch.__version__, "eps_effective": data.eps_effective,
                "n_train": len(data.x_train), "n_test": len(data.x_test)}
        atomic_write_text(tmp / "config.json", json.dumps(meta, indent=2))
        t0 = time.time()
        row = {"epoch": 0, "train_loss": float("nan"), "lr": 0.0, **evaluate(model, data),
               "seconds": time.time() - t0}
        history, start, best = [row], 0, (row["acc_test"], 0)
        _save_epoch(tmp, cfg, model, opt, history, 0, best, keep)
        if path.exists():  # an earlier attempt died before writing last.pt
            shutil.rmtree(path)
        os.replace(tmp, path)

    bar = None
    if progress and start < cfg.epochs:
        from tqdm.auto import tqdm
        bar = tqdm(total=cfg.epochs, initial=start, desc=f"train {cfg.model} w={cfg.width} [{path.name}]",
                   unit="ep", leave=False)
    for epoch in range(start + 1, cfg.epochs + 1):
        if stop_after is not None and epoch > start + stop_after:
            break
        t0 = time.time()
        lr = learning_rate(cfg, epoch)
        for group in opt.param_groups:
            group["lr"] = lr
        loss = train_one_epoch(model, opt, data, cfg, epoch, device)
        row = {"epoch": epoch, "train_loss": loss, "lr": lr, **evaluate(model, data), "seconds": time.time() - t0}
        history.append(row)
        if row["acc_test"] > best[0]:
            best = (row["acc_test"], epoch)
        _save_epoch(path, cfg, model, opt, history, epoch, best, keep)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}", test=f"{row['acc_test']:.3f}",
                            memorized=f"{row['acc_permuted_train']:.2f}")
    if bar is not None:
        bar.close()
    run = open_run(path)
    run.trained_now = len(history) - 1 - start
    return run


def _save_epoch(path: Path, cfg: RunConfig, model, opt, history, epoch: int, best, keep: set) -> None:
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    if epoch in keep or best[1] == epoch:
        atomic_torch_save({"model": state, "epoch": epoch, "config_hash": cfg.hash()},
                          path / "checkpoints" / f"epoch_{epoch:04d}.pt")
    # A previous best that is not a configured epoch is no longer needed.
    for p in (path / "checkpoints").glob("epoch_*.pt"):
        e = int(p.stem.split("_")[1])
        if e not in keep and e != best[1]:
            p.unlink()
    opt_state = opt.state_dict()
    atomic_torch_save({"model": state, "optimizer": opt_state, "epoch": epoch, "history": history,
                       "best": best, "config_hash": cfg.hash()}, path / "last.pt")
    atomic_write_text(path / "metrics.csv", pd.DataFrame(history, columns=METRIC_COLUMNS).to_csv(index=False))
