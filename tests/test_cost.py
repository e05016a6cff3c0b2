"""Cost of runs: exact FLOP counts, images per epoch, and the GPU estimate's arithmetic."""
import pytest

from memgeo.config import RunConfig, configure
from memgeo.cost import (TRAIN_FLOPS_PER_FORWARD, forward_flops_per_image, images_per_epoch,
                         measure_images_per_second, preset_cost_table, run_cost)


def test_small_cnn_forward_flops_are_the_convolutions_and_readout():
    w = 4
    chans, size = [3, w, 2 * w, 4 * w, 8 * w], 32
    convs = sum(2 * chans[i] * chans[i + 1] * 9 * (size >> i) ** 2 for i in range(4))
    readout = 2 * (8 * w * 2 * 2) * 10
    assert forward_flops_per_image(RunConfig(width=w)) == convs + readout


def test_images_per_epoch():
    assert images_per_epoch(RunConfig(train_per_class=500)) == 5000
    assert images_per_epoch(RunConfig(dataset="cifar100", train_per_class=0)) == 50_000
    assert images_per_epoch(RunConfig(dataset="cifar100", train_per_class=12)) == 1200


def test_run_cost_arithmetic():
    cfg = RunConfig(width=2, epochs=10, train_per_class=100)
    c = run_cost(cfg, measure=False, gpu_tflops=(10.0, 40.0))
    total = forward_flops_per_image(cfg) * TRAIN_FLOPS_PER_FORWARD * 1000 * 10
    assert c["images"] == 10_000 and c["total_pflops"] == pytest.approx(total / 1e15)
    assert c["gpu_hours_high"] == pytest.approx(total / 10e12 / 3600)
    assert c["gpu_hours_low"] == pytest.approx(c["gpu_hours_high"] / 4)
    assert measure_images_per_second(RunConfig(width=2), batch=4, steps=1) > 0


def test_preset_cost_table_names_every_row():
    t = preset_cost_table(configure("smoke"), widths=(2,))
    assert list(t.index) == ["smallcnn main run", "smallcnn sweep, width 2", "whole smallcnn sweep (3 widths)"]
    assert t.loc["smallcnn main run", "epochs"] == 3
