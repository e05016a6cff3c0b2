"""The numeric format a run trains in: "fp32", "bf16", or "auto" (decided on the machine at hand).

bf16 autocast is the fast path on GPUs and on CPUs with native bfloat16 (AVX512-BF16, AMX), but
on a CPU without it (most laptops, AVX2-only servers) oneDNN emulates bf16 and training is about
10x slower than fp32. "auto" therefore picks:
  - a CUDA device: bf16 where the GPU supports it, else fp32;
  - a CPU without native bf16: fp32;
  - a CPU with native bf16: bf16 only when a short measurement (a training step of a small CNN,
    both formats) finds it faster by `AUTO_MIN_SPEEDUP`; the decision is kept in
    `<runs>/.memgeo-precision.json` so every process on the machine decides alike.
`MEMGEO_AUTO_PRECISION=fp32|bf16` overrides the decision (e.g. a cluster whose login node differs
from its compute nodes). A run's folder hash is computed from the resolved format, so the folder
records what was actually used.
"""
from __future__ import annotations

import json
import os
import platform
from pathlib import Path

CONCRETE = ("bf16", "fp32")
AUTO_MIN_SPEEDUP = 1.15     # bf16 must beat fp32 by this factor to be chosen on a CPU
ENV_FORCE = "MEMGEO_AUTO_PRECISION"

_decided: dict[str, str] = {}


def native_bf16_cpu() -> bool:
    """Whether this CPU computes bfloat16 natively (oneDNN's own check: AVX512-BF16 or AMX)."""
    import torch
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def device_kind(device: str) -> str:
    """"cuda" or "cpu": where a run with this device setting ("auto", "cpu", "cuda[:N]") trains."""
    if device == "auto":
        import torch
        return "cuda" if torch.cuda.is_available() else "cpu"
    return "cuda" if device.startswith("cuda") else "cpu"


def resolve_precision(precision: str, device: str = "auto") -> str:
    """The concrete format ("bf16" or "fp32") that `precision` means for a run on `device`."""
    if precision in CONCRETE:
        return precision
    if precision != "auto":
        raise ValueError(f"precision={precision!r}: use auto, bf16 or fp32")
    forced = os.environ.get(ENV_FORCE, "").strip()
    if forced:
        if forced not in CONCRETE:
            raise ValueError(f"{ENV_FORCE}={forced!r}: set it to bf16 or fp32 (or unset it)")
        return forced
    kind = device_kind(device)
    if kind not in _decided:
        _decided[kind] = _decide_cuda() if kind == "cuda" else _decide_cpu()
    return _decided[kind]


def _decide_cuda() -> str:
    import torch
    return "bf16" if torch.cuda.is_bf16_supported() else "fp32"


def _cpu_key() -> str:
    import torch
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            name = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), name)
    except OSError:
        pass
    return f"{name} | torch {torch.__version__} | {torch.get_num_threads()} threads"


def _decide_cpu() -> str:
    if not native_bf16_cpu():
        return "fp32"
    from .paths import runs_dir
    store = Path(runs_dir()) / ".memgeo-precision.json"
    key = _cpu_key()
    try:
        known = json.loads(store.read_text())
    except (OSError, ValueError):
        known = {}
    if key in known and known[key].get("choice") in CONCRETE:
        return known[key]["choice"]
    fp32, bf16 = measure_step_time("fp32"), measure_step_time("bf16")
    choice = "bf16" if fp32 / bf16 >= AUTO_MIN_SPEEDUP else "fp32"
    known[key] = {"choice": choice, "fp32_s": fp32, "bf16_s": bf16}
    try:
        store.parent.mkdir(parents=True, exist_ok=True)
        tmp = store.with_name(f".{store.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(known, indent=2))
        os.replace(tmp, store)
    except OSError:
        pass   # a read-only runs folder: the decision is measured again next time
    return choice


def measure_step_time(precision: str, width: int = 16, batch: int = 128, steps: int = 6) -> float:
    """Median seconds of one training step of the small CNN on CIFAR-sized random data in
    `precision` on the CPU (`memgeo.cost.measure_step_seconds`)."""
    from .config import RunConfig
    from .cost import measure_step_seconds
    return measure_step_seconds(RunConfig(width=width, precision=precision, device="cpu"), batch, steps)
