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

import functools
import json
import math
import os
import shutil
import sys
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F

from . import __version__
from .config import ConfigError, RunConfig
from .data import LabelledData, augment, derived_seed, load_data
from .models import BlockNet, build_model
from .precision import native_bf16_cpu
# The run-folder layer lives in memgeo.runs; its names stay importable from here.
from .runs import (METRIC_COLUMNS, CheckpointError, Run, atomic_torch_save, atomic_write_bytes,  # noqa: F401
                   atomic_write_text, load_checkpoint, load_state_checked, open_run, run_path)
from .runs import (RunFolderError, RunRepairWarning, redo_advice, checkpoint_problem,
                   config_difference, filesystem_error, metrics_plausible, metrics_text, read_meta,
                   remove_stale, selection_column, stale_leftovers)

#: What `evaluate` measures (nan in the rows of epochs a run does not evaluate).
EVALUATED = ("acc_unpermuted", "acc_permuted_train", "acc_permuted_true", "acc_test", "acc_val")


def resolve_device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={spec!r} but no CUDA GPU is visible: use device=cpu or auto")
    return torch.device(spec)


# ---------------------------------------------------------------------------------------------
# Evaluation

@torch.no_grad()
def predict(model: BlockNet, data: LabelledData, x: torch.Tensor, batch_size: int = 128) -> torch.Tensor:
    """Predicted classes of uint8 images, in eval mode (the model's mode is restored)."""
    was_training = model.training
    model.eval()
    preds = []
    dev, fmt = next(model.parameters()).device, model.memory_format
    for i in range(0, len(x), batch_size):
        xb = data.normalise(x[i:i + batch_size].to(dev)).contiguous(memory_format=fmt)
        with autocast(model):
            preds.append(model(xb).argmax(1))
    model.train(was_training)
    return torch.cat(preds)


def evaluate(model: BlockNet, data: LabelledData, batch_size: int = 128) -> dict[str, float]:
    """Accuracies that track memorization: unpermuted examples; permuted examples against their
    training labels (memorization) and their true labels (restored); the held-out test set; the
    validation split (nan without one)."""
    val = (predict(model, data, data.x_val, batch_size) if data.x_val is not None and len(data.x_val)
           else None)
    return accuracies(data, predict(model, data, data.x_train, batch_size),
                      predict(model, data, data.x_test, batch_size), val)


def accuracies(data: LabelledData, pred: torch.Tensor, test: torch.Tensor,
               val: torch.Tensor | None = None) -> dict[str, float]:
    """The accuracies of `evaluate` from predicted classes of the training, test and validation
    sets (acc_val is nan when `val` is None)."""
    pred, test = pred.cpu(), test.cpu()
    perm = data.permuted.cpu()
    true, train = data.true_label.cpu(), data.train_label.cpu()

    def acc(mask, labels):
        return float((pred[mask] == labels[mask]).float().mean()) if mask.any() else float("nan")

    return {"acc_unpermuted": acc(~perm, true), "acc_permuted_train": acc(perm, train),
            "acc_permuted_true": acc(perm, true),
            "acc_test": float((test == data.y_test.cpu()).float().mean()),
            "acc_val": float((val.cpu() == data.y_val.cpu()).float().mean()) if val is not None else float("nan")}


def autocast(model: BlockNet):
    """The numeric context a model runs in: bf16 autocast for `precision="bf16"` (on the CPU or a
    GPU; deterministic on the CPU for a fixed thread count), plain float32 otherwise."""
    dev = next(model.parameters()).device
    return torch.autocast(dev.type, dtype=torch.bfloat16, enabled=model.precision == "bf16")


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
    fmt = model.memory_format
    for i in range(0, n, cfg.batch_size):
        idx = order[i:i + cfg.batch_size]
        xb = data.x_train[idx]
        if cfg.augment:
            xb = augment(xb, g)
        xb = data.normalise(xb).contiguous(memory_format=fmt)
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


