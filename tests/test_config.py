import pytest

from memgeo.config import ConfigError, ProbeConfig, RunConfig, SweepConfig, apply_overrides, configure, parse_set, preset


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


# --- Types: every entry point coerces a value to its field's type before validation and hashing.

def test_int_for_float_field_is_one_run():
    """{'eps': 1} and {'eps': 1.0} (and '1') are the same experiment: one hash, a float value."""
    runs = [configure("smoke", {"eps": v}).run for v in (1, 1.0, "1", "1.0")]
    assert {r.hash() for r in runs} == {runs[1].hash()}
    assert all(type(r.eps) is float for r in runs)
    # Direct construction and from_dict too, and the sweep's runs.
    assert RunConfig(eps=1).hash() == RunConfig(eps=1.0).hash() and type(RunConfig(lr=1).lr) is float
    assert RunConfig.from_dict({"eps": 0, "weight_decay": 0}) == RunConfig(eps=0.0, weight_decay=0.0)
    assert configure("smoke", {"eps": 0}).sweep.run.hash() == configure("smoke", {"eps": 0.0}).sweep.run.hash()


@pytest.mark.parametrize("key,value", [("seed", 1.5), ("width", 2.5), ("batch_size", 64.7), ("epochs", "2.5"),
                                       ("probe.M", 7.5), ("seed", True), ("eps", True)])
def test_fractional_or_wrong_values_are_refused_naming_the_key(key, value):
    name = key.split(".")[-1]
    with pytest.raises(ConfigError, match=rf"^{name}={value!r}: expected an? (int|float)"):
        configure("smoke", {key: value})


@pytest.mark.parametrize("make", [
    lambda: RunConfig(seed=1.5), lambda: RunConfig.from_dict({"width": 2.5}),
    lambda: apply_overrides(RunConfig(), {"batch_size": 64.7}), lambda: ProbeConfig(P=2.5),
])
def test_every_entry_point_refuses_a_fraction_for_an_int(make):
    with pytest.raises(ConfigError, match="expected an int"):
        make()


def test_integral_values_become_ints():
    c = configure("smoke", {"seed": 2.0, "width": "16", "epochs": "3.0", "probe.M": 7.0})
    assert (c.run.seed, c.run.width, c.run.epochs, c.probe.M) == (2, 16, 3, 7)
    assert all(type(v) is int for v in (c.run.seed, c.run.width, c.run.epochs, c.probe.M))
    assert c.run.hash() == configure("smoke", {"seed": 2, "width": 16, "epochs": 3}).run.hash()


def test_bool_fields():
    for v in (True, 1, "1", "true", "Yes", "on"):
        assert configure("smoke", {"augment": v}).run.augment is True
    for v in (False, 0, "0", "false", "no", "OFF"):
        assert configure("smoke", {"augment": v}).run.augment is False
    assert RunConfig(augment=1).hash() == RunConfig(augment=True).hash()
    for v in (2, 0.5, 1.0, "maybe", None):
        with pytest.raises(ConfigError, match=r"^augment=.*: expected a bool"):
            configure("smoke", {"augment": v})


@pytest.mark.parametrize("value", [(1, 2, 4), [1, 2, 4], "1,2,4", "[1, 2, 4]", "(1, 2, 4)", " 1, 2 ,4 ", [1.0, 2, "4"]])
def test_tuple_fields_accept_the_usual_spellings(value):
    w = configure("smoke", {"sweep.widths": value}).sweep.widths
    assert w == (1, 2, 4) and all(type(x) is int for x in w)


def test_tuple_fields_single_and_bad():
    assert configure("smoke", {"sweep.widths": 4}).sweep.widths == (4,)
    assert configure("smoke", {"sweep.widths": "4"}).sweep.widths == (4,)
    assert SweepConfig(widths=[1, 2]).widths == (1, 2)
    for v in ("1,2.5", [1, 2.5], "wide", 1.5):
        with pytest.raises(ConfigError, match=r"^widths=.*: expected a tuple of ints"):
            configure("smoke", {"sweep.widths": v})


def test_string_fields_and_the_article():
    # papermill passes epoch lists and numbers as they are written
    assert configure("smoke", {"run.checkpoints": [0, 2, 3]}).run.checkpoints == "0,2,3"
    assert configure("smoke", {"checkpoints": 2}).sweep.run.checkpoints == "2"
    assert configure("smoke", {"probe.epochs": [0, 2]}).probe.epochs == "0,2"
    with pytest.raises(ConfigError, match=r"^model=None: expected a str"):
        configure("smoke", {"model": None})
    with pytest.raises(ConfigError) as err:
        configure("smoke", {"seed": "x"})
    assert str(err.value) == "seed='x': expected an int"
    with pytest.raises(ConfigError, match="finite"):
        configure("smoke", {"lr": float("inf")})


