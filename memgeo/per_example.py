"""Per-example gradients of a network and the gradient sums of many subsets of examples in one
pass: the primitives of the gradient analysis (`memgeo.gradients`).

Per-example gradients come from `torch.func` (functional_call + vmap + grad) in **eval mode**:
BatchNorm uses its running statistics, so every example's gradient depends on that example alone
(in train mode BatchNorm couples the examples of a batch). `subset_gradient_sums` takes a function
returning per-example gradients of a pool of examples and a membership matrix (subsets x pool), and
accumulates, chunk by chunk, every subset's gradient sum and sum of squared per-example norms, per
layer (parameters grouped by `BlockNet.block_of`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .data import LabelledData
from .models import BlockNet

ALL = "all"   # pseudo-layer: every parameter of the network together

GradFn = Callable[[np.ndarray], "dict[str, torch.Tensor]"]



def layer_parameters(model: BlockNet) -> "dict[str, list[str]]":
    """Trainable parameter names grouped by the layer that owns them, in layer order."""
    out: dict[str, list[str]] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            out.setdefault(model.block_of(name), []).append(name)
    return out


def functional_state(model: BlockNet):
    """(parameter names per layer, detached parameters, detached buffers) for a torch.func call of
    `model` in eval mode (train-mode BatchNorm would couple the examples of a batch)."""
    if model.training:
        raise ValueError("per-example gradients need the model in eval mode (call model.eval()): "
                         "train-mode BatchNorm couples the examples of a batch")
    params = {k: v.detach() for k, v in model.named_parameters() if v.requires_grad}
    buffers = {k: v.detach() for k, v in model.named_buffers()}
    return layer_parameters(model), params, buffers


def per_example_gradients(model: BlockNet, x: torch.Tensor, y: torch.Tensor) -> "dict[str, torch.Tensor]":
    """Per-example gradients of the cross-entropy of (x, y), flattened per layer: {layer: (B, P_layer)}.

    Eval mode (BatchNorm on running statistics) through torch.func; `x` is a float, normalised batch.
    """
    from torch.func import functional_call, grad, vmap

    groups, params, buffers = functional_state(model)

    def loss_one(p, b, xi, yi):
        return F.cross_entropy(functional_call(model, (p, b), (xi[None],)), yi[None])

    g = vmap(grad(loss_one), in_dims=(None, None, 0, 0))(params, buffers, x, y)
    n = x.shape[0]
    return {layer: torch.cat([g[k].reshape(n, -1) for k in names], dim=1) for layer, names in groups.items()}


def model_grad_fn(model: BlockNet, data: LabelledData, batch_size: int = 64, num_threads: int = 0) -> GradFn:
    """Per-example gradient function over the training subset (indices -> {layer: (B, P)}),
    against the training labels, in eval mode and contiguous memory format.

    `num_threads` > 0 sets torch's CPU threads during each call (restored after): the vmapped
    per-example convolutions are small and scale poorly over threads, and on a shared CPU one
    thread was 2-8x faster per example than two (4.9 ms against 10-40 ms on the cpu preset's model).
    """
    model = model.to(memory_format=torch.contiguous_format).eval()
    first = next(model.parameters())
    dev, dtype = first.device, first.dtype

    def fn(idx: np.ndarray) -> "dict[str, torch.Tensor]":
        t = torch.as_tensor(idx, device=data.x_train.device)
        x = data.normalise(data.x_train[t], dtype=dtype).to(dev).contiguous()
        if num_threads <= 0 or dev.type != "cpu":
            return per_example_gradients(model, x, data.train_label[t].to(dev))
        before = torch.get_num_threads()
        torch.set_num_threads(num_threads)
        try:
            return per_example_gradients(model, x, data.train_label[t].to(dev))
        finally:
            torch.set_num_threads(before)

    fn.batch_size = batch_size
    return fn


@dataclass
class SubsetSums:
    """Per layer: `sums[layer]` (S, P) gradient sum of every subset, `sq[layer]` (S,) sum of
    squared per-example norms; `counts` (S,) subset sizes."""

    sums: "dict[str, torch.Tensor]"
    sq: "dict[str, torch.Tensor]"
    counts: np.ndarray

    @property
    def layers(self) -> list[str]:
        return list(self.sums)

    def gram(self) -> "dict[str, np.ndarray]":
        """Per layer (and "all"): the (S, S) matrix of dot products between subset sums."""
        out = {k: (v.double() @ v.double().T).cpu().numpy() for k, v in self.sums.items()}
        out[ALL] = sum(out.values())
        return out

    def sq_all(self) -> "dict[str, np.ndarray]":
        out = {k: v.double().cpu().numpy() for k, v in self.sq.items()}
        out[ALL] = sum(out.values())
        return out


def subset_gradient_sums(grad_fn: GradFn, pool: np.ndarray, membership: np.ndarray,
                         batch_size: int | None = None) -> SubsetSums:
    """Gradient sums of many subsets of a pool in one pass over its per-example gradients.

    `pool` (N,) indices passed to `grad_fn`; `membership` (S, N) 0/1: subset s holds pool[j] when
    membership[s, j]. Only pool examples in at least one subset are evaluated, `batch_size` at a time.
    """
    pool = np.asarray(pool)
    member = np.asarray(membership, dtype=np.float64)
    if member.ndim != 2 or member.shape[1] != len(pool):
        raise ValueError(f"membership must be (subsets, {len(pool)}), got {member.shape}")
    used = np.flatnonzero(member.any(0))
    bs = batch_size or getattr(grad_fn, "batch_size", 64)
    sums: dict[str, torch.Tensor] = {}
    sq: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for start in range(0, len(used), bs):
            cols = used[start:start + bs]
            g = grad_fn(pool[cols])
            for layer, gl in g.items():
                m = torch.as_tensor(member[:, cols], dtype=gl.dtype, device=gl.device)
                s, q = m @ gl, m @ gl.pow(2).sum(1)
                if layer in sums:
                    sums[layer] += s
                    sq[layer] += q
                else:
                    sums[layer], sq[layer] = s, q
    if not sums:
        raise ValueError("every subset is empty")
    return SubsetSums(sums, sq, member.sum(1).astype(int))


def coherence(per_example: torch.Tensor) -> float:
    """||sum_i g_i||^2 / (n sum_i ||g_i||^2) of an (n, P) stack: 1 identical, 1/n orthogonal."""
    g = per_example.double()
    return float(g.sum(0).pow(2).sum() / (len(g) * g.pow(2).sum()))
