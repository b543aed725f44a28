"""LabelledArray: selection, reduction, atomic save/load with provenance and extras."""

from __future__ import annotations

import json

import numpy as np
import pytest

from spatial_interp.results import LabelledArray, ResultError, atomic_write, provenance


def _array():
    values = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    return LabelledArray(values, ("metric", "site", "pair"),
                         {"metric": ["c0", "c1"], "site": ["lm_resid.0", "lm_resid.1", "vision_out"]})


def test_selection_and_reduction():
    a = _array()
    assert a.sel(metric="c1", site="vision_out").values.tolist() == [20, 21, 22, 23]
    kept = a.sel(site=["lm_resid.1", "lm_resid.0"])
    assert kept.shape == (2, 2, 4) and kept.coords["site"] == ["lm_resid.1", "lm_resid.0"]
    assert a.mean("pair").shape == (2, 3)
    assert a.transpose("pair", "site", "metric").shape == (4, 3, 2)
    with pytest.raises(ResultError, match="not on axis"):
        a.sel(site="lm_resid.9")
    with pytest.raises(ResultError, match="one name per dimension"):
        LabelledArray(np.zeros((2, 2)), ("a",))
    with pytest.raises(ResultError, match="coordinates"):
        LabelledArray(np.zeros((2, 2)), ("a", "b"), {"a": ["x"]})


def test_save_load_round_trip(tmp_path):
    a = _array()
    a.attrs["note"] = "test"
    a.provenance = provenance(seed=3, config={"k": 1})
    a.extras["clean"] = LabelledArray(np.ones((2, 4)), ("metric", "pair"), {"metric": ["c0", "c1"]})
    path = a.save(tmp_path / "out" / "sweep")
    meta = json.loads(path.read_text())
    assert meta["provenance"]["seed"] == 3 and meta["provenance"]["package"] == "spatial-interp"
    assert "git_commit" in meta["provenance"] and "torch" in meta["provenance"]["versions"]
    b = LabelledArray.load(tmp_path / "out" / "sweep.npz")
    assert np.array_equal(b.values, a.values) and b.coords == a.coords and b.attrs == {"note": "test"}
    assert np.array_equal(b.extras["clean"].values, np.ones((2, 4)))
    assert not list((tmp_path / "out").glob(".*tmp"))  # no temporary files left behind


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    path = tmp_path / "f.txt"
    path.write_text("old")

    def boom(handle):
        handle.write(b"partial")
        raise RuntimeError("crash mid-write")

    with pytest.raises(RuntimeError):
        atomic_write(path, boom)
    assert path.read_text() == "old" and len(list(tmp_path.iterdir())) == 1