def _filesystem_errors(fn):
    """An OSError escaping `fn` (a read-only folder, a full disk) becomes a one-line RunFolderError."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except OSError as err:
            raise filesystem_error(err) from err
    return wrapper


@_filesystem_errors
def train(cfg: RunConfig, runs_dir=None, data_root=None, progress: bool = True,
          stop_after: int | None = None) -> Run:
    """Train `cfg` (or reuse/resume its run folder) and return the Run.

    Safe to call from several processes at once for the same config: they take turns through the
    run's lock, and only the first trains. An existing folder is checked before it is reused or
    resumed (`finished_run`, `_verified_run`): one that holds another run, or a damaged last.pt or
    config.json, is refused with the fix; a missing metrics.csv or config.json is re-derived, and a
    missing or damaged checkpoint is recreated by retraining up to its epoch
    (`_recreate_checkpoints`). `stop_after` ends after that many new epochs (as a kill would): for
    tests of resuming. The returned Run's `trained_now` counts the epochs trained here.
    """
    cfg = cfg.resolved()    # precision "auto" -> what this machine trains in (named by the hash)
    path = run_path(cfg, runs_dir)
    done = finished_run(path, cfg)
    if done is not None and not stale_leftovers(path):
        return done
    device = resolve_device(cfg.device)
    if cfg.precision == "bf16" and device.type == "cpu" and not native_bf16_cpu():
        warnings.warn("precision='bf16' on a CPU without native bfloat16 support is about 10x slower "
                      "than fp32: use precision=fp32 or auto (this changes the run, and so its folder)",
                      RuntimeWarning)
    # Everything that can fail on bad input happens before anything is written.
    data = load_data(cfg, data_root, device)
    with run_lock(path, announce=progress):
        remove_stale(path)              # what dead processes left (.creating-<pid>, .tmp-<pid>)
        done = finished_run(path, cfg)   # another process may have trained it while this one waited
        if done is not None:
            return done
        return _train_locked(cfg, path, data, device, progress, stop_after, data_root)


def finished_run(path: Path, cfg: RunConfig | None = None) -> Run | None:
    """The run in folder `path` if it has finished training and passes the cheap checks (`Run.check`:
    config.json names `cfg`, or the run the folder is named after; last.pt, metrics.csv and every
    promised checkpoint sound), else None: then `train` heals, refuses, resumes or trains it."""
    if not ((path / "last.pt").exists() and (path / "metrics.csv").exists()):
        return None
    try:
        run = open_run(path)
    except RunFolderError:
        return None
    if run.config.hash() != (cfg.hash() if cfg is not None else path.name):
        return None
    try:
        if run.done and not run.check():
            return run
    except (OSError, ValueError, KeyError):   # an unreadable metrics.csv: train re-derives it
        pass
    return None


def _train_locked(cfg: RunConfig, path: Path, data: LabelledData, device, progress: bool,
                  stop_after: int | None, data_root=None) -> Run:
    model = build_model(cfg, data.num_classes)
    if path.exists() and (path / "last.pt").exists():
        run = _verified_run(path, cfg, data, model)
        if run.done:
            _recreate_checkpoints(path, cfg, data_root)
            return open_run(path)
    # channels_last where it is fast and sound (see BlockNet.memory_format_for).
    model.place(device)
    opt = make_optimizer(cfg, model)
    keep = set(cfg.checkpoint_epochs())
    select = selection_column(cfg)      # the metric early stopping maximises

    last = path / "last.pt"
    if last.exists():
        ck = load_checkpoint(last)
        if ck.get("config_hash") != cfg.hash():
            raise CheckpointError(f"{last} belongs to run {ck.get('config_hash')}, not {cfg.hash()}: "
                                  f"delete {path} and train again")
        load_state_checked(model, ck["model"], str(last))
        opt.load_state_dict(ck["optimizer"])
        history, start, best = ck["history"], ck["epoch"], ck["best"]
        _sync_metrics(path, history)   # a kill between writing last.pt and metrics.csv
    else:
        tmp = path.with_name(f".{path.name}.creating-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            (tmp / "checkpoints").mkdir(parents=True)
            atomic_write_text(tmp / "config.json", json.dumps(_meta(cfg, data, model, device), indent=2))
            t0 = time.time()
            row = {"epoch": 0, "train_loss": float("nan"), "lr": 0.0, **evaluate(model, data),
                   "seconds": time.time() - t0}
            history, start, best = [row], 0, (row[select], 0)
            _save_epoch(tmp, cfg, model, opt, history, 0, best, keep)
            if path.exists():  # last.pt was deleted (or an earlier attempt died before writing it)
                shutil.rmtree(path)
            os.replace(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

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
        measured = (evaluate(model, data) if cfg.evaluate == "every" or epoch in keep
                    else dict.fromkeys(EVALUATED, float("nan")))
        row = {"epoch": epoch, "train_loss": loss, "lr": lr, **measured, "seconds": time.time() - t0}
        history.append(row)
        if row[select] > best[0]:
            best = (row[select], epoch)
        _save_epoch(path, cfg, model, opt, history, epoch, best, keep)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}", **{select[4:]: f"{row[select]:.3f}"},
                            memorized=f"{row['acc_permuted_train']:.2f}")
    if bar is not None:
        bar.close()
    _recreate_checkpoints(path, cfg, data_root)
    run = open_run(path)
    run.trained_now = len(history) - 1 - start
    return run


def _meta(cfg: RunConfig, data: LabelledData, model: BlockNet, device=None) -> dict:
    """config.json: the config and provenance. Without `device` (config.json rebuilt for an existing
    run), the training device and library versions are unknown and left out, and it says so."""
    meta = {"config": cfg.to_dict(), "hash": cfg.hash(), "num_classes": data.num_classes,
            "layers": model.layer_names, "device": str(device), "memgeo_version": __version__,
            "torch_version": torch.__version__, "eps_effective": data.eps_effective,
            "n_train": len(data.x_train), "n_test": len(data.x_test)}
    if device is None:
        for key in ("device", "memgeo_version", "torch_version"):
            del meta[key]
        meta["rebuilt"] = (f"config.json was rebuilt by memgeo {__version__} from the config and last.pt "
                           f"on {time.strftime('%Y-%m-%d')}; the training device and library versions are unknown")
    return meta


def _sync_metrics(path: Path, history: list[dict]) -> None:
    """metrics.csv re-derived from last.pt's history when it differs (missing, stale or edited)."""
    text = metrics_text(history)
    f = path / "metrics.csv"
    if not f.exists() or f.read_text() != text:
        atomic_write_text(f, text)
        warnings.warn(f"run {path}: metrics.csv rebuilt from last.pt", RunRepairWarning, stacklevel=3)


