"""The one result cache (memgeo.cache): keys, chunks, resuming, atomic writes."""
import json

import numpy as np
import pandas as pd
import pytest

from memgeo.cache import ResultCache, cache_key, cached_table


def entry(root, **kw):
    base = dict(kind="demo", settings={"M": 5, "sizes": [1, 2]}, seed=0, version=1)
    base.update(kw)
    return ResultCache(root, base.pop("kind"), base.pop("settings"), **base)


def test_key_names_settings_seed_and_version(tmp_path):
    a = entry(tmp_path)
    assert a.key == entry(tmp_path).key == cache_key("demo", {"sizes": [1, 2], "M": 5}, 0, 1)
    others = [entry(tmp_path, settings={"M": 6, "sizes": [1, 2]}), entry(tmp_path, seed=1),
              entry(tmp_path, seed=None), entry(tmp_path, version=2), entry(tmp_path, kind="other")]
    assert len({a.key} | {o.key for o in others}) == 6
    assert a.folder == tmp_path / "demo" / a.key and len(a.key) == 10


def test_chunks_are_added_resumed_and_replaced(tmp_path):
    c = entry(tmp_path)
    assert c.read().empty and c.missing("table", [0, 1, 2], ["epoch"]) == [0, 1, 2]
    c.add("table", pd.DataFrame({"epoch": [1, 1], "layer": ["a", "b"], "x": [0.1, 0.2]}), ["epoch"])
    c.add("table", pd.DataFrame({"epoch": [0], "layer": ["a"], "x": [1 / 3]}), ["epoch"])
    assert c.missing("table", [0, 1, 2], ["epoch"]) == [2]
    assert c.read()["epoch"].tolist() == [1, 1, 0]                 # new chunks after the stored ones
    t = c.add("table", pd.DataFrame({"epoch": [1], "layer": ["c"], "x": [0.5]}), ["epoch"], order=["epoch"])
    assert t["epoch"].tolist() == [0, 1] and t["layer"].tolist() == ["a", "c"]   # chunk 1 replaced, sorted
    pd.testing.assert_frame_equal(c.read(), t)
    assert c.missing("table", [(0, "a"), (0, "b")], ["epoch", "layer"]) == [(0, "b")]
    key = json.loads((c.folder / "key.json").read_text())
    assert key == {"kind": "demo", "settings": {"M": 5, "sizes": [1, 2]}, "seed": 0, "version": 1}
    assert sorted(p.name for p in c.folder.iterdir()) == ["key.json", "table.csv"]   # no temporary file left


def test_numbers_come_back_exactly(tmp_path):
    x = np.random.default_rng(0).random(200) * 10.0 ** np.arange(-100, 100)
    c = entry(tmp_path)
    c.write("t", pd.DataFrame({"x": x, "y": np.r_[np.inf, np.nan, x[2:]]}))
    back = c.read("t")
    assert (back["x"].to_numpy() == x).all()
    assert np.isinf(back["y"].iloc[0]) and np.isnan(back["y"].iloc[1])


def test_get_computes_once_and_a_version_bump_recomputes(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return pd.DataFrame({"object": ["point"], "value": [0.25]})

    a = cached_table("checks", {"n_t": 10}, compute, seed=None, version=1, root=tmp_path)
    b = cached_table("checks", {"n_t": 10}, compute, seed=None, version=1, root=tmp_path)
    pd.testing.assert_frame_equal(a, b)
    assert len(calls) == 1
    cached_table("checks", {"n_t": 10}, compute, seed=None, version=2, root=tmp_path)
    assert len(calls) == 2


def test_an_analysis_of_a_deleted_run_writes_nothing(tmp_path):
    run_folder = tmp_path / "run"
    run_folder.mkdir()
    c = ResultCache(run_folder, "demo", {}, seed=0, version=1, guard=run_folder / "config.json")
    with pytest.raises(FileNotFoundError, match="no longer a run folder"):
        c.write("table", pd.DataFrame({"a": [1]}))
    assert not (run_folder / "demo").exists()
