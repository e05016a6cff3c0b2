import os
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import md5, write_cifar_batches
from memgeo import data as D
from memgeo.config import ConfigError, RunConfig


def cfg(**kw):
    base = dict(unverified_local_copy=True, train_per_class=20, test_per_class=10, eps=0.5)
    base.update(kw)
    return RunConfig(**base)


def test_unverified_copy_loads_official_layout(cifar_root):
    raw = D.load_cifar10(cifar_root, unverified_local_copy=True)
    assert raw.train.images.shape == (400, 3, 32, 32) and raw.train.images.dtype == np.uint8
    assert raw.test.images.shape == (200, 3, 32, 32)
    assert np.bincount(raw.train.labels).tolist() == [40] * 10
    assert raw.classes[0] == "class0"


def test_offline_copy_needs_explicit_option(cifar_root, monkeypatch):
    # The verified path runs torchvision's md5 check, which rejects the rebuilt copy, and the
    # download that follows cannot succeed: one clear message that names the option.
    from torchvision.datasets import CIFAR10
    monkeypatch.setattr(CIFAR10, "url", "file:///nonexistent/cifar-10-python.tar.gz")
    with pytest.raises(D.DataError, match="unverified_local_copy=True"):
        D.load_cifar10(cifar_root, unverified_local_copy=False)


def test_verified_cifar10_path_accepts_matching_md5(cifar_root, monkeypatch):
    from torchvision.datasets import CIFAR10
    folder = cifar_root / "cifar-10-batches-py"
    monkeypatch.setattr(CIFAR10, "train_list", [[f"data_batch_{i}", md5(folder / f"data_batch_{i}")] for i in range(1, 6)])
    monkeypatch.setattr(CIFAR10, "test_list", [["test_batch", md5(folder / "test_batch")]])
    monkeypatch.setattr(CIFAR10, "meta", {"filename": "batches.meta", "key": "label_names",
                                          "md5": md5(folder / "batches.meta")})
    verified = D.load_cifar10(cifar_root)
    unverified = D.load_cifar10(cifar_root, unverified_local_copy=True)
    assert np.array_equal(verified.train.images, unverified.train.images)
    assert np.array_equal(verified.test.labels, unverified.test.labels)


def test_cifar100_through_torchvision_with_md5(tmp_path, monkeypatch):
    from torchvision.datasets import CIFAR100
    folder = tmp_path / "cifar-100-python"
    write_cifar_batches(folder, 6, 2, classes=100, hundred=True)
    monkeypatch.setattr(CIFAR100, "train_list", [["train", md5(folder / "train")]])
    monkeypatch.setattr(CIFAR100, "test_list", [["test", md5(folder / "test")]])
    monkeypatch.setattr(CIFAR100, "meta", {"filename": "meta", "key": "fine_label_names", "md5": md5(folder / "meta")})
    raw = D.load_cifar100(tmp_path)
    assert raw.train.images.shape == (600, 3, 32, 32)
    assert len(raw.classes) == 100 and np.bincount(raw.train.labels).tolist() == [6] * 100
    # A corrupted file fails the md5 check; with no way to download, the message says how to get it.
    with open(folder / "train", "ab") as f:
        f.write(b"corrupt")
    monkeypatch.setattr(CIFAR100, "url", "file:///nonexistent/cifar-100-python.tar.gz")
    with pytest.raises(D.DataError, match="cifar-100-python.tar.gz"):
        D.load_cifar100(tmp_path)


def test_missing_dataset_message(tmp_path, monkeypatch):
    with pytest.raises(D.DataError, match="make_cifar10_batches.py"):
        D.load_cifar10(tmp_path, unverified_local_copy=True)


def _write_tiny_imagenet_zip(root: Path, wnids, n_train=3, n_val=2) -> Path:
    src = root / "build" / "tiny-imagenet-200"
    rng = np.random.default_rng(0)
    (src / "val" / "images").mkdir(parents=True)
    (src / "wnids.txt").write_text("\n".join(wnids) + "\n")
    (src / "words.txt").write_text("".join(f"{w}\tthing {w}, other\n" for w in wnids))
    ann = []
    for c, w in enumerate(wnids):
        d = src / "train" / w / "images"
        d.mkdir(parents=True)
        for i in range(n_train):
            Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(d / f"{w}_{i}.JPEG")
        (src / "train" / w / f"{w}_boxes.txt").write_text("")
        for i in range(n_val):
            name = f"val_{c * n_val + i}.JPEG"
            Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(src / "val" / "images" / name)
            ann.append(f"{name}\t{w}\t0\t0\t63\t63")
    (src / "val" / "val_annotations.txt").write_text("\n".join(ann) + "\n")
    archive = root / "tiny-imagenet-200.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for p in sorted(src.rglob("*")):
            z.write(p, p.relative_to(src.parent))
    shutil.rmtree(root / "build")
    return archive


def test_tinyimagenet_unpacks_and_reorganises_val(tmp_path, monkeypatch):
    wnids = ["n01443537", "n01629819", "n01641577"]
    archive = _write_tiny_imagenet_zip(tmp_path, wnids)
    monkeypatch.setattr(D, "TINY_MD5", md5(archive))
    with pytest.raises(D.DataError, match="wrong md5"):
        D.prepare_tinyimagenet(tmp_path, md5="0" * 32)
    folder = D.prepare_tinyimagenet(tmp_path, md5=md5(archive))
    assert sorted(p.name for p in (folder / "val").iterdir() if p.is_dir()) == sorted(wnids)
    assert len(list((folder / "val" / wnids[1]).glob("*.JPEG"))) == 2
    assert not (folder / "val" / "images").exists()
    raw = D.load_tinyimagenet(tmp_path)
    assert raw.train.images.shape == (9, 3, 64, 64) and raw.test.images.shape == (6, 3, 64, 64)
    assert raw.test.labels.tolist() == [0, 0, 1, 1, 2, 2] and raw.classes[0] == "thing n01443537"


