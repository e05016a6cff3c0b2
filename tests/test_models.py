import pytest
import torch

from memgeo.config import ConfigError, RunConfig
from memgeo.models import build_model


@pytest.mark.parametrize("arch,width,layers", [
    ("smallcnn", 8, ["input", "conv1", "conv2", "conv3", "conv4", "logits"]),
    ("vgg16", 8, ["input"] + [f"conv{i}" for i in range(1, 14)] + ["fc1", "fc2", "logits"]),
    ("alexnet", 8, ["input", "conv1", "conv2", "conv3", "conv4", "conv5", "fc1", "fc2", "logits"]),
    ("resnet18", 4, ["input", "stem"] + [f"res{s}_{b}" for s in range(1, 5) for b in (1, 2)] + ["logits"]),
])
@pytest.mark.parametrize("dataset,size,classes", [("cifar10", 32, 10), ("tinyimagenet", 64, 200)])
def test_models_name_layers_and_shapes(arch, width, layers, dataset, size, classes):
    m = build_model(RunConfig(model=arch, width=width, dataset=dataset)).eval()
    assert m.layer_names == layers
    x = torch.randn(2, 3, size, size)
    feats = m.forward_features(x)
    assert list(feats) == layers
    assert feats["logits"].shape == (2, classes)
    assert torch.allclose(feats["logits"], m(x))
    # Every parameter belongs to a named layer.
    assert {m.block_of(n) for n, _ in m.named_parameters()} <= set(layers)


def test_resnet18_stage_widths_follow_k():
    m = build_model(RunConfig(model="resnet18", width=3))
    assert [m.blocks[f"res{s}_1"].conv1.out_channels for s in range(1, 5)] == [3, 6, 12, 24]
    standard = build_model(RunConfig(model="resnet18", width=64))
    n = sum(p.numel() for p in standard.parameters())
    assert 11.0e6 < n < 11.3e6    # the usual CIFAR ResNet-18 has 11.17 M parameters


def test_vgg16_standard_size():
    n = sum(p.numel() for p in build_model(RunConfig(model="vgg16", width=64, dataset="cifar100")).parameters())
    assert 15.0e6 < n < 15.4e6


def test_batchnorm_optional():
    m = build_model(RunConfig(model="vgg16", width=8, batchnorm=False))
    assert not any(isinstance(x, torch.nn.BatchNorm2d) for x in m.modules())


def test_initialisation_is_fixed_by_seed():
    a = build_model(RunConfig(seed=1)).state_dict()
    b = build_model(RunConfig(seed=1)).state_dict()
    c = build_model(RunConfig(seed=2)).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["blocks.conv1.0.weight"], c["blocks.conv1.0.weight"])


def test_unknown_model():
    with pytest.raises(ConfigError, match="choose one of"):
        RunConfig(model="lenet")


@pytest.mark.parametrize("precision,dtype", [("bf16", torch.bfloat16), ("fp32", torch.float32)])
def test_model_carries_its_precision_into_autocast(precision, dtype):
    from memgeo.train import autocast
    m = build_model(RunConfig(width=4, precision=precision)).eval()
    assert m.precision == precision
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad(), autocast(m):
        assert m(x).dtype == dtype
    # outside the context the weights and a plain forward stay float32
    assert all(p.dtype == torch.float32 for p in m.parameters())
    assert m(x).dtype == torch.float32


def test_memory_format_avoids_the_cpu_pointwise_conv_bug():
    """ResNet-18's 1x1 shortcuts train in the default format on a CPU (oneDNN's channels_last 1x1
    backward-weights kernel corrupts memory there); everything else, and every GPU, channels_last."""
    res, cnn = build_model(RunConfig(model="resnet18", width=2)), build_model(RunConfig(width=2))
    assert res.has_pointwise_conv and not cnn.has_pointwise_conv
    assert res.memory_format_for("cpu") == torch.contiguous_format
    assert res.memory_format_for("cuda:0") == torch.channels_last
    assert cnn.memory_format_for("cpu") == torch.channels_last
    assert cnn.place("cpu").memory_format == torch.channels_last
    assert res.place("cpu").blocks["stem"][0].weight.is_contiguous()


RESNET_TWICE = """
import os, sys, tempfile, torch
sys.path.insert(0, sys.argv[1])
from conftest import write_cifar_batches
from pathlib import Path
root = Path(tempfile.mkdtemp()); write_cifar_batches(root / "cifar-10-batches-py", 10, 5)
from memgeo.config import RunConfig
from memgeo.train import train
torch.set_num_threads(int(sys.argv[2]))
for trial in range(3):
    cfg = RunConfig(model="resnet18", width=4, unverified_local_copy=True, train_per_class=10, test_per_class=5,
                    epochs=2, optimizer="adam", lr=1e-4, augment=True, precision="fp32", device="cpu")
    train(cfg, runs_dir=tempfile.mkdtemp(), data_root=root, progress=False)
print("OK")
"""


@pytest.mark.parametrize("threads", [1, 2])
def test_resnet_trains_repeatedly_in_fp32_on_the_cpu(threads):
    # In channels_last this aborted ("double free or corruption") with one thread and hung with two.
    import subprocess
    import sys
    from pathlib import Path
    r = subprocess.run([sys.executable, "-c", RESNET_TWICE, str(Path(__file__).parent), str(threads)],
                       capture_output=True, text=True, timeout=240)
    assert r.returncode == 0 and r.stdout.strip() == "OK", r.stderr[-2000:]
