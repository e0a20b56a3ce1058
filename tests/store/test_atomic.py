from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from provenance.store import atomic


def test_json_parquet_safetensors_round_trip(tmp_path):
    atomic.write_json(tmp_path / "a.json", {"b": 1, "a": [1, 2]})
    assert json.loads((tmp_path / "a.json").read_text()) == {"a": [1, 2], "b": 1}
    frame = pd.DataFrame({"x": [1, 2], "y": ["p", "q"]})
    atomic.write_parquet(tmp_path / "t.parquet", frame)
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "t.parquet"), frame)
    shared = torch.arange(6.0).reshape(2, 3)
    atomic.write_safetensors(tmp_path / "w.safetensors", {"a": shared, "tied": shared})  # tied weights
    loaded = load_file(str(tmp_path / "w.safetensors"))
    assert torch.equal(loaded["a"], shared) and torch.equal(loaded["tied"], shared)
    atomic.write_safetensors(tmp_path / "empty.safetensors", {})
    assert load_file(str(tmp_path / "empty.safetensors")) == {}


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "data.json"
    atomic.write_json(target, {"version": 1})

    def explode(tmp):
        tmp.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic.atomic_write(target, explode)
    assert json.loads(target.read_text()) == {"version": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["data.json"]


def test_publish_dir_replaces_a_folder_in_one_rename(tmp_path):
    final = tmp_path / "model"
    final.mkdir()
    (final / "old.txt").write_text("old")
    staging = atomic.staging_dir(final)
    (staging / "new.txt").write_text("new")
    atomic.publish_dir(staging, final)
    assert [p.name for p in final.iterdir()] == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
