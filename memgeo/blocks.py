"""A fixed model's inputs to each of its blocks, evaluation from a block on, and BatchNorm
statistics re-estimated on the training data: what makes rewinding a layer cost only the blocks from
that layer on (`memgeo.rewind`).

`BlockInputs` keeps the fixed model's inputs to its deepest blocks in memory (within a budget) on
the training and test images, in the batches `train.predict` uses; `evaluate_from` scores a model
whose earlier blocks equal the fixed model's by running only its later blocks (its predictions equal
`train.evaluate`'s, tested); `recompute_from` sets the running statistics of every BatchNorm from a
block on to the exact mean and unbiased variance of its input over the training images.
"""
from __future__ import annotations

import torch
from torch import nn

from .data import LabelledData
from .models import BlockNet
from .train import accuracies, autocast



class _Stop(Exception):
    pass


class BlockInputs:
    """Inputs to each block of a fixed model on the training and test images, in the batches that
    `train.predict` uses. Inputs of the deepest blocks are kept in memory up to `budget_bytes`;
    others are recomputed from the nearest kept block (or the images) when asked for."""

    def __init__(self, model: BlockNet, data: LabelledData, batch_size: int = 128, budget_bytes: int = 0):
        self.model, self.data, self.batch_size = model, data, batch_size
        self.names = list(model.blocks)
        self.device = next(model.parameters()).device
        self.kept: dict[str, dict[str, list[torch.Tensor]]] = {}
        if budget_bytes <= 0:
            return
        sizes = self.bytes_per_example()
        n = len(data.x_train) + len(data.x_test)
        chosen, total = set(), 0
        for name in reversed(self.names):
            if total + sizes[name] * n > budget_bytes:
                break
            chosen.add(name)
            total += sizes[name] * n
        if chosen:
            self.kept = {name: {"train": [], "test": []} for name in chosen}
            for split in ("train", "test"):
                for xb in self._images(split):
                    with torch.no_grad(), autocast(self.model):
                        h = xb
                        for name, block in model.blocks.items():
                            if name in chosen:
                                self.kept[name][split].append(h)
                            h = block(h)

    def _images(self, split: str):
        x = self.data.x_train if split == "train" else self.data.x_test
        for i in range(0, len(x), self.batch_size):
            yield self.data.normalise(x[i:i + self.batch_size].to(self.device)).contiguous(
                memory_format=self.model.memory_format)

    @torch.no_grad()
    def bytes_per_example(self) -> dict[str, int]:
        out = {}
        with autocast(self.model):
            h = next(self._images("test"))[:1]
            for name, block in self.model.blocks.items():
                out[name] = h.element_size() * h.numel()
                h = block(h)
        return out

    def batches(self, layer: str, split: str):
        """Batches of the input to `layer` (as the fixed model computes it)."""
        idx = self.names.index(layer)
        start = max((i for i, n in enumerate(self.names) if n in self.kept and i <= idx), default=None)
        if start is not None:
            src = self.kept[self.names[start]][split]
        else:
            start, src = 0, self._images(split)
        for h in src:
            if start < idx:
                with torch.no_grad(), autocast(self.model):
                    for name in self.names[start:idx]:
                        h = self.model.blocks[name](h)
            yield h


def forward_from(model: BlockNet, layer: str, h: torch.Tensor) -> torch.Tensor:
    """The model's output from the input `h` of block `layer` (its blocks from `layer` on)."""
    names = list(model.blocks)
    for name in names[names.index(layer):]:
        h = model.blocks[name](h)
    return h


def batchnorms(model: BlockNet, layers) -> list[tuple[str, nn.Module]]:
    """(name, module) of every BatchNorm owned by one of `layers`, in registration (forward) order."""
    return [(name, m) for name, m in model.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and model.block_of(name) in layers]


@torch.no_grad()
def recompute_from(model: BlockNet, first: str, inputs: BlockInputs) -> tuple[list[str], list[torch.Tensor]]:
    """Re-estimate every BatchNorm from block `first` on, block by block: the training inputs of a
    block are held in memory, each of its BatchNorms (registration order = forward order in
    memgeo's blocks) gets the exact mean and unbiased variance of its input over them, then the
    block's outputs become the next block's inputs. Returns the names of the BatchNorms and the
    model's outputs on the training batches (the same batches `train.predict` uses)."""
    names = list(model.blocks)
    model.eval()
    hs = list(inputs.batches(first, "train"))
    done = []
    for layer in names[names.index(first):]:
        block = model.blocks[layer]
        for bn_name, bn in batchnorms(model, {layer}):
            acc = {"n": 0, "mean": 0.0, "m2": 0.0}

            def hook(mod, args):
                # Per batch in the activations' precision, combined across batches in float64
                # (Chan et al.'s pairwise update): stable and without a float64 copy of the batch.
                x = args[0].detach().float()
                dims = [d for d in range(x.dim()) if d != 1]
                nb = x.numel() // x.shape[1]
                var_b, mean_b = torch.var_mean(x, dims, correction=0)
                var_b, mean_b = var_b.double(), mean_b.double()
                n = acc["n"]
                delta = mean_b - acc["mean"]
                acc["mean"] = acc["mean"] + delta * (nb / (n + nb))
                acc["m2"] = acc["m2"] + var_b * nb + delta * delta * (n * nb / (n + nb))
                acc["n"] = n + nb
                raise _Stop

            handle = bn.register_forward_pre_hook(hook)
            try:
                for h in hs:
                    try:
                        with autocast(model):
                            block(h)
                    except _Stop:
                        pass
            finally:
                handle.remove()
            n = acc["n"]
            mean, var = acc["mean"], acc["m2"] / max(n - 1, 1)
            bn.running_mean.copy_(mean.to(bn.running_mean.dtype))
            bn.running_var.copy_(var.to(bn.running_var.dtype))
            done.append(bn_name)
        with autocast(model):
            hs = [block(h) for h in hs]
    return done, hs


# ---------------------------------------------------------------------------------------------
# Evaluation from a block on

@torch.no_grad()
def evaluate_from(model: BlockNet, layer: str, inputs: BlockInputs, train_outputs=None) -> dict[str, float]:
    """`train.evaluate` of `model`, given that its blocks before `layer` equal those of the model
    that `inputs` was made from (only the blocks from `layer` on are run). `train_outputs`: the
    model's outputs on the training batches, when already computed."""
    was = model.training
    model.eval()
    preds = {}
    if train_outputs is not None:
        preds["train"] = torch.cat([o.argmax(1) for o in train_outputs]).cpu()
    for split in ("train", "test"):
        if split in preds:
            continue
        out = []
        for h in inputs.batches(layer, split):
            with autocast(model):
                out.append(forward_from(model, layer, h).argmax(1))
        preds[split] = torch.cat(out).cpu()
    model.train(was)
    return accuracies(inputs.data, preds["train"], preds["test"])
