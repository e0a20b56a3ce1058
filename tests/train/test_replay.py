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


def test_a_run_trained_without_targets_is_attributed_by_replay(tmp_path, tiny_corpus, monkeypatch):
    """Kept per-row gradients in pieces of two rows (four rows per micro-batch), as an output head's are at
    real sizes (GPT-2, vocabulary 4096, width 128: 8 rows a piece): a step without targets must sum them as
    a valued step does, or the replay's weights differ from the run's checkpoints (they did before)."""
    from provenance.engine.rules import linear
    from provenance.train import train

    from .tiny import tiny_config

    grad_and_rows = linear.MatmulRule.grad_and_rows
    by_weight_rows = linear.MatmulRule.grad_and_dot_by_weight_rows  # a tied head's route with targets

    def two_rows_a_piece(self, module, pname, saved, grad, reuse=False):
        monkeypatch.setattr(linear, "_ROW_PIECE_BYTES", 2 * module.weight.numel() * module.weight.element_size())
        return grad_and_rows(self, module, pname, saved, grad, reuse)

    def two_rows_a_piece_by_weight_rows(self, module, *args, **kwargs):
        monkeypatch.setattr(linear, "_ROW_PIECE_BYTES", 2 * module.weight.numel() * module.weight.element_size())
        return by_weight_rows(self, module, *args, **kwargs)

    monkeypatch.setattr(linear.MatmulRule, "grad_and_rows", two_rows_a_piece)
    monkeypatch.setattr(linear.MatmulRule, "grad_and_dot_by_weight_rows", two_rows_a_piece_by_weight_rows)
    run = tmp_path / "no-targets"
    train(tiny_corpus, run, tiny_config(micro_batch_size=4), targets=[], progress=False)
    new = attribute(run, TARGETS[:1], progress=False)
    assert set(new["target_id"]) == {TARGETS[0].target_id}
    assert new["value"].abs().sum() > 0
