"""What a run costs: training FLOPs per image, measured throughput, time per run.

For planning a scale no machine at hand can run (the `paper` preset on a GPU), the time per run is
estimated from FLOPs: counted exactly for one forward pass of the model (training ~ 3x forward:
the backward pass costs about twice the forward), then divided by a sustained rate that is an
assumption and is always stated next to the estimate.
"""
from __future__ import annotations

import time
from dataclasses import replace

import torch
import torch.nn.functional as F

from .config import RunConfig
from .models import IMAGE_SIZE, NUM_CLASSES, build_model

TRAIN_FLOPS_PER_FORWARD = 3.0


def images_per_epoch(cfg: RunConfig) -> int:
    """Training images per epoch (the full training split when train_per_class = 0)."""
    full = {"cifar10": 50_000, "cifar100": 50_000, "tinyimagenet": 100_000}[cfg.dataset]
    return full if cfg.train_per_class == 0 else min(full, cfg.train_per_class * NUM_CLASSES[cfg.dataset])


def forward_flops_per_image(cfg: RunConfig) -> float:
    """FLOPs of one forward pass of one image (multiply-adds count 2), counted by torch."""
    from torch.utils.flop_counter import FlopCounterMode
    model = build_model(replace(cfg, precision="fp32")).eval()
    size = IMAGE_SIZE[cfg.dataset]
    x = torch.zeros(1, 3, size, size)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return float(counter.get_total_flops())


def measure_step_seconds(cfg: RunConfig, batch: int = 16, steps: int = 2) -> float:
    """Median seconds of one training step (forward, backward, SGD) of `cfg`'s model on random data
    on this CPU, in `cfg`'s precision and the memory format memgeo trains in; one warm-up step
    (oneDNN builds its kernels) is not timed."""
    model = build_model(cfg).place("cpu")
    size = IMAGE_SIZE[cfg.dataset]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        x = torch.randn(batch, 3, size, size).contiguous(memory_format=model.memory_format)
        y = torch.randint(0, NUM_CLASSES[cfg.dataset], (batch,))
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    times = []
    for i in range(steps + 1):
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=model.precision == "bf16"):
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i:
            times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def measure_images_per_second(cfg: RunConfig, batch: int = 16, steps: int = 2) -> float:
    """Training images per second of `cfg`'s model on this CPU in fp32 (`measure_step_seconds`)."""
    return batch / measure_step_seconds(replace(cfg, precision="fp32"), batch, steps)


def run_cost(cfg: RunConfig, measure: bool = True, gpu_tflops: tuple[float, float] = (50.0, 200.0)) -> dict:
    """Images, FLOPs and time of training `cfg` once: measured on this CPU (extrapolated from a few
    steps) and estimated for a GPU sustaining `gpu_tflops` (an assumption, low and high)."""
    fwd = forward_flops_per_image(cfg)
    images = images_per_epoch(cfg) * cfg.epochs
    total = fwd * TRAIN_FLOPS_PER_FORWARD * images
    out = {"model": cfg.model, "width": cfg.width, "dataset": cfg.dataset, "epochs": cfg.epochs,
           "images": images, "train_gflops_per_image": fwd * TRAIN_FLOPS_PER_FORWARD / 1e9,
           "total_pflops": total / 1e15,
           "gpu_hours_low": total / (gpu_tflops[1] * 1e12) / 3600,
           "gpu_hours_high": total / (gpu_tflops[0] * 1e12) / 3600}
    if measure:
        ips = measure_images_per_second(cfg)
        out.update(cpu_images_per_s=ips, cpu_tflops=ips * fwd * TRAIN_FLOPS_PER_FORWARD / 1e12,
                   cpu_hours=images / ips / 3600)
    return out


def preset_cost_table(p, gpu_tflops: tuple[float, float] = (20.0, 100.0), widths=(8, 64)):
    """Cost of a preset's runs (for the reproducibility page): its main run, its sweep's run at
    `widths`, and the whole sweep; CPU time measured here for the main run and the first width."""
    import pandas as pd
    planned = {f"{p.run.model} main run": p.run}
    for k in widths:
        planned[f"{p.sweep.run.model} sweep, width {k}"] = replace(p.sweep.run, width=k)
    rows = {}
    for i, (name, cfg) in enumerate(planned.items()):
        c = run_cost(cfg, measure=i < 2, gpu_tflops=gpu_tflops)
        rows[name] = {"dataset": cfg.dataset, "epochs": cfg.epochs, "training images": f"{c['images']:,}",
                      "GFLOP per training image": round(c["train_gflops_per_image"], 2),
                      "GPU hours (estimate)": f"{c['gpu_hours_low']:.2g} to {c['gpu_hours_high']:.2g}",
                      "CPU hours here (extrapolated)": f"{c['cpu_hours']:,.0f}" if "cpu_hours" in c else "-"}
    sweep = [run_cost(replace(p.sweep.run, width=w), measure=False, gpu_tflops=gpu_tflops) for w in p.sweep.widths]
    rows[f"whole {p.sweep.run.model} sweep ({len(sweep)} widths)"] = {
        "dataset": p.sweep.run.dataset, "epochs": p.sweep.run.epochs,
        "training images": f"{sum(c['images'] for c in sweep):,}", "GFLOP per training image": "-",
        "GPU hours (estimate)": f"{sum(c['gpu_hours_low'] for c in sweep):.2g} to "
                                f"{sum(c['gpu_hours_high'] for c in sweep):.2g}",
        "CPU hours here (extrapolated)": "-"}
    return pd.DataFrame(rows).T.rename_axis(f"{p.name} preset")
