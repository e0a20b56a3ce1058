"""A completed run honours docs/run_directory.md, and its tables agree with each other."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from safetensors.torch import load_file

from provenance import RUN_FORMAT_VERSION
from provenance.store.hashing import sha256_file, sha256_text
from provenance.store.run_dir import RunDirectory
from provenance.train import train

from .tiny import TARGETS, tiny_config

CONTRACT_FILES = [
    "manifest.json", "corpus.parquet", "chunks.parquet", "tokenizer/tokenizer.json", "model/config.json",
    "model/model.safetensors", "targets.parquet", "contributions.parquet", "values.parquet",
    "ledger.parquet", "train_log.parquet",
]


def test_run_directory_has_every_contract_file(trained_run):
    for rel in CONTRACT_FILES:
        assert (trained_run / rel).is_file(), rel
    steps = sorted(p.name for p in (trained_run / "checkpoints").iterdir())
    assert steps == ["step_000000", "step_000002", "step_000004"]
    for name in ("model.safetensors", "optimizer.safetensors", "optimizer.json", "state.json"):
        assert (trained_run / "checkpoints" / "step_000002" / name).is_file()
    for name in ("train_log", "contributions", "ledger"):
        assert (trained_run / "checkpoints" / "step_000002" / "records" / f"{name}.parquet").is_file()
    assert not list(trained_run.rglob("*.tmp"))
    assert not list(trained_run.rglob("*.pkl")) and not list(trained_run.rglob("*.bin"))


def test_manifest_records_config_hashes_and_units(trained_run):
    manifest = json.loads((trained_run / "manifest.json").read_text())
    assert manifest["format_version"] == RUN_FORMAT_VERSION
    assert manifest["status"] == "complete"
    assert manifest["config"]["train"]["steps"] == 6 and manifest["seed"] == 0
    assert manifest["values"] == {"order": 1, "sign": "positive = lowered the target's loss",
                                  "unit": "nats per output token"}
    for rel in CONTRACT_FILES[1:]:
        assert manifest["files"][rel] == sha256_file(trained_run / rel)
    assert manifest["model"]["sha256"]["model/model.safetensors"] == sha256_file(trained_run / "model/model.safetensors")
    assert manifest["corpus"]["n_documents"] == 16
    assert set(manifest["corpus"]["report"]) >= {"empty", "duplicates", "non_utf8", "oversized"}


def test_corpus_and_chunks_tables(trained_run, tiny_corpus):
    corpus = pd.read_parquet(trained_run / "corpus.parquet")
    assert list(corpus["doc_id"]) == sorted(p.name for p in tiny_corpus.iterdir())
    for row in corpus.itertuples():
        assert row.text == (tiny_corpus / row.doc_id).read_text()
        assert row.sha256 == sha256_text(row.text)
    chunks = pd.read_parquet(trained_run / "chunks.parquet")
    assert list(chunks["chunk_id"]) == list(range(len(chunks)))
    per_doc = chunks.groupby("doc_id").agg(n=("chunk_id", "size"), tokens=("n_tokens", "sum"))
    merged = corpus.set_index("doc_id").join(per_doc)
    assert (merged["n"] == merged["n_chunks"]).all() and (merged["tokens"] == merged["n_tokens"]).all()
    assert (chunks["n_tokens"] <= 32).all() and (chunks["n_tokens"] > 0).all()


def test_values_are_sums_of_contributions_with_rank_and_share(trained_run):
    contrib = pd.read_parquet(trained_run / "contributions.parquet")
    values = pd.read_parquet(trained_run / "values.parquet")
    assert len(contrib) == 6 * 4 * 2  # steps x rows x targets
    assert contrib["value_second_order"].isna().all()
    sums = contrib.groupby(["doc_id", "target_id"])["value_first_order"].sum()
    for row in values.itertuples():
        expected = sums.get((row.doc_id, row.target_id), 0.0)
        assert row.value == pytest.approx(expected, rel=1e-12, abs=1e-15)
    assert len(values) == 16 * 2  # every document, every target
    for _, group in values.groupby("target_id"):
        group = group.sort_values("rank")
        assert list(group["rank"]) == list(range(1, 17))
        assert (np.diff(group["value"].to_numpy()) <= 0).all()
        positive = group["value"].clip(lower=0)
        assert group["share"].to_numpy() == pytest.approx((positive / positive.sum()).to_numpy())


def test_ledger_and_train_log(trained_run):
    log = pd.read_parquet(trained_run / "train_log.parquet")
    ledger = pd.read_parquet(trained_run / "ledger.parquet")
    contrib = pd.read_parquet(trained_run / "contributions.parquet")
    assert list(log["step"]) == [1, 2, 3, 4, 5, 6]
    assert np.isfinite(log["loss"]).all() and (log["tokens"] > 0).all()
    assert log["lr"].iloc[1] == pytest.approx(6e-4)  # end of the 2-step warmup
    assert len(ledger) == 12
    per_step = contrib.groupby(["step", "target_id"])["value_first_order"].sum()
    for row in ledger.itertuples():
        assert row.attributed_sum == pytest.approx(per_step[(row.step, row.target_id)], rel=1e-9, abs=1e-15)
        assert row.lr == log.set_index("step").loc[row.step, "lr"]


def test_final_model_equals_last_training_state(trained_run):
    """The saved model is the trained one: its weights differ from the step-0 init and load cleanly."""
    final = load_file(str(trained_run / "model/model.safetensors"))
    init = load_file(str(trained_run / "checkpoints/step_000000/model.safetensors"))
    name = "transformer.h.0.attn.c_attn.weight"
    assert not np.allclose(final[name].numpy(), init[name].numpy())


def test_zero_targets_trains_through_the_engine(tmp_path, tiny_corpus):
    run = train(tiny_corpus, tmp_path / "k0", tiny_config(steps=3, checkpoint_every=10), threads=1,
                progress=False)
    assert run.read_manifest()["runtime"]["torch_num_threads"] == 1
    assert len(pd.read_parquet(run.values_path)) == 0
    assert len(pd.read_parquet(run.contributions_path)) == 0
    log = pd.read_parquet(run.train_log_path)
    assert list(log["step"]) == [1, 2, 3] and np.isfinite(log["loss"]).all()
    assert RunDirectory.open(run.path).read_manifest()["status"] == "complete"


def test_same_seed_same_run(tmp_path, tiny_corpus, trained_run):
    """Training is a pure function of corpus, config and seed (what replay relies on)."""
    run = train(tiny_corpus, tmp_path / "again", tiny_config(), targets=TARGETS, progress=False)
    a = pd.read_parquet(trained_run / "contributions.parquet")
    b = pd.read_parquet(run.path / "contributions.parquet")
    pd.testing.assert_frame_equal(a, b)
    assert sha256_file(trained_run / "model/model.safetensors") == sha256_file(run.path / "model/model.safetensors")


def test_engine_settings_of_a_run_recorded_before_a_setting_existed():
    """A replay takes the engine settings a run recorded; a setting the manifest predates gets the value
    such runs were trained with (contiguous_grads: False), so the replay stays bit for bit."""
    from provenance.config import RunConfig
    from provenance.train.trainer import engine_config

    cfg = RunConfig()
    assert engine_config(cfg).contiguous_grads is True  # a new run
    old = {"memory_budget_mb": 160.0, "weight_gradients": "auto", "adam_denominator": "current"}
    assert engine_config(cfg, old).contiguous_grads is False
    assert engine_config(cfg, {**old, "contiguous_grads": True}).contiguous_grads is True
    assert engine_config(cfg, old).memory_budget_mb == 160.0


def test_new_runs_record_the_gradient_layout(trained_run):
    manifest = json.loads((trained_run / "manifest.json").read_text())
    assert manifest["config"]["engine"]["contiguous_grads"] is True
