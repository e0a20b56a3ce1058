"""Attributing after training (replay) gives the values of registering before training."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from provenance.errors import RunMismatchError, TargetError
from provenance.store import atomic
from provenance.store.hashing import sha256_file
from provenance.train import TargetSpec, attribute

from .tiny import TARGETS


def test_replay_matches_registered_before_training(run_copy):
    again = [TargetSpec(t.target_id + "-replay", t.prompt, t.text) for t in TARGETS]
    new = attribute(run_copy, again[:1], progress=False)
    assert set(new["target_id"]) == {"t-river-replay"}
    values = pd.read_parquet(run_copy / "values.parquet").set_index(["target_id", "doc_id"])
    before = values.loc["t-river"]["value"]
    after = values.loc["t-river-replay"]["value"].reindex(before.index)
    rel = (before - after).abs().max() / before.abs().max()
    assert rel <= 1e-5
    contrib = pd.read_parquet(run_copy / "contributions.parquet")
    a = contrib[contrib.target_id == "t-river"].reset_index(drop=True)
    b = contrib[contrib.target_id == "t-river-replay"].reset_index(drop=True)
    assert (a[["step", "chunk_id", "doc_id"]] == b[["step", "chunk_id", "doc_id"]]).all().all()
    targets = pd.read_parquet(run_copy / "targets.parquet")
    assert dict(zip(targets.target_id, targets.registered)) == {
        "t-river": "before_training", "t-sea": "before_training", "t-river-replay": "replay"}
    manifest = json.loads((run_copy / "manifest.json").read_text())
    assert manifest["files"]["values.parquet"] == sha256_file(run_copy / "values.parquet")
    assert len(pd.read_parquet(run_copy / "ledger.parquet")) == 6 * 3


def test_replay_refuses_a_run_whose_loss_curve_differs(run_copy):
    log = pd.read_parquet(run_copy / "train_log.parquet")
    log.loc[log.step == 4, "loss"] += 1e-7
    atomic.write_parquet(run_copy / "train_log.parquet", log)
    before = {p: sha256_file(run_copy / p) for p in ("values.parquet", "contributions.parquet", "targets.parquet")}
    with pytest.raises(RunMismatchError, match="step 4"):
        attribute(run_copy, [TargetSpec("new", "", "ship sea")], progress=False)
    assert before == {p: sha256_file(run_copy / p) for p in before}


def test_replay_refuses_an_already_registered_id(run_copy):
    with pytest.raises(TargetError, match="already registered"):
        attribute(run_copy, [TargetSpec("t-sea", "", "ship sea")], progress=False)


def test_replay_refuses_an_empty_target(run_copy):
    with pytest.raises(TargetError, match="empty"):
        attribute(run_copy, [TargetSpec("blank", "a prompt", "   ")], progress=False)
