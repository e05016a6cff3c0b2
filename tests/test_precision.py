"""precision="auto": what it resolves to on each kind of machine, and that the run hash records it."""
import json

import pytest

from memgeo import precision as P
from memgeo.config import RunConfig, configure
from memgeo.models import build_model


@pytest.fixture(autouse=True)
def fresh_decisions(monkeypatch, tmp_path):
    monkeypatch.setattr(P, "_decided", {})
    monkeypatch.delenv(P.ENV_FORCE, raising=False)
    monkeypatch.setenv("MEMGEO_RUNS_DIR", str(tmp_path))


def test_concrete_precisions_pass_through():
    assert P.resolve_precision("fp32", "cpu") == "fp32"
    assert P.resolve_precision("bf16", "cpu") == "bf16"
    with pytest.raises(ValueError, match="precision='fp16'"):
        P.resolve_precision("fp16", "cpu")


def test_cpu_without_native_bf16_trains_in_fp32(monkeypatch):
    monkeypatch.setattr(P, "native_bf16_cpu", lambda: False)
    monkeypatch.setattr(P, "measure_step_time", lambda p: pytest.fail("nothing to measure without native bf16"))
    assert P.resolve_precision("auto", "cpu") == "fp32"
    auto = RunConfig(precision="auto", device="cpu")
    assert auto.resolved() == RunConfig(precision="fp32", device="cpu")
    assert auto.hash() == RunConfig(precision="fp32", device="cpu").hash()   # the folder names fp32
    assert build_model(RunConfig(width=2, precision="auto", device="cpu")).precision == "fp32"


@pytest.mark.parametrize("fp32_s,bf16_s,choice", [(1.0, 0.5, "bf16"), (1.0, 0.95, "fp32"), (1.0, 4.0, "fp32")])
def test_native_bf16_cpu_chooses_by_measurement_and_remembers(monkeypatch, tmp_path, fp32_s, bf16_s, choice):
    calls = []
    monkeypatch.setattr(P, "native_bf16_cpu", lambda: True)
    monkeypatch.setattr(P, "measure_step_time", lambda p: calls.append(p) or {"fp32": fp32_s, "bf16": bf16_s}[p])
    assert P.resolve_precision("auto", "cpu") == choice
    assert sorted(calls) == ["bf16", "fp32"]
    stored = json.loads((tmp_path / ".memgeo-precision.json").read_text())
    assert [v["choice"] for v in stored.values()] == [choice]
    # Another process on this machine (fresh memo) reads the decision instead of measuring again.
    monkeypatch.setattr(P, "_decided", {})
    monkeypatch.setattr(P, "measure_step_time", lambda p: pytest.fail("measured twice"))
    assert P.resolve_precision("auto", "cpu") == choice


def test_environment_forces_the_auto_choice(monkeypatch):
    monkeypatch.setenv(P.ENV_FORCE, "bf16")
    assert P.resolve_precision("auto", "cpu") == "bf16"
    assert P.resolve_precision("fp32", "cpu") == "fp32"          # an explicit choice always wins
    monkeypatch.setenv(P.ENV_FORCE, "half")
    with pytest.raises(ValueError, match="MEMGEO_AUTO_PRECISION='half'"):
        P.resolve_precision("auto", "cpu")


def test_cuda_auto_follows_the_gpu(monkeypatch):
    import torch
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert P.resolve_precision("auto", "cuda:1") == "bf16"
    monkeypatch.setattr(P, "_decided", {})
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert P.resolve_precision("auto", "cuda") == "fp32"


def test_presets_precision():
    # smoke and cpu: fp32 on every machine (exact, fast without native bf16); paper: decided there.
    for name in ("smoke", "cpu"):
        p = configure(name)
        assert p.run.precision == "fp32" and p.sweep.run.precision == "fp32"
    assert configure("paper").run.precision == "auto"


def test_measure_step_time_runs_both_formats():
    fp32 = P.measure_step_time("fp32", width=2, batch=8, steps=2)
    bf16 = P.measure_step_time("bf16", width=2, batch=8, steps=2)
    assert 0 < fp32 < 5 and 0 < bf16 < 60
