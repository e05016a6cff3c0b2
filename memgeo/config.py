"""Every setting in one place: frozen, hashable configurations and the three presets (smoke, cpu,
paper).

- `RunConfig`: a training run. A run is a pure function of its config: the folder that holds its
  results is named by `RunConfig.hash()`, so asking twice for the same config reuses the folder.
- `ProbeConfig`: the manifold analysis (layers section); `SweepConfig`: the width sweep (double
  descent); `GradientConfig`: the gradient analysis; `RewindConfig`: layer rewinding;
  `ChecksConfig`: the methods page's checks against exact results.
- `Thresholds`: every threshold a verdict uses (`memgeo.verdicts` applies them).
- `Preset`: one of each, defined once per preset in `_presets`; `configure` applies overrides.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import numbers
from dataclasses import dataclass, field, fields, replace
from typing import Any, Mapping

DATASETS = ("cifar10", "cifar100", "tinyimagenet")
MODELS = ("smallcnn", "vgg16", "alexnet", "resnet18")
OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("constant", "cosine", "step")
PRESETS = ("smoke", "cpu", "paper")
PRECISIONS = ("auto", "bf16", "fp32")
EVALUATE = ("every", "checkpoints")


class ConfigError(ValueError):
    """A parameter has a value memgeo cannot use; the message names it and the fix."""


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"unknown {name} {value!r}: choose one of {', '.join(allowed)}")


@dataclass(frozen=True)
class RunConfig:
    """Everything that decides a training run's result (the device is recorded but not hashed)."""

    dataset: str = "cifar10"
    # The offline JPEG-recompressed CIFAR-10 copy fails torchvision's md5 check; it is read only
    # when this is set explicitly (its pixels differ from the official files).
    unverified_local_copy: bool = False
    train_per_class: int = 500      # 0 = every training example
    test_per_class: int = 100       # 0 = the whole test (or validation) split
    # Held out from the training pool (disjoint from the training subset, never trained on); the
    # early-stopping epoch is chosen on it. 0: no validation split, early stopping on the test
    # set (what the paper's figures do; it makes the peak the maximum of many noisy evaluations).
    val_per_class: int = 0
    eps: float = 0.5                # fraction of training examples whose labels are permuted
    model: str = "smallcnn"
    width: int = 32                 # base channel count (ResNet-18: k in (k, 2k, 4k, 8k))
    batchnorm: bool = True
    # "fp32": everything in float32 (exact, the same numbers on every CPU); "bf16": convolutions
    # and linear layers in bfloat16 under autocast, weights, BatchNorm and loss in float32 (the
    # fast path on GPUs and on CPUs with AVX512-BF16/AMX, ~10x slower on CPUs without);
    # "auto": decided on the machine (memgeo.precision); the run's hash records the choice.
    precision: str = "auto"
    optimizer: str = "sgd"
    lr: float = 0.02
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "constant"
    epochs: int = 40
    batch_size: int = 128
    augment: bool = False           # flip + pad-crop; off: the paper's setting wants memorization
    seed: int = 0
    checkpoints: str = "log"        # "log" (log-spaced), "all", or explicit "0,5,10"
    # "every": accuracies after every epoch; "checkpoints": only at the kept epochs (a width
    # sweep needs the end point, not the curve, and evaluation is a quarter of an epoch's time).
    evaluate: str = "every"
    device: str = "auto"            # "auto" (cuda if present), "cpu", "cuda"

    def __post_init__(self) -> None:
        _coerce_fields(self)
        _choice("dataset", self.dataset, DATASETS)
        _choice("model", self.model, MODELS)
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("schedule", self.schedule, SCHEDULES)
        _choice("precision", self.precision, PRECISIONS)
        _choice("evaluate", self.evaluate, EVALUATE)
        if not (0.0 <= self.eps <= 1.0):
            raise ConfigError(f"eps={self.eps} is outside [0, 1]: it is the fraction of permuted labels")
        for name in ("width", "epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)} must be a positive integer")
        for name in ("train_per_class", "test_per_class", "val_per_class"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}={getattr(self, name)} must be >= 0 (0 means all examples)")
        if not self.lr > 0:
            raise ConfigError(f"lr={self.lr} must be > 0")
        if self.unverified_local_copy and self.dataset != "cifar10":
            raise ConfigError("unverified_local_copy applies only to the offline CIFAR-10 copy; "
                              f"dataset={self.dataset!r} is always read through its checksummed loader")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ConfigError(f"device={self.device!r}: use auto, cpu, cuda or cuda:N")
        self.checkpoint_epochs()  # validates the checkpoints field

    def checkpoint_epochs(self) -> tuple[int, ...]:
        """Epochs whose weights are kept (always 0 and the last); the early-stopping (best validation or test) epoch is kept too."""
        spec = self.checkpoints
        if spec == "all":
            epochs = set(range(self.epochs + 1))
        elif spec == "log":
            epochs, e = {0, 1}, 1.0
            while e < self.epochs:
                e *= 1.5
                epochs.add(min(self.epochs, round(e)))
        else:
            try:
                epochs = {int(s) for s in spec.split(",") if s.strip()}
            except ValueError:
                raise ConfigError(f"checkpoints={spec!r}: use 'all', 'log' or comma-separated epochs") from None
            bad = [e for e in epochs if not 0 <= e <= self.epochs]
            if bad:
                raise ConfigError(f"checkpoints={spec!r}: epochs {bad} are outside 0..{self.epochs}")
        return tuple(sorted(epochs | {0, self.epochs}))

    def resolved(self) -> "RunConfig":
        """This config with precision="auto" replaced by the format it trains in on this machine."""
        if self.precision != "auto":
            return self
        from .precision import resolve_precision
        return replace(self, precision=resolve_precision(self.precision, self.device))

    def hash(self) -> str:
        """Short content hash of every result-deciding field (device excluded; precision as
        resolved, so "auto" and the format it chose name the same run)."""
        d = dataclasses.asdict(self.resolved())
        d.pop("device")
        blob = json.dumps(d, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "RunConfig":
        return apply_overrides(cls(), d)


@dataclass(frozen=True)
class ProbeConfig:
    """Manifold analysis of a run's layers (the layer-memorization section)."""

    P: int = 10                 # manifolds (classes) per type
    M: int = 50                 # examples per manifold
    n_t: int = 200              # Gaussian t-vectors per manifold
    kappa: float = 0.0
    proj_dim: int = 5000        # random Gaussian projection when a layer is wider
    epochs: str = "auto"        # "auto": init, early stop, end and a few between; or "0,5,40"
    max_epochs: int = 8         # how many epochs "auto" picks
    sim_dichotomies: int = 60   # random dichotomies in the simulated-capacity check (Fig. 1B)
    sim_epochs: str = "auto"    # epochs whose layers get simulated capacity ("auto": init, early, end)
    # Whole center-subspace searches per analysis, the lowest residual correlation kept (as the
    # reference's n_reps); the default is geometry.centers.CENTER_SEARCHES (why: see there).
    center_searches: int = 5

    def __post_init__(self) -> None:
        _coerce_fields(self)
        if self.P < 2:
            raise ConfigError(f"P={self.P}: the analysis needs at least 2 manifolds")
        if self.M < 2:
            raise ConfigError(f"M={self.M}: each manifold needs at least 2 examples")
        if self.n_t < 1:
            raise ConfigError(f"n_t={self.n_t} must be >= 1")
        if self.center_searches < 1:
            raise ConfigError(f"center_searches={self.center_searches}: need at least one center search")


@dataclass(frozen=True)
class SweepConfig:
    """Width sweep for double descent: one ordinary run per width."""

    widths: tuple[int, ...] = (1, 2, 3, 4, 6, 8, 12, 16)
    run: RunConfig = field(default_factory=RunConfig)
    analysis_M: int = 30

    def __post_init__(self) -> None:
        _coerce_fields(self)
        if len(self.widths) < 1 or min(self.widths) < 1:
            raise ConfigError(f"widths={self.widths}: give one or more positive widths")


@dataclass(frozen=True)
class GradientConfig:
    """The gradient analysis (the gradients section): the epoch table and the scaling test."""

    n_examples: int = 1024          # fixed random sample of the training subset (0 = all of it)
    epochs: str = "auto"            # "auto" (init, log-spaced, early stop, end) or "0,5,40"
    max_epochs: int = 9             # how many epochs "auto" picks (early stop and end included)
    sizes: tuple[int, ...] = (16, 32, 64, 128, 256, 512)   # n for the scaling test
    repeats: int = 4                # random nested subsets per group in the scaling test
    pool_factor: int = 2            # scaling pool per group = pool_factor * max(sizes)
    scaling_epoch: int = 0          # the checkpoint the scaling test uses (0 = initialisation)
    balanced: bool = True           # scaling subsets balanced over training labels (within one)
    seed: int = 0
    batch_size: int = 64            # examples per vmap call (memory only; not in the cache key)
    num_threads: int = 1            # CPU threads for per-example gradients (0: torch's setting; not in the key)

    def __post_init__(self) -> None:
        _coerce_fields(self)
        if self.n_examples < 0:
            raise ConfigError(f"n_examples={self.n_examples} must be >= 0 (0 means the whole training subset)")
        if not self.sizes or min(self.sizes) < 1:
            raise ConfigError(f"sizes={self.sizes}: give positive subset sizes")
        if self.repeats < 1 or self.pool_factor < 1 or self.batch_size < 1 or self.max_epochs < 2:
            raise ConfigError("repeats, pool_factor and batch_size must be >= 1 and max_epochs >= 2")
        if self.num_threads < 0:
            raise ConfigError(f"num_threads={self.num_threads} must be >= 0 (0 keeps torch's setting)")


@dataclass(frozen=True)
class RewindConfig:
    """Layer rewinding (the rewinding section; its figures rewind BatchNorm with its layer, and it
    compares recomputed statistics at the early-stopping epoch)."""

    n_epochs: int = 8               # how many saved epochs to rewind to (see rewind.default_epochs)
    batch_size: int = 128           # evaluation batch (memory only; not in the cache key)

    def __post_init__(self) -> None:
        _coerce_fields(self)
        if self.n_epochs < 1 or self.batch_size < 1:
            raise ConfigError("n_epochs and batch_size must be >= 1")


@dataclass(frozen=True)
class ChecksConfig:
    """The methods page's checks of the geometry against exact results (synthetic data)."""

    n_t: int = 20000                # t-vectors per check: the capacity's relative MC error is ~1/sqrt(n_t / 8)
    n_dichotomies: int = 40         # random dichotomies per simulated capacity

    def __post_init__(self) -> None:
        _coerce_fields(self)
        if self.n_t < 4 or self.n_dichotomies < 1:
            raise ConfigError("n_t must be >= 4 and n_dichotomies >= 1")


@dataclass(frozen=True)
class Thresholds:
    """Every threshold a claim uses, in one place (`memgeo.claims` applies them to 95 % intervals
    over training seeds; the book states each next to its verdict)."""

    change: float = 0.10            # layer claims: a ratio counts as a rise (fall) above 1 + change (below 1 - change)
    fitted_gap: float = 0.2         # claim 1: unpermuted fitted this much better than permuted memorized at early stop
    recovered: float = 0.5          # rewinding: "most" of the gap recovered; Maini: "half" the memorization removed
    interpolation_tol: float = 0.01 # double descent: mean train error that counts as fitting the noisy set
    peak_sigmas: float = 2.0        # double descent (one seed's peak report): standard errors a peak must exceed
    gradient_small: float = 0.5     # claim 5: permuted / unpermuted label-gradient ratio at initialisation called small below this
    gradient_growth: float = 1.5    # claim 5: growth from the learning to the memorization phase
    gradient_slope_tol: float = 0.15  # claim 5: the permuted group's scaling slope within this of -1/2
    memorized: float = 0.99         # permuted examples fitted to this: the memorization phase is over
    simulated_close: float = 0.15   # Fig. 1B: median |relative deviation| beyond the finite-P control's


@dataclass(frozen=True)
class Preset:
    name: str
    run: RunConfig
    probe: ProbeConfig
    sweep: SweepConfig
    gradients: GradientConfig = field(default_factory=GradientConfig)
    rewind: RewindConfig = field(default_factory=RewindConfig)
    checks: ChecksConfig = field(default_factory=ChecksConfig)
    thresholds: Thresholds = field(default_factory=Thresholds)
    # Training seeds every verdict is replicated over (each trains the main run and the width
    # sweep again, with its own data subset, label permutation, initialisation and manifold draws).
    seeds: tuple[int, ...] = (0,)

    def __post_init__(self) -> None:
        _coerce_fields(self)
        if not self.seeds or len(set(self.seeds)) != len(self.seeds) or min(self.seeds) < 0:
            raise ConfigError(f"seeds={self.seeds}: give distinct non-negative training seeds, e.g. 0,1,2")

    def for_seed(self, seed: int) -> "Preset":
        """This preset with every training run, and the analyses' own draws, at training seed `seed`."""
        return replace(self, run=replace(self.run, seed=seed),
                       sweep=replace(self.sweep, run=replace(self.sweep.run, seed=seed)),
                       gradients=replace(self.gradients, seed=seed))

    def replicas(self) -> list["Preset"]:
        """One preset per training seed of `seeds`, in order."""
        return [self.for_seed(s) for s in self.seeds]


def _is_bool(v: Any) -> bool:
    return isinstance(v, bool) or getattr(getattr(v, "dtype", None), "kind", None) == "b"


def _to_int(v: Any) -> int:
    if _is_bool(v):
        raise ValueError
    if isinstance(v, numbers.Integral):
        return int(v)
    if isinstance(v, str):
        try:
            return int(v.strip())
        except ValueError:
            v = float(v.strip())        # "3.0" and "1e3" are integers; "2.5" is not
    if isinstance(v, numbers.Real) and math.isfinite(v) and float(v).is_integer():
        return int(v)
    raise ValueError


def _to_float(v: Any) -> float:
    if _is_bool(v):
        raise ValueError
    if isinstance(v, numbers.Real):
        return float(v)
    if isinstance(v, str):
        return float(v.strip())
    raise ValueError


def _to_bool(v: Any) -> bool:
    if _is_bool(v):
        return bool(v)
    if isinstance(v, numbers.Integral) and int(v) in (0, 1):
        return bool(v)
    if isinstance(v, str):
        if v.strip().lower() in ("1", "true", "yes", "on"):
            return True
        if v.strip().lower() in ("0", "false", "no", "off"):
            return False
    raise ValueError


def _to_str(v: Any) -> str:
    if isinstance(v, str):
        return v
    if isinstance(v, numbers.Integral) and not _is_bool(v):
        return str(int(v))                             # checkpoints=5 (papermill -p)
    if isinstance(v, (list, tuple)):
        return ",".join(str(_to_int(x)) for x in v)     # checkpoints=[0, 5, 10]
    raise ValueError


def _to_int_tuple(v: Any) -> tuple[int, ...]:
    if isinstance(v, (list, tuple)):
        return tuple(_to_int(x) for x in v)
    if isinstance(v, str):
        s = v.strip()
        if s[:1] + s[-1:] in ("[]", "()"):
            s = s[1:-1]
        return tuple(_to_int(x) for x in s.split(",") if x.strip())
    return (_to_int(v),)


def _to_run_config(v: Any) -> "RunConfig":
    if isinstance(v, RunConfig):
        return v
    if isinstance(v, Mapping):
        return RunConfig.from_dict(v)
    raise ValueError


# A field's declared type (a string: annotations are postponed) -> (converter, what it expects).
_COERCE = {
    "int": (_to_int, "an int"),
    "float": (_to_float, "a float"),
    "bool": (_to_bool, "a bool (true/false, yes/no, on/off or 1/0)"),
    "str": (_to_str, "a str"),
    "tuple[int, ...]": (_to_int_tuple, "a tuple of ints, e.g. 1,2,4"),
    "RunConfig": (_to_run_config, "a RunConfig or a mapping of its fields"),
}


def _coerce(value: Any, ftype: str, key: str) -> Any:
    """`value` as the field's type (an int for a float field is a float; a float with a
    fraction for an int field, or any other mismatch, is a ConfigError naming the key)."""
    if ftype not in _COERCE:
        return value
    convert, expected = _COERCE[ftype]
    try:
        out = convert(value)
    except (ValueError, TypeError, OverflowError):
        raise ConfigError(f"{key}={value!r}: expected {expected}") from None
    if isinstance(out, float) and not math.isfinite(out):
        raise ConfigError(f"{key}={value!r}: expected a finite float")
    return out


def _coerce_fields(obj: Any) -> None:
    """Coerce every field of a frozen config dataclass in place (from __post_init__), so that
    `RunConfig(eps=1)` is `RunConfig(eps=1.0)`, with the same hash."""
    for f in fields(obj):
        value = getattr(obj, f.name)
        out = _coerce(value, f.type, f.name)
        if out is not value:
            object.__setattr__(obj, f.name, out)


def apply_overrides(obj: Any, overrides: Mapping[str, Any]):
    """Return a copy of a config dataclass with fields replaced; unknown keys are an error."""
    types = {f.name: f.type for f in fields(obj)}
    unknown = sorted(set(overrides) - set(types))
    if unknown:
        raise ConfigError(f"unknown config key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(types))}")
    return replace(obj, **{k: _coerce(v, types[k], k) for k, v in overrides.items()})


def parse_set(items: list[str] | tuple[str, ...]) -> dict[str, str]:
    """Parse ["key=value", ...] from the command line."""
    out = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: write key=value, e.g. --set eps=0.3")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def _presets() -> dict[str, Preset]:
    # The sections rewind to and analyse arbitrary epochs of the main runs: keep every epoch.
    # smoke and cpu train in fp32: exact, the same numbers on every CPU, and the fast format on
    # CPUs without native bf16 (on an AVX2-only EPYC, bf16 was 11x slower per epoch).
    smoke_run = RunConfig(train_per_class=30, test_per_class=20, val_per_class=10, width=8, epochs=3,
                          batch_size=64, lr=0.05, checkpoints="all", precision="fp32")
    # cpu: sized on these 2 cores so memorization visibly happens (see the layer section). Trial
    # runs (5,000 images, bf16, 60 epochs): with Adam, widths 8-16 fit every permuted label and
    # test accuracy falls 7-11 points below its early peak at eps 0.5-0.6, while a width-32 net's
    # test accuracy recovers after memorizing (epoch-wise double descent; SGD at lr 0.02 with a
    # cosine schedule: 3-4 points, Adam: none). At width 16 and eps 0.5 the fall was 6.8 and 4.7
    # points for seeds 0 and 1; at eps 0.6, 8.4 and 10.6. Width 16 keeps every channel count a
    # multiple of 16, which oneDNN's channels-last BatchNorm needs to be fast (at width 12 it took
    # 40 % of a training step, and the run twice as long).
    # Early stopping is chosen on 1,000 validation images held out of the training pool; the
    # curves use 2,000 test images per epoch and the quoted test accuracies all 10,000
    # (memgeo.heldout).
    cpu_run = RunConfig(train_per_class=500, test_per_class=200, val_per_class=100, eps=0.6, width=16,
                        epochs=60, optimizer="adam", lr=1e-3, schedule="cosine", batch_size=128,
                        checkpoints="all", precision="fp32")
    paper_run = RunConfig(dataset="cifar100", train_per_class=0, test_per_class=0, val_per_class=20, model="vgg16",
                          width=64, epochs=300, lr=0.01, schedule="constant", batch_size=128,
                          checkpoints="log")
    return {
        "smoke": Preset(
            "smoke", smoke_run,
            ProbeConfig(P=4, M=6, n_t=20, proj_dim=500, max_epochs=3, sim_dichotomies=10),
            SweepConfig(widths=(1, 2, 4), analysis_M=3,
                        run=replace(smoke_run, optimizer="adam", lr=1e-3, eps=0.2, epochs=2, train_per_class=40,
                                    checkpoints="log", val_per_class=0, evaluate="checkpoints")),
            GradientConfig(n_examples=200, max_epochs=3, repeats=3, sizes=(10, 20, 40)),
            checks=ChecksConfig(n_t=2000, n_dichotomies=12), seeds=(0, 1, 2)),
        "cpu": Preset(
            "cpu", cpu_run, ProbeConfig(P=10, M=50, n_t=200, proj_dim=5000, max_epochs=6, sim_dichotomies=20),
            # Sweep: 2,500 images so that 3 seeds x 9 widths fit the cpu book's hour; a pilot
            # (seed 0, 80 epochs) fitted every training label at width 8 by epoch 40 and 96 % of
            # the permuted ones at width 4, so the interpolation threshold lies inside the widths.
            SweepConfig(widths=(1, 2, 3, 4, 5, 6, 7, 8, 12),
                        run=replace(cpu_run, optimizer="adam", lr=1e-3, eps=0.2, epochs=80,
                                    train_per_class=250, val_per_class=0, schedule="constant",
                                    checkpoints="log", evaluate="checkpoints", width=1)),
            GradientConfig(n_examples=1000, max_epochs=9, repeats=4, sizes=(20, 40, 80, 160, 320, 640)),
            seeds=(0, 1, 2)),
        "paper": Preset(
            "paper", paper_run, ProbeConfig(P=100, M=50, n_t=300, proj_dim=5000),
            # eps is the fraction of labels shuffled among themselves; a tenth of those draw their
            # own class back, so eps = 1/6 gives the paper's 15 % effective label noise.
            SweepConfig(widths=(1, 2, 3, 4, 5, 6, 7, 8, 12, 16, 24, 32, 48, 64),
                        run=RunConfig(dataset="cifar10", train_per_class=0, test_per_class=0,
                                      model="resnet18", eps=1 / 6, optimizer="adam", lr=1e-4,
                                      epochs=4000, augment=True, checkpoints="log", evaluate="checkpoints")),
            GradientConfig(n_examples=10000, max_epochs=12, repeats=8, sizes=(100, 200, 400, 800, 1600, 3200)),
            seeds=(0, 1, 2)),
    }


def preset(name: str) -> Preset:
    """The named preset: `smoke` (seconds), `cpu` (default, 2 cores), `paper` (a GPU)."""
    _choice("preset", name, PRESETS)
    return _presets()[name]


def configure(name: str, overrides: Mapping[str, Any] | None = None) -> Preset:
    """A preset with overrides applied.

    Keys: a RunConfig field ("eps", "seed", "unverified_local_copy", ...) applies to the main run
    and to the width sweep's runs; "run.X" to the main run only; "probe.X" to the manifold
    analysis; "sweep.X" to the sweep (widths, analysis_M) and "sweep.run.X" to its runs only;
    "gradients.X", "rewind.X", "checks.X" and "thresholds.X" to the gradient analysis, the
    rewinding, the methods page's checks and the verdicts' thresholds; "seeds" to the training
    seeds the verdicts are replicated over (e.g. "0,1,2").
    """
    p = preset(name)
    overrides = dict(overrides or {})
    if "seeds" in overrides:
        p = replace(p, seeds=_coerce(overrides.pop("seeds"), "tuple[int, ...]", "seeds"))
    groups: dict[str, dict[str, Any]] = {g: {} for g in GROUPS}
    for key, value in overrides.items():
        head, _, tail = key.rpartition(".")
        if head not in groups:
            prefixes = [f"{g}." for g in GROUPS if g]
            raise ConfigError(f"unknown config key {key!r}: prefix with nothing, {', '.join(prefixes[:-1])} "
                              f"or {prefixes[-1]}")
        groups[head][tail] = value
    run = apply_overrides(apply_overrides(p.run, groups[""]), groups["run"])
    sweep_run = apply_overrides(apply_overrides(p.sweep.run, groups[""]), groups["sweep.run"])
    sweep = apply_overrides(replace(p.sweep, run=sweep_run), groups["sweep"])
    probe = apply_overrides(p.probe, groups["probe"])
    return replace(p, run=run, sweep=sweep, probe=probe,
                   gradients=apply_overrides(p.gradients, groups["gradients"]),
                   rewind=apply_overrides(p.rewind, groups["rewind"]),
                   checks=apply_overrides(p.checks, groups["checks"]),
                   thresholds=apply_overrides(p.thresholds, groups["thresholds"]))


#: Prefixes of `configure`'s keys ("" = both training runs).
GROUPS = ("", "run", "probe", "sweep", "sweep.run", "gradients", "rewind", "checks", "thresholds")


def config_group(p: Preset, prefix: str):
    """The config a key prefix of `configure` addresses (None for an unknown prefix; "" is the main run)."""
    return {"": p.run, "run": p.run, "probe": p.probe, "sweep": p.sweep, "sweep.run": p.sweep.run,
            "gradients": p.gradients, "rewind": p.rewind, "checks": p.checks,
            "thresholds": p.thresholds}.get(prefix)
