"""The `paper` preset's pipeline at toy size on the CPU: its VGG-16 run on CIFAR-100 and its ResNet-18
width sweep on CIFAR-10, through the engine, then probe and geometry on their layers. Everything but
the sizes comes from the preset, so a user with a GPU finds a path that has run end to end."""
import numpy as np
import pytest

from conftest import md5, write_cifar_batches
from memgeo.config import ProbeConfig, configure
from memgeo.engine import run_all
from memgeo.probe import geometry_over_epochs
from memgeo.sweep import width_configs


@pytest.fixture
def paper_data(tmp_path, monkeypatch, cifar_root):
    from torchvision.datasets import CIFAR100
    folder = cifar_root / "cifar-100-python"
    write_cifar_batches(folder, 12, 2, classes=100, hundred=True)
    # The official checksums, replaced by those of the tiny files written in the official format.
    monkeypatch.setattr(CIFAR100, "train_list", [["train", md5(folder / "train")]])
    monkeypatch.setattr(CIFAR100, "test_list", [["test", md5(folder / "test")]])
    monkeypatch.setattr(CIFAR100, "meta", {"filename": "meta", "key": "fine_label_names", "md5": md5(folder / "meta")})
    monkeypatch.setenv("MEMGEO_DATA_ROOT", str(cifar_root))
    return cifar_root


def test_paper_preset_pipeline_at_toy_size(paper_data, tmp_path):
    full = configure("paper")
    p = configure("paper", {"run.width": 4, "run.train_per_class": 10, "run.test_per_class": 2, "run.val_per_class": 2, "run.epochs": 1,
                            "sweep.widths": "1,2", "sweep.run.train_per_class": 10,
                            "sweep.run.test_per_class": 5, "sweep.run.epochs": 2,
                            "sweep.run.unverified_local_copy": True, "device": "cpu"})
    # Only the sizes differ from the preset: the models, datasets, optimizers and noise are the paper's.
    for field in ("model", "dataset", "optimizer", "lr", "schedule", "batch_size", "augment", "precision"):
        assert getattr(p.run, field) == getattr(full.run, field)
        assert getattr(p.sweep.run, field) == getattr(full.sweep.run, field)
    assert (p.run.model, p.run.dataset, p.sweep.run.model) == ("vgg16", "cifar100", "resnet18")
    # One process (max_parallel=1): the checksum patch above lives in this process only.
    runs = run_all([p.run] + width_configs(p.sweep), runs_dir=tmp_path, max_parallel=1, progress=False)
    vgg, *resnets = runs
    assert all(r.done for r in runs)
    assert vgg.num_classes == 100 and len(vgg.checkpoint_epochs) == 2
    assert [r.config.width for r in resnets] == [1, 2]
    assert vgg.config.precision == "fp32"      # "auto" on this CPU (no native bf16, or measured)

    probe = ProbeConfig(P=4, M=2, n_t=20, proj_dim=200)
    vgg_layers = ["conv1", "conv13", "fc2"]
    s, _ = geometry_over_epochs(vgg, probe, epochs=[0, 1], layers=vgg_layers, types=("unpermuted", "test"),
                                progress=False)
    assert len(s) == 2 * len(vgg_layers) * 2
    assert np.isfinite(s[["capacity", "radius", "dimension"]].to_numpy()).all()
    # M = 2 points per manifold: capacity of two points is at least that of a segment (>= 2/M... > 0)
    assert (s["capacity"] > 0).all() and (s["features"] <= probe.proj_dim).all()
    res_layers = resnets[1].load_model(2).layer_names
    assert res_layers[1] == "stem" and res_layers[-2] == "res4_2"
    s2, _ = geometry_over_epochs(resnets[1], probe, epochs=[2], layers=["res2_1", "res4_2"], types=("test",),
                                 progress=False)
    assert len(s2) == 2 and np.isfinite(s2["capacity"]).all()