def test_coercion_does_not_move_preset_hashes():
    """The run folders of every preset (main run and each sweep width) keep their names. Configs
    with precision "auto" are pinned for both formats it can resolve to (fp32/bf16)."""
    from dataclasses import replace
    from memgeo.sweep import width_configs

    def h(c):
        if c.precision != "auto":
            return c.hash() + "/" + c.hash()
        return "/".join(replace(c, precision=p).hash() for p in ("fp32", "bf16"))

    # Pinned after the validation split, `evaluate` and the seeds' presets (issue 13) renamed every run.
    expected = {
        "smoke": (
            "7904f62f20f7/7904f62f20f7 5a4b9f683610/5a4b9f683610 b18fd6e3cbb1/b18fd6e3cbb1 "
            "e4e649035a75/e4e649035a75 f824b959339f/f824b959339f"),
        "cpu": (
            "afd34be80a3c/afd34be80a3c 9414a8da9f6e/9414a8da9f6e 9414a8da9f6e/9414a8da9f6e "
            "de707e98eead/de707e98eead 94fe57516593/94fe57516593 dafde3882a14/dafde3882a14 "
            "c85ee5cb7fea/c85ee5cb7fea ce0cb76d2c41/ce0cb76d2c41 52acca0ebe4d/52acca0ebe4d "
            "9b4b37c59b9e/9b4b37c59b9e 00c8a6906a31/00c8a6906a31"),
        "paper": (
            "f5a694a44456/734264f59d4f 57242694f0dd/8780c57776a1 4cf21fd6e017/4b3d19741502 "
            "5c8c24434966/53aa49b449fe 057433f0a06e/28a9eea4fa35 498d09bd882f/f8e2a3197b61 "
            "ba681b5fa2e1/f7e72b8f6fe3 87f04ba29fd9/a812a41c703f d07b3bf283b5/1dcd331e8f75 "
            "2bfdc140e37d/f37ec0e35270 3ddfdbaac37d/ab873f923ef3 1af625d7f11b/37c1acedd4be "
            "4d9e4f7a6134/40a599f183aa 57242694f0dd/8780c57776a1 b3729a9a686e/489bcf0d144d "
            "be2bca67c7ca/9d009e497214"),
    }
    for name, hashes in expected.items():
        c = configure(name)
        got = [h(c.run), h(c.sweep.run)] + [h(w) for w in width_configs(c.sweep)]
        assert " ".join(got) == hashes, name
    assert h(RunConfig()) == "31f681d89ba8/f2a684938267"


def test_papermill_parameters_are_coerced(monkeypatch):
    """papermill -p passes ints, floats and lists as typed values; they go through configure."""
    from memgeo.book import ENV_PRESET, ENV_SET, configure_notebook
    monkeypatch.delenv(ENV_PRESET, raising=False)
    monkeypatch.delenv(ENV_SET, raising=False)
    assert configure_notebook("smoke", {"eps": 1}).run.hash() == configure("smoke", {"eps": 1.0}).run.hash()
    with pytest.raises(ConfigError, match=r"^parameter overrides\['seed'\]=1.5: expected an int"):
        configure_notebook("smoke", {"seed": 1.5})


def test_seeds_replicate_every_training_run_and_the_analyses_draws():
    p = configure("cpu")
    assert p.seeds == (0, 1, 2) and configure("smoke").seeds == (0, 1, 2)
    reps = p.replicas()
    assert [q.run.seed for q in reps] == [q.sweep.run.seed for q in reps] == [q.gradients.seed for q in reps] == [0, 1, 2]
    assert len({q.run.hash() for q in reps}) == 3 and reps[0].run == p.run
    assert configure("smoke", {"seeds": "3,5"}).seeds == (3, 5)
    assert configure("smoke", {"seeds": [4]}).for_seed(4).run.seed == 4
    for bad in ("1,1", "-1", ""):
        with pytest.raises(ConfigError, match="seeds"):
            configure("smoke", {"seeds": bad})


def test_validation_split_and_evaluate_settings():
    assert configure("cpu").run.val_per_class == 100 and configure("cpu").sweep.run.evaluate == "checkpoints"
    with pytest.raises(ConfigError, match="evaluate"):
        RunConfig(evaluate="sometimes")
    with pytest.raises(ConfigError, match="val_per_class"):
        RunConfig(val_per_class=-1)


def test_probe_refuses_zero_center_searches():
    with pytest.raises(ConfigError, match="center_searches=0: need at least one"):
        ProbeConfig(center_searches=0)