def _verified_run(path: Path, cfg: RunConfig, data: LabelledData, model: BlockNet) -> Run:
    """The run folder `path` (which has a last.pt), checked cheaply before it is reused or resumed.

    Refused: a damaged last.pt, a broken config.json, a config.json of another config. Re-derived:
    a deleted config.json (from the config, once last.pt confirms the run) and a missing or
    implausible metrics.csv (from last.pt's history)."""
    last = path / "last.pt"
    problem = checkpoint_problem(last)
    if problem:
        raise CheckpointError(f"{problem}: delete it and {redo_advice(last)}")
    if not (path / "config.json").exists():
        ck = load_checkpoint(last)
        if ck.get("config_hash") != cfg.hash():
            raise CheckpointError(f"{last} belongs to run {ck.get('config_hash')}, not {cfg.hash()}: "
                                  f"delete {path} and train again")
        atomic_write_text(path / "config.json", json.dumps(_meta(cfg, data, model), indent=2))
        warnings.warn(f"run {path}: config.json rebuilt from the config (the training device is unknown)",
                      RunRepairWarning, stacklevel=3)
    meta = read_meta(path)
    found = RunConfig.from_dict(meta["config"])
    if found.hash() != cfg.hash():
        raise RunFolderError(
            f"run folder {path} holds another run: its config.json has {config_difference(found, cfg)} "
            f"(hash {found.hash()}, not {cfg.hash()}). Move the folder to {path.parent / found.hash()} if it is "
            f"that run, or delete it; then train again")
    run = Run(path, found)
    vars(run)["meta"] = meta
    try:
        m = run.metrics
        plausible = metrics_plausible(m)
    except (OSError, ValueError):   # pandas parser errors are ValueErrors
        plausible = False
    if not plausible:
        _sync_metrics(path, load_checkpoint(last)["history"])
    return run