def test_balanced_subset_is_deterministic_and_balanced():
    labels = np.repeat(np.arange(10), 50)
    a = D.balanced_subset(labels, 7, seed=3)
    assert np.array_equal(a, D.balanced_subset(labels, 7, seed=3))
    assert not np.array_equal(a, D.balanced_subset(labels, 7, seed=4))
    assert np.bincount(labels[a]).tolist() == [7] * 10
    assert len(D.balanced_subset(labels, 0, seed=0)) == 500
    with pytest.raises(ConfigError, match="only 50"):
        D.balanced_subset(labels, 51, seed=0)


@pytest.mark.parametrize("eps", [0.0, 0.2, 0.5, 1.0])
def test_permutation_bookkeeping(eps):
    labels = np.repeat(np.arange(10), 100)
    train, selected = D.permute_labels(labels, eps, seed=1)
    assert selected.sum() == round(eps * 1000)
    # Labels are permuted among the selected examples only: class frequencies are unchanged,
    # unselected examples keep their label.
    assert np.array_equal(np.bincount(train, minlength=10), np.bincount(labels, minlength=10))
    assert np.array_equal(train[~selected], labels[~selected])
    assert np.array_equal(np.sort(train[selected]), np.sort(labels[selected]))
    changed = train != labels
    assert np.all(selected[changed])
    if eps > 0:
        # Some selected examples keep their label by chance (about 1/C of them): not "permuted".
        kept = selected & ~changed
        assert 0 < kept.sum() < 0.2 * selected.sum()


def test_load_data_tracks_true_and_training_labels(cifar_root):
    d = D.load_data(cfg(), cifar_root)
    assert d.x_train.dtype == torch.uint8 and d.x_train.shape == (200, 3, 32, 32)
    assert d.x_test.shape == (100, 3, 32, 32)
    assert torch.equal(d.permuted, d.train_label != d.true_label)
    assert torch.all(d.selected[d.permuted])
    assert 0.35 < d.eps_effective <= 0.5
    d2 = D.load_data(cfg(), cifar_root)
    assert torch.equal(d.train_label, d2.train_label) and torch.equal(d.x_train, d2.x_train)
    d3 = D.load_data(cfg(seed=1), cifar_root)
    assert not torch.equal(d.train_label, d3.train_label)
    x = d.normalise(d.x_train)
    assert abs(float(x.mean())) < 0.05 and abs(float(x.std()) - 1) < 0.05
    with pytest.raises(ConfigError, match="class 0 has only 40"):
        D.load_data(cfg(train_per_class=41), cifar_root)


def test_augment_is_batched_flip_and_crop():
    g = torch.Generator().manual_seed(0)
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    out = D.augment(x, g, pad=2)
    assert out.shape == x.shape
    # Every output is a shifted (and maybe flipped) window of the zero-padded input.
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(2):
        found = any(torch.equal(out[i], src[:, dy:dy + 8, dx:dx + 8])
                    for src in (padded[i], padded[i].flip(2)) for dy in range(5) for dx in range(5))
        assert found
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(D.augment(x, g1), D.augment(x, g2))


def test_missing_data_root_is_not_created(tmp_path, monkeypatch):
    """A MEMGEO_DATA_ROOT (or data_root) that does not exist is a typo until the user creates it:
    nothing is created or downloaded, and the message says so."""
    from torchvision.datasets import CIFAR10, CIFAR100
    monkeypatch.setattr(CIFAR10, "url", "file:///nonexistent/cifar-10-python.tar.gz")
    monkeypatch.setattr(CIFAR100, "url", "file:///nonexistent/cifar-100-python.tar.gz")
    missing = tmp_path / "no" / "such" / "data"
    monkeypatch.setenv("MEMGEO_DATA_ROOT", str(missing))
    for c in (RunConfig(), RunConfig(dataset="cifar100"), RunConfig(dataset="tinyimagenet")):
        with pytest.raises(D.DataError, match=rf"{missing} does not exist.*create it"):
            D.load_data(c)
    with pytest.raises(D.DataError, match="does not exist"):
        D.load_data(RunConfig(), root=missing)
    assert list(tmp_path.iterdir()) == []
    # Once created, it is where the download goes (here it fails: no network).
    missing.mkdir(parents=True)
    with pytest.raises(D.DataError, match="could not be loaded"):
        D.load_data(RunConfig())


def test_raw_data_is_read_once_per_process_and_again_when_its_files_change(tmp_path):
    root = tmp_path / "data"
    write_cifar_batches(root / "cifar-10-batches-py", 4, 2)
    c = cfg(train_per_class=2, test_per_class=1)
    first = D.load_raw(c, root)
    assert D.load_raw(c, root) is first                        # memoised: one unpickling
    assert not first.train.images.flags.writeable and not first.test.labels.flags.writeable
    a = D.load_data(c, root)
    a.x_train[0] = 0                                           # callers get copies they may change
    assert D.load_data(c, root).x_train.equal(D.load_data(c, root).x_train)
    write_cifar_batches(root / "cifar-10-batches-py", 5, 2, seed=1)   # the data replaced
    again = D.load_raw(c, root)
    assert again is not first and again.train.images.shape[0] == 50
