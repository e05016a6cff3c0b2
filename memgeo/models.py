"""The paper's models in CIFAR form, plus a small CNN family sized for 2 CPU cores.

Every model is a `BlockNet`: an ordered sequence of named blocks applied one after another. The
names are the analysable layers, in order ("input" is the image itself; the last block is
"logits"), so probing, rewinding and gradient analysis address layers by name. A block's output is
the post-activation feature map (after ReLU, and after pooling where the block pools).
"""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from .config import ConfigError, RunConfig


class BlockNet(nn.Module):
    def __init__(self, blocks: "OrderedDict[str, nn.Module]", arch: str):
        super().__init__()
        self.precision = "fp32"         # numeric format of training and evaluation (train.autocast);
                                        # build_model sets the config's
        if next(reversed(blocks)) != "logits":
            raise ValueError("the last block must be named 'logits'")
        self.blocks = nn.ModuleDict(blocks)
        self.arch = arch
        # 1x1 convolutions (ResNet shortcuts) decide the CPU memory format (memory_format_for);
        # the structure is fixed here, so this is found once, not per batch.
        self.has_pointwise_conv = any(isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)
                                      for m in self.modules())

    def memory_format_for(self, device) -> torch.memory_format:
        """channels_last (the fast path on GPUs, and for 3x3 convolutions on CPUs), except on a CPU
        for models with 1x1 convolutions: there oneDNN's AVX2 1x1 backward-weights kernel in
        channels_last (torch 2.14.1) corrupts memory, a "double free" abort with one thread and a
        hang with two; in the default format the same training runs, and ran faster."""
        if torch.device(device).type == "cpu" and self.has_pointwise_conv:
            return torch.contiguous_format
        return torch.channels_last

    @property
    def memory_format(self) -> torch.memory_format:
        """The memory format of this model's inputs, for the device its weights are on."""
        return self.memory_format_for(next(self.parameters()).device)

    def place(self, device) -> "BlockNet":
        """Move to `device` in the memory format memgeo uses there (`memory_format_for`)."""
        return self.to(device, memory_format=self.memory_format_for(device))

    @property
    def layer_names(self) -> list[str]:
        """Analysable layers in order: "input", every block, ending with "logits"."""
        return ["input"] + list(self.blocks.keys())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks.values():
            x = block(x)
        return x

    def forward_features(self, x: torch.Tensor, layers=None) -> "OrderedDict[str, torch.Tensor]":
        """Outputs of the named layers (all by default), in order, in one forward pass."""
        wanted = set(self.layer_names if layers is None else layers)
        out = OrderedDict()
        if "input" in wanted:
            out["input"] = x
        for name, block in self.blocks.items():
            x = block(x)
            if name in wanted:
                out[name] = x
            if len(out) == len(wanted):
                break
        return out

    def block_of(self, param_name: str) -> str:
        """Layer name that owns a parameter or buffer ("blocks.<layer>.…")."""
        return param_name.split(".")[1]


def _conv_bn_relu(cin, cout, bn, pool=False, k=3, stride=1, padding=1):
    layers = [nn.Conv2d(cin, cout, k, stride=stride, padding=padding, bias=not bn)]
    if bn:
        layers.append(nn.BatchNorm2d(cout))
    layers.append(nn.ReLU(inplace=True))
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


