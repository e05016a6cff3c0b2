"""Datasets, class-balanced subsets, label permutation, and the on-device fast path.

Loaders return raw uint8 images (N, 3, H, W) and integer labels:
- CIFAR-10 / CIFAR-100 through torchvision (download + md5 check);
- the offline JPEG-recompressed CIFAR-10 copy (official python layout, md5 differs) only when
  `unverified_local_copy=True` is asked for explicitly;
- Tiny ImageNet: download + md5, unpack, validation split reorganised into class folders, parsed
  once and cached as .npy.

Label permutation: a fraction eps of the training examples (chosen by seed) has its labels
permuted among themselves, so class frequencies are unchanged. An example whose label survives the
shuffle by chance is *selected* but not *permuted*: `permuted` means "training label differs from
the true label", everywhere in memgeo (accuracies, manifolds). The effective noise fraction is
therefore about eps * (1 - 1/C); `LabelledData.eps_effective` reports it.
"""
from __future__ import annotations

import hashlib
import os
import pickle
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .config import ConfigError, RunConfig
from .paths import data_root


class DataError(RuntimeError):
    """A dataset is missing or corrupt; the message says how to get it."""


def derived_seed(seed: int, *tags) -> int:
    """Independent, reproducible seed for a named purpose (e.g. ("subset", "train"))."""
    h = hashlib.sha256(repr((seed,) + tags).encode()).digest()
    return int.from_bytes(h[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


@dataclass
class RawSplit:
    images: np.ndarray   # uint8 (N, 3, H, W)
    labels: np.ndarray   # int64 (N,)


@dataclass
class RawDataset:
    name: str
    train: RawSplit
    test: RawSplit
    classes: list[str]


# ---------------------------------------------------------------------------------------------
# CIFAR (python pickle layout)

def _unpickle(path: Path) -> dict:
    with open(path, "rb") as f:
        return pickle.load(f, encoding="latin1")


def _cifar_split(files: list[Path], label_key: str) -> RawSplit:
    xs, ys = [], []
    for p in files:
        d = _unpickle(p)
        xs.append(np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        ys.append(np.asarray(d[label_key], dtype=np.int64))
    return RawSplit(np.concatenate(xs), np.concatenate(ys))


def _torchvision_cifar(cls, root: Path, name: str, how_to_get: str) -> tuple[RawSplit, RawSplit, list[str]]:
    """Load through torchvision, which checks every file's md5 and downloads when they are missing."""
    splits = []
    for train in (True, False):
        try:
            ds = cls(str(root), train=train, download=True)
        except Exception as err:  # network down, md5 mismatch, truncated archive
            raise DataError(
                f"{name} could not be loaded from {root} ({type(err).__name__}: {err}). {how_to_get}"
            ) from err
        splits.append(RawSplit(np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2)),
                               np.asarray(ds.targets, dtype=np.int64)))
    return splits[0], splits[1], list(ds.classes)


def load_cifar10(root: Path, unverified_local_copy: bool = False) -> RawDataset:
    folder = root / "cifar-10-batches-py"
    if unverified_local_copy:
        # The offline copy: official layout and order, JPEG-decoded pixels, so no md5 check.
        files = [folder / f"data_batch_{i}" for i in range(1, 6)] + [folder / "test_batch", folder / "batches.meta"]
        missing = [str(f) for f in files if not f.exists()]
        if missing:
            raise DataError(
                f"the unverified local CIFAR-10 copy is incomplete: missing {', '.join(missing)}. "
                f"Rebuild it with `python ../shared/data/make_cifar10_batches.py {root}`.")
        meta = _unpickle(folder / "batches.meta")
        return RawDataset("cifar10", _cifar_split(files[:5], "labels"), _cifar_split([files[5]], "labels"),
                          list(meta["label_names"]))
    from torchvision.datasets import CIFAR10
    how = (f"Put the official cifar-10-python.tar.gz (https://www.cs.toronto.edu/~kriz/cifar.html) "
           f"unpacked under {root}, or set MEMGEO_DATA_ROOT. If {folder} is the offline JPEG copy, "
           f"load it with unverified_local_copy=True.")
    train, test, classes = _torchvision_cifar(CIFAR10, root, "CIFAR-10", how)
    return RawDataset("cifar10", train, test, classes)


def load_cifar100(root: Path) -> RawDataset:
    from torchvision.datasets import CIFAR100
    how = (f"Put the official cifar-100-python.tar.gz (https://www.cs.toronto.edu/~kriz/cifar.html) "
           f"unpacked under {root}, or set MEMGEO_DATA_ROOT.")
    train, test, classes = _torchvision_cifar(CIFAR100, root, "CIFAR-100", how)
    return RawDataset("cifar100", train, test, classes)


# ---------------------------------------------------------------------------------------------
# Tiny ImageNet

TINY_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
TINY_MD5 = "90528d7ca1a48142e341f4ef8d21d0de"


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def prepare_tinyimagenet(root: Path, url: str | None = None, md5: str | None = None) -> Path:
    """Download (if missing), verify, unpack, and move val images into val/<wnid>/ folders."""
    url, md5 = url or TINY_URL, md5 or TINY_MD5
    folder = root / "tiny-imagenet-200"
    done = folder / ".memgeo-val-reorganised"
    if done.exists():
        return folder
    archive = root / "tiny-imagenet-200.zip"
    if not archive.exists():
        from torchvision.datasets.utils import download_url
        try:
            download_url(url, str(root), archive.name, md5)
        except Exception as err:
            raise DataError(f"Tiny ImageNet is not under {root} and could not be downloaded ({err}). "
                            f"Put tiny-imagenet-200.zip ({url}) into {root}, or set MEMGEO_DATA_ROOT.") from err
    if _md5(archive) != md5:
        raise DataError(f"{archive} has the wrong md5 (expected {md5}); delete it and download it again.")
    tmp = root / "tiny-imagenet-200.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    with zipfile.ZipFile(archive) as z:
        z.extractall(tmp)
    src = tmp / "tiny-imagenet-200"
    val = src / "val"
    ann = val / "val_annotations.txt"
    for line in ann.read_text().splitlines():
        parts = line.split("\t")
        if len(parts) < 2:
            continue
        fname, wnid = parts[0], parts[1]
        (val / wnid).mkdir(exist_ok=True)
        os.replace(val / "images" / fname, val / wnid / fname)
    shutil.rmtree(val / "images", ignore_errors=True)
    (src / done.name).write_text("val split reorganised into class folders\n")
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(src, folder)
    shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _read_images(paths: list[Path]) -> np.ndarray:
    from PIL import Image
    return np.stack([np.asarray(Image.open(p).convert("RGB"), dtype=np.uint8).transpose(2, 0, 1) for p in paths])


def load_tinyimagenet(root: Path) -> RawDataset:
    folder = prepare_tinyimagenet(root)
    cache = folder / "memgeo-cache.npz"
    wnids = folder.joinpath("wnids.txt").read_text().split()
    if not cache.exists():
        arrays = {}
        for split, pattern in (("train", "train/{w}/images"), ("val", "val/{w}")):
            paths, labels = [], []
            for c, w in enumerate(wnids):
                files = sorted((folder / pattern.format(w=w)).glob("*.JPEG"))
                paths += files
                labels += [c] * len(files)
            arrays[f"{split}_x"] = _read_images(paths)
            arrays[f"{split}_y"] = np.asarray(labels, dtype=np.int64)
        tmp = cache.with_suffix(".tmp.npz")
        np.savez(tmp, **arrays)
        os.replace(tmp, cache)
    z = np.load(cache)
    words = {}
    if (folder / "words.txt").exists():
        for line in (folder / "words.txt").read_text().splitlines():
            k, _, v = line.partition("\t")
            words[k] = v.split(",")[0]
    return RawDataset("tinyimagenet", RawSplit(z["train_x"], z["train_y"]), RawSplit(z["val_x"], z["val_y"]),
                      [words.get(w, w) for w in wnids])


def load_raw(cfg: RunConfig, root: Path | None = None) -> RawDataset:
    """The dataset a config names, from `root` (default: MEMGEO_DATA_ROOT, else `<repo>/data`).

    A folder the user named (`root` or MEMGEO_DATA_ROOT) that does not exist is refused before
    anything is created or downloaded: creating it is how one asks for the download."""
    source = "the data folder" if root is not None else "MEMGEO_DATA_ROOT"
    named = root is not None or "MEMGEO_DATA_ROOT" in os.environ
    root = Path(root) if root is not None else data_root()
    downloads = not (cfg.dataset == "cifar10" and cfg.unverified_local_copy)
    if named and downloads and not root.is_dir():
        raise DataError(f"{source} {root} does not exist; nothing was created or downloaded. Fix the path, "
                        f"or create it (mkdir -p {root}) to have {cfg.dataset} downloaded into it.")
    # One dataset is kept in memory per process, keyed by its files' sizes and times: a notebook
    # reads several seeds' runs (and each run reads the data more than once) from one unpickling.
    folder = root / RAW_FOLDERS[cfg.dataset]
    key = (cfg.dataset, str(root.resolve()), bool(cfg.unverified_local_copy), _files_signature(folder)) \
        if folder.is_dir() else None
    if key is not None and key in _RAW_MEMO:
        return _RAW_MEMO[key]
    if cfg.dataset == "cifar10":
        raw = load_cifar10(root, cfg.unverified_local_copy)
    elif cfg.dataset == "cifar100":
        raw = load_cifar100(root)
    else:
        raw = load_tinyimagenet(root)
    for split in (raw.train, raw.test):      # shared between callers: nobody may write into it
        for a in (split.images, split.labels):
            a.setflags(write=False)
    _RAW_MEMO.clear()
    if key is not None:
        _RAW_MEMO[key] = raw
    return raw


RAW_FOLDERS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python", "tinyimagenet": "tiny-imagenet-200"}
_RAW_MEMO: dict = {}


def _files_signature(folder: Path) -> tuple:
    """(name, size, mtime) of the files directly in `folder`: changes when the data is replaced."""
    return tuple(sorted((e.name, e.stat().st_size, e.stat().st_mtime_ns) for e in os.scandir(folder) if e.is_file()))


# ---------------------------------------------------------------------------------------------
# Subsets and label permutation

def balanced_subset(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """Indices of `per_class` examples of every class (all if 0), chosen by seed, sorted."""
    rng = np.random.default_rng(seed)
    out = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        if per_class > len(idx):
            raise ConfigError(f"train/test/val_per_class={per_class} but class {c} has only {len(idx)} "
                              f"examples left: ask for at most {len(idx)} (or 0 for all)")
        out.append(idx if per_class == 0 else rng.choice(idx, per_class, replace=False))
    return np.sort(np.concatenate(out))


def permute_labels(labels: np.ndarray, eps: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Permute the labels of round(eps * n) examples chosen by seed among themselves.

    Returns (training labels, selected mask). Class frequencies are preserved exactly; an example
    selected whose label comes back unchanged keeps a correct label (it is not counted as permuted).
    """
    rng = np.random.default_rng(seed)
    n = len(labels)
    selected = np.zeros(n, dtype=bool)
    chosen = rng.choice(n, int(round(eps * n)), replace=False)
    selected[chosen] = True
    train = labels.copy()
    train[chosen] = labels[chosen][rng.permutation(len(chosen))]
    return train, selected


@dataclass
class LabelledData:
    """A training subset with its label bookkeeping and a held-out test set, as tensors.

    Images stay uint8 (N, 3, H, W) on `device`; `normalise` turns a batch into float.
    """

    x_train: torch.Tensor
    true_label: torch.Tensor
    train_label: torch.Tensor
    selected: torch.Tensor     # chosen for permutation
    permuted: torch.Tensor     # training label != true label
    x_test: torch.Tensor
    y_test: torch.Tensor
    mean: torch.Tensor         # (1, 3, 1, 1) per channel, from the training subset
    std: torch.Tensor
    classes: list[str]
    train_index: np.ndarray    # indices into the full training split (provenance)
    test_index: np.ndarray
    # The validation split: held out from the training pool, true labels, never trained on
    # (empty when the config has val_per_class = 0).
    x_val: torch.Tensor | None = None
    y_val: torch.Tensor | None = None
    val_index: np.ndarray | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def eps_effective(self) -> float:
        return float(self.permuted.float().mean())

    def to(self, device) -> "LabelledData":
        moved = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in self.__dict__.items()}
        return LabelledData(**moved)

    def normalise(self, x_uint8: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
        return (x_uint8.to(dtype) / 255.0 - self.mean.to(dtype)) / self.std.to(dtype)


def load_data(cfg: RunConfig, root: Path | None = None, device="cpu") -> LabelledData:
    """Deterministic subset + permutation for a run config (same seed, same examples and labels)."""
    raw = load_raw(cfg, root)
    pool = np.arange(len(raw.train.labels))
    va = np.zeros(0, dtype=np.int64)
    if cfg.val_per_class:
        # the validation split first, so the training subset is drawn from what remains
        va = balanced_subset(raw.train.labels, cfg.val_per_class, derived_seed(cfg.seed, "subset", "val"))
        pool = np.setdiff1d(pool, va)
    tr = pool[balanced_subset(raw.train.labels[pool], cfg.train_per_class, derived_seed(cfg.seed, "subset", "train"))]
    te = balanced_subset(raw.test.labels, cfg.test_per_class, derived_seed(cfg.seed, "subset", "test"))
    true = raw.train.labels[tr]
    train, selected = permute_labels(true, cfg.eps, derived_seed(cfg.seed, "permute"))
    x = torch.from_numpy(raw.train.images[tr].copy())
    xf = x.float() / 255.0
    mean = xf.mean(dim=(0, 2, 3), keepdim=True)
    std = xf.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-3)
    data = LabelledData(
        x_train=x, true_label=torch.from_numpy(true), train_label=torch.from_numpy(train),
        selected=torch.from_numpy(selected), permuted=torch.from_numpy(train != true),
        x_test=torch.from_numpy(raw.test.images[te].copy()), y_test=torch.from_numpy(raw.test.labels[te]),
        mean=mean, std=std, classes=raw.classes, train_index=tr, test_index=te,
        x_val=torch.from_numpy(raw.train.images[va].copy()), y_val=torch.from_numpy(raw.train.labels[va]),
        val_index=va)
    return data.to(device)


def augment(x: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random horizontal flip and pad-crop of a uint8/float batch, as batched tensor ops."""
    n, c, h, w = x.shape
    dev = x.device
    flip = torch.rand(n, generator=generator, device=generator.device).to(dev) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=generator.device).to(dev)
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=generator.device).to(dev)
    rows = (dy[:, None] + torch.arange(h, device=dev)[None, :])          # n, h
    cols = (dx[:, None] + torch.arange(w, device=dev)[None, :])          # n, w
    idx_n = torch.arange(n, device=dev)[:, None, None, None]
    idx_c = torch.arange(c, device=dev)[None, :, None, None]
    return padded[idx_n, idx_c, rows[:, None, :, None], cols[:, None, None, :]]
