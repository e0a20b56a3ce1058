"""Segment-parallel replay (one worker process per block of checkpoint segments) equals sequential replay."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest

from provenance.config import ConfigError
from provenance.errors import RunMismatchError
from provenance.store import atomic
from provenance.store.hashing import sha256_file
from provenance.train import TargetSpec, attribute, train
from provenance.train.segments import Block, plan_blocks

from .tiny import TARGETS, tiny_config

NEW = [TargetSpec("late-1", "the king", " river stone tree light"), TargetSpec("late-2", "", "gold iron door")]
WRITTEN = ("values.parquet", "contributions.parquet", "ledger.parquet", "targets.parquet", "manifest.json")


@pytest.fixture(scope="module")
def one_thread_run(tmp_path_factory, tiny_corpus):
    """The tiny run (6 steps, checkpoints 0, 2, 4) recorded on 1 CPU thread: each worker then uses one
    thread too, so 2 workers fit the 2 cores (read-only: tests copy it)."""
    path = tmp_path_factory.mktemp("segments") / "tiny1"
    train(tiny_corpus, path, tiny_config(), targets=TARGETS, threads=1, progress=False)
    return path


@pytest.fixture()
def run_copy(one_thread_run, tmp_path):
    dest = tmp_path / "tiny1"
    shutil.copytree(one_thread_run, dest)
    return dest


def test_blocks_cover_every_step_once_and_start_at_checkpoints():
    assert plan_blocks([0, 2, 4], 6, 1) == [Block(0, 1, 6)]
    assert plan_blocks([0, 2, 4], 6, 2) == [Block(0, 1, 2), Block(1, 3, 6)]
    assert plan_blocks([0, 2, 4], 6, 3) == [Block(0, 1, 2), Block(1, 3, 4), Block(2, 5, 6)]
    assert plan_blocks([0, 2, 4], 6, 8) == [Block(0, 1, 2), Block(1, 3, 4), Block(2, 5, 6)]  # no more cuts
    blocks = plan_blocks(list(range(0, 1000, 100)), 1000, 2)
    assert blocks == [Block(0, 1, 500), Block(1, 501, 1000)]
    blocks = plan_blocks(list(range(0, 300, 10)), 300, 7)
    steps = [s for b in blocks for s in range(b.first_step, b.last_step + 1)]
    assert steps == list(range(1, 301)) and len(blocks) == 7
    assert all((b.first_step - 1) % 10 == 0 for b in blocks)
    with pytest.raises(ConfigError, match="workers"):
        plan_blocks([0], 6, 0)


def test_two_workers_equal_sequential_replay(one_thread_run, tmp_path):
    sequential, parallel = tmp_path / "seq", tmp_path / "par"
    shutil.copytree(one_thread_run, sequential)
    shutil.copytree(one_thread_run, parallel)
    attribute(sequential, NEW, workers=1, progress=False)
    attribute(parallel, NEW, workers=2, progress=False)
    for table, keys in (("contributions", ["step", "chunk_id", "doc_id", "target_id"]),
                        ("ledger", ["step", "target_id"]), ("values", ["doc_id", "target_id", "rank"])):
        a = pd.read_parquet(sequential / f"{table}.parquet")
        b = pd.read_parquet(parallel / f"{table}.parquet")
        assert a[keys].equals(b[keys]), table
        for column in [c for c in a.columns if c not in keys and a[c].dtype.kind == "f"]:
            x, y = a[column].to_numpy(), b[column].to_numpy()
            if np.isnan(x).all():
                assert np.isnan(y).all()
                continue
            assert float(np.nanmax(np.abs(x - y)) / np.nanmax(np.abs(x))) <= 1e-6, (table, column)
    contrib = pd.read_parquet(parallel / "contributions.parquet")
    assert set(contrib["target_id"]) == {"t-river", "t-sea", "late-1", "late-2"}
    assert sorted(contrib.loc[contrib.target_id == "late-2", "step"].unique()) == list(range(1, 7))


def test_torchrun_ranks_as_segment_workers_equal_sequential_replay(one_thread_run, tmp_path):
    """`provenance attribute` under torchrun: each rank replays one block and sends its rows to rank 0
    as parquet bytes (no shared folder needed), which writes once."""
    import json
    import os
    import subprocess
    import sys

    sequential, ranks = tmp_path / "seq", tmp_path / "ranks"
    shutil.copytree(one_thread_run, sequential)
    shutil.copytree(one_thread_run, ranks)
    attribute(sequential, NEW, workers=1, progress=False)
    targets = tmp_path / "late.jsonl"
    targets.write_text("".join(json.dumps({"id": t.target_id, "prompt": t.prompt, "text": t.text}) + "\n"
                               for t in NEW))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "provenance.cli", "--", "attribute", "--run", str(ranks), "--targets", str(targets), "--quiet"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("target late-1: top") == 1  # printed by rank 0 only
    for table in ("contributions", "ledger", "values", "targets"):
        expected, got = (pd.read_parquet(r / f"{table}.parquet") for r in (sequential, ranks))
        assert expected.equals(got), table


def test_a_failing_segment_writes_nothing(run_copy):
    log = pd.read_parquet(run_copy / "train_log.parquet")
    log.loc[log.step == 5, "loss"] += 1e-6  # step 5 lies in the second worker's block (steps 3..6)
    atomic.write_parquet(run_copy / "train_log.parquet", log)
    before = {name: sha256_file(run_copy / name) for name in WRITTEN}
    with pytest.raises(RunMismatchError, match=r"segment steps 3\.\.6: replay diverged at step 5"):
        attribute(run_copy, NEW, workers=2, progress=False)
    assert before == {name: sha256_file(run_copy / name) for name in WRITTEN}


def test_a_changed_checkpoint_is_caught_by_the_block_that_reaches_it(run_copy):
    from safetensors.torch import load_file

    path = run_copy / "checkpoints" / "step_000004" / "model.safetensors"
    weights = load_file(str(path))
    weights["lm_head.weight"] = weights["lm_head.weight"].clone()
    weights["lm_head.weight"][0, 0] += 1e-3
    atomic.write_safetensors(path, weights)
    before = {name: sha256_file(run_copy / name) for name in WRITTEN}
    # Blocks 1..2 | 3..4 | 5..6: the middle worker reaches step 4 and compares its weights; the last one
    # starts from the changed checkpoint and no longer reproduces the recorded losses.
    with pytest.raises(RunMismatchError, match="segment steps"):
        attribute(run_copy, NEW, workers=3, progress=False)
    assert before == {name: sha256_file(run_copy / name) for name in WRITTEN}


def test_a_changed_optimizer_state_in_a_checkpoint_is_caught(run_copy):
    """Every checkpoint a worker reaches is compared with the replayed Adam state too, since another block
    may start from it (here blocks 1..2 | 3..6; the second reaches checkpoint 4, which no block starts
    from, so no other worker can fail first)."""
    from safetensors.torch import load_file

    path = run_copy / "checkpoints" / "step_000004" / "optimizer.safetensors"
    state = load_file(str(path))
    key = next(k for k in sorted(state) if k.endswith("exp_avg_sq"))
    state[key] = state[key] * 1.5
    atomic.write_safetensors(path, state)
    before = {name: sha256_file(run_copy / name) for name in WRITTEN}
    with pytest.raises(RunMismatchError, match=r"segment steps 3\.\.6: replayed optimizer state differs"):
        attribute(run_copy, NEW, workers=2, progress=False)
    assert before == {name: sha256_file(run_copy / name) for name in WRITTEN}


@pytest.mark.slow
def test_workers_replay_a_two_thread_run_with_two_threads(tmp_path):
    """A run whose losses depend on the thread count (measured on this 2-core machine: this 4-layer,
    256-wide model recorded on 2 threads diverges at step 4 when replayed on 1) is reproduced bit for bit
    by segment workers, which run with the recorded count (docs/distributed.md)."""
    from provenance.config import ModelConfig, RunConfig, TrainConfig

    from .tiny import write_corpus

    config = RunConfig(
        model=ModelConfig(n_layer=4, n_head=4, n_embd=256, context_length=128),
        train=TrainConfig(steps=4, batch_size=16, micro_batch_size=16, warmup_steps=2, checkpoint_every=2,
                          tokenizer_vocab_size=500),
    ).check()
    run = tmp_path / "big"
    train(write_corpus(tmp_path / "docs", n_docs=200), run, config, threads=2, progress=False)
    values = attribute(run, NEW[:1], workers=2, progress=False)
    assert set(values["target_id"]) == {"late-1"}