def _linear_relu(cin, cout, dropout=0.0, flatten=False):
    layers = [nn.Flatten()] if flatten else []
    if dropout:
        layers.append(nn.Dropout(dropout))
    layers += [nn.Linear(cin, cout), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


def small_cnn(width: int, num_classes: int, bn: bool = True, image_size: int = 32) -> BlockNet:
    """Four conv blocks (w, 2w, 4w, 8w channels, each pooling by 2) and a linear readout."""
    w = width
    chans = [3, w, 2 * w, 4 * w, 8 * w]
    blocks = OrderedDict((f"conv{i + 1}", _conv_bn_relu(chans[i], chans[i + 1], bn, pool=True)) for i in range(4))
    spatial = image_size // 16
    blocks["logits"] = nn.Sequential(nn.Flatten(), nn.Linear(8 * w * spatial * spatial, num_classes))
    return BlockNet(blocks, "smallcnn")


VGG16_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


def vgg16(width: int, num_classes: int, bn: bool = True, image_size: int = 32) -> BlockNet:
    """VGG-16 for small images: 13 conv blocks (channels scaled by width/64), 512-512 head.

    A pooling layer is folded into the conv block before it, so each conv block is one layer.
    """
    scale = width / 64
    blocks = OrderedDict()
    cin, i = 3, 0
    for j, v in enumerate(VGG16_CFG):
        if v == "M":
            continue
        cout = max(1, int(round(v * scale)))
        pool = j + 1 < len(VGG16_CFG) and VGG16_CFG[j + 1] == "M"
        i += 1
        blocks[f"conv{i}"] = _conv_bn_relu(cin, cout, bn, pool=pool)
        cin = cout
    feat = cin * (image_size // 32) ** 2
    hidden = max(1, int(round(512 * scale)))
    blocks["fc1"] = _linear_relu(feat, hidden, flatten=True)
    blocks["fc2"] = _linear_relu(hidden, hidden)
    blocks["logits"] = nn.Linear(hidden, num_classes)
    return BlockNet(blocks, "vgg16")


def alexnet(width: int, num_classes: int, bn: bool = True, image_size: int = 32) -> BlockNet:
    """AlexNet in CIFAR form: 5 conv blocks (64, 192, 384, 256, 256 channels at width 64), 3 FC."""
    s = width / 64
    c = [max(1, int(round(v * s))) for v in (64, 192, 384, 256, 256)]
    blocks = OrderedDict([
        ("conv1", _conv_bn_relu(3, c[0], bn, pool=True)),
        ("conv2", _conv_bn_relu(c[0], c[1], bn, pool=True)),
        ("conv3", _conv_bn_relu(c[1], c[2], bn)),
        ("conv4", _conv_bn_relu(c[2], c[3], bn)),
        ("conv5", _conv_bn_relu(c[3], c[4], bn, pool=True)),
    ])
    spatial = image_size // 8
    hidden = max(1, int(round(1024 * s)))
    blocks["fc1"] = _linear_relu(c[4] * spatial * spatial, hidden, flatten=True)
    blocks["fc2"] = _linear_relu(hidden, hidden)
    blocks["logits"] = nn.Linear(hidden, num_classes)
    return BlockNet(blocks, "alexnet")


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride, bn):
        super().__init__()
        norm = (lambda c: nn.BatchNorm2d(c)) if bn else (lambda c: nn.Identity())
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=not bn)
        self.bn1 = norm(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=not bn)
        self.bn2 = norm(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=not bn), norm(cout))

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


def resnet18(width: int, num_classes: int, bn: bool = True, image_size: int = 32) -> BlockNet:
    """ResNet-18 for small images with stage widths (k, 2k, 4k, 8k), k = width (64 is standard),
    as in Nakkiran et al.'s double-descent sweep. Layers: stem, the 8 residual blocks, logits."""
    k = width
    blocks = OrderedDict([("stem", _conv_bn_relu(3, k, bn))])
    cin = k
    for stage, mult in enumerate((1, 2, 4, 8)):
        for b in range(2):
            stride = 2 if (stage > 0 and b == 0) else 1
            blocks[f"res{stage + 1}.{b + 1}".replace(".", "_")] = BasicBlock(cin, k * mult, stride, bn)
            cin = k * mult
    blocks["logits"] = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes))
    return BlockNet(blocks, "resnet18")


BUILDERS = {"smallcnn": small_cnn, "vgg16": vgg16, "alexnet": alexnet, "resnet18": resnet18}
IMAGE_SIZE = {"cifar10": 32, "cifar100": 32, "tinyimagenet": 64}
NUM_CLASSES = {"cifar10": 10, "cifar100": 100, "tinyimagenet": 200}


def build_model(cfg: RunConfig, num_classes: int | None = None) -> BlockNet:
    """The model a run config names, initialised from the config's seed (same seed, same weights)."""
    if cfg.model not in BUILDERS:
        raise ConfigError(f"unknown model {cfg.model!r}: choose one of {', '.join(BUILDERS)}")
    from .data import derived_seed
    nc = num_classes or NUM_CLASSES[cfg.dataset]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derived_seed(cfg.seed, "init"))
        model = BUILDERS[cfg.model](cfg.width, nc, cfg.batchnorm, IMAGE_SIZE[cfg.dataset])
    model.precision = cfg.resolved().precision
    return model