def _first_difference(recorded: list[dict], replayed: list[dict]) -> str | None:
    """Where two metric histories differ (the wall-clock seconds aside), or None."""
    if len(recorded) != len(replayed):
        return f"{len(replayed)} epochs retrained, {len(recorded)} recorded"
    for a, b in zip(recorded, replayed):
        for col in METRIC_COLUMNS:
            if col == "seconds":
                continue
            x, y = a.get(col), b.get(col)
            if not (x == y or (isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y))):
                return f"epoch {a['epoch']}: {col} {x!r} recorded, {y!r} retrained"
    return None


def _recreate_checkpoints(path: Path, cfg: RunConfig, data_root=None) -> None:
    """Recreate the promised checkpoints of run folder `path` that are missing or damaged.

    Checkpoints hold weights only and last.pt is the only full training state, so the exact way
    back to epoch k is training again from epoch 0: the run is retrained up to the latest bad
    epoch in a temporary folder `.<hash>.replay-<pid>` beside it, and the files are copied in only if
    the retrained history equals last.pt's (every metric, every epoch) and the retrained weights
    equal every intact checkpoint on the way; otherwise nothing changes and the error says so."""
    run = Run(path, cfg)
    if not [e for e in run.promised_epochs() if checkpoint_problem(run.checkpoint_path(e))]:
        return
    ck = load_checkpoint(path / "last.pt")
    promised = run.promised_epochs(last_epoch=ck["epoch"], best_epoch=ck["best"][1])
    bad = [e for e in promised if checkpoint_problem(run.checkpoint_path(e))]
    if not bad:
        return
    k = max(bad)
    replay_dir = path.parent / f".{path.name}.replay-{os.getpid()}"
    shutil.rmtree(replay_dir, ignore_errors=True)
    try:
        replay = train(cfg, runs_dir=replay_dir, data_root=data_root, progress=False, stop_after=k)
        diff = _first_difference(ck["history"][:k + 1], load_checkpoint(replay.path / "last.pt")["history"])
        for e in range(k + 1):
            if diff is None and e not in bad and run.checkpoint_path(e).exists() and replay.checkpoint_path(e).exists():
                a, b = run.load_state(e), replay.load_state(e)
                if a.keys() != b.keys() or not all(torch.equal(a[n], b[n]) for n in a):
                    diff = f"epoch {e}: the retrained weights differ from the kept checkpoint"
        if diff is not None:
            raise CheckpointError(
                f"run {path}: retraining epochs 0..{k} to recreate the checkpoint(s) of epochs {bad} did not "
                f"reproduce the run ({diff}): training here is not bitwise reproducible (another device, "
                f"thread count or library version?), so they cannot be recreated exactly. Nothing was "
                f"changed; to get a complete run, delete {path} and train again")
        for e in bad:
            atomic_write_bytes(run.checkpoint_path(e), replay.checkpoint_path(e).read_bytes())
    finally:
        shutil.rmtree(replay_dir, ignore_errors=True)
    warnings.warn(f"run {path}: recreated checkpoint(s) of epochs {bad} by retraining epochs 0..{k} "
                  f"(metrics identical to the recorded ones)", RunRepairWarning, stacklevel=3)


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
    atomic_write_text(path / "metrics.csv", metrics_text(history))
