import pytest

from memgeo.config import ConfigError, RunConfig, configure, parse_set, preset


def test_hash_is_stable_and_ignores_device():
    a, b = RunConfig(eps=0.3), RunConfig(eps=0.3, device="cpu")
    assert a.hash() == b.hash() and len(a.hash()) == 12
    assert a.hash() != RunConfig(eps=0.31).hash()
    assert RunConfig.from_dict(a.to_dict()) == a


@pytest.mark.parametrize("kw,msg", [
    (dict(eps=1.5), "eps=1.5 is outside"), (dict(eps=-0.1), "outside"),
    (dict(dataset="mnist"), "unknown dataset 'mnist'"), (dict(model="x"), "unknown model"),
    (dict(optimizer="rmsprop"), "unknown optimizer"), (dict(epochs=0), "epochs=0"),
    (dict(checkpoints="0,99", epochs=5), "outside 0..5"), (dict(checkpoints="often"), "comma-separated"),
    (dict(dataset="cifar100", unverified_local_copy=True), "only to the offline CIFAR-10"),
    (dict(train_per_class=-1), ">= 0"), (dict(device="tpu"), "device"),
    (dict(precision="fp16"), "unknown precision 'fp16'"),
])
def test_bad_values_name_the_parameter(kw, msg):
    with pytest.raises(ConfigError, match=msg):
        RunConfig(**kw)


def test_checkpoint_epochs():
    assert RunConfig(epochs=4, checkpoints="all").checkpoint_epochs() == (0, 1, 2, 3, 4)
    assert RunConfig(epochs=10, checkpoints="3").checkpoint_epochs() == (0, 3, 10)
    log = RunConfig(epochs=300, checkpoints="log").checkpoint_epochs()
    assert log[:3] == (0, 1, 2) and log[-1] == 300 and len(log) < 20


def test_presets_and_overrides():
    with pytest.raises(ConfigError, match="unknown preset 'huge'"):
        preset("huge")
    p = configure("smoke", {"eps": "0.25", "probe.M": "7", "sweep.widths": "1,3", "run.seed": "4",
                            "unverified_local_copy": "true"})
    assert p.run.eps == 0.25 and p.sweep.run.eps == 0.25          # plain keys reach both runs
    assert p.run.seed == 4 and p.sweep.run.seed == 0               # run.X only the main run
    assert p.probe.M == 7 and p.sweep.widths == (1, 3)
    assert p.run.unverified_local_copy and p.sweep.run.unverified_local_copy
    with pytest.raises(ConfigError, match="unknown config key.*valid keys"):
        configure("smoke", {"learning_rate": 1})
    with pytest.raises(ConfigError, match="expected a float"):
        configure("smoke", {"eps": "half"})
    with pytest.raises(ConfigError, match="key=value"):
        parse_set(["eps"])
    assert preset("paper").run.model == "vgg16" and preset("paper").run.dataset == "cifar100"
