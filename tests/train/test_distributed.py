"""Training on 2 gloo ranks under torchrun equals training the same global batch in one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from provenance.config import ConfigError
from provenance.train import TargetSpec, attribute, train
from provenance.train.distributed import DistContext, check_world_size

from .tiny import TARGETS, tiny_config

TIMEOUT = 300


def _cli_flags(corpus: Path, targets: Path) -> list[str]:
    """tiny_config() as `provenance train` options (batch 4 = 2 micro-batches of 2; 2 ranks: 1 each)."""
    return ["--corpus", str(corpus), "--targets", str(targets), "--steps", "6", "--batch-size", "4",
            "--micro-batch-size", "2", "--warmup-steps", "2", "--checkpoint-every", "2", "--vocab-size", "300",
            "--n-layer", "2", "--n-head", "2", "--n-embd", "32", "--context-length", "32", "--threads", "1",
            "--quiet"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_corpus) -> tuple[Path, Path]:
    """(one-process run, 2-rank torchrun run) of the same config, targets and global batch."""
    root = tmp_path_factory.mktemp("dist")
    targets = root / "targets.jsonl"
    targets.write_text("".join(json.dumps({"id": t.target_id, "prompt": t.prompt, "text": t.text}) + "\n"
                               for t in TARGETS))
    two = root / "two"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "provenance.cli", "--", "train", "--run", str(two), *_cli_flags(tiny_corpus, targets)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("run complete") == 1  # printed by rank 0 only
    one = root / "one"
    train(tiny_corpus, one, tiny_config(), targets=TARGETS, threads=1, progress=False)
    return one, two


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(a).max())


def test_two_ranks_give_the_values_and_weights_of_one_process(runs):
    one, two = runs
    manifest = json.loads((two / "manifest.json").read_text())
    assert manifest["status"] == "complete"
    assert manifest["runtime"]["world_size"] == 2 and manifest["runtime"]["backend"] == "gloo"
    assert json.loads((one / "manifest.json").read_text())["runtime"]["world_size"] == 1

    log1, log2 = (pd.read_parquet(r / "train_log.parquet") for r in runs)
    assert log1["step"].tolist() == log2["step"].tolist() == list(range(1, 7))
    assert _rel(log1["loss"].to_numpy(), log2["loss"].to_numpy()) <= 1e-6
    assert (log1["tokens"] == log2["tokens"]).all()

    c1, c2 = (pd.read_parquet(r / "contributions.parquet") for r in runs)
    keys = ["step", "chunk_id", "doc_id", "target_id"]
    assert c1[keys].equals(c2[keys])  # same rows, in the same (global) order
    assert len(c1) == 6 * 4 * len(TARGETS)
    assert _rel(c1["value_first_order"].to_numpy(), c2["value_first_order"].to_numpy()) <= 1e-5

    l1, l2 = (pd.read_parquet(r / "ledger.parquet") for r in runs)
    for column in ("target_loss", "clip_factor", "history_term", "attributed_sum"):
        assert _rel(l1[column].to_numpy(), l2[column].to_numpy()) <= 1e-5, column

    v1, v2 = (pd.read_parquet(r / "values.parquet").set_index(["target_id", "doc_id"]).sort_index() for r in runs)
    assert _rel(v1["value"].to_numpy(), v2["value"].to_numpy()) <= 1e-5

    # Final weights: equal up to float32 rounding. The only difference in the arithmetic is the order in
    # which the tied embedding's two uses are summed (((e0+h0)+e1)+h1 in one process, (e0+h0)+(e1+h1) on
    # two ranks); every other gradient is summed identically (measured: the step-1 gradients differ only
    # in transformer.wte.weight, by 4e-9). Adam turns such rounding into update differences of up to
    # ~2e-7 where a gradient is ~0 (the attention query biases, softmax-shift invariant), so the bound is
    # 1e-6: 1/600 of one step's largest update (peak lr 6e-4).
    w1, w2 = (load_file(str(r / "model" / "model.safetensors")) for r in runs)
    assert w1.keys() == w2.keys()
    diffs = {name: float((w1[name] - w2[name]).abs().max()) for name in w1}
    assert max(diffs.values()) <= 1e-6, diffs


def test_a_run_recorded_on_two_ranks_is_replayed_on_two(runs, tmp_path):
    """attribute() replays a 2-rank run with 2 processes (gloo); its loss is checked bit for bit."""
    import shutil

    run = tmp_path / "two"
    shutil.copytree(runs[1], run)
    again = TargetSpec("t-river-again", TARGETS[0].prompt, TARGETS[0].text)
    attribute(run, [again], progress=False)
    contrib = pd.read_parquet(run / "contributions.parquet")
    before = contrib[contrib.target_id == "t-river"].reset_index(drop=True)
    after = contrib[contrib.target_id == "t-river-again"].reset_index(drop=True)
    assert before[["step", "chunk_id"]].equals(after[["step", "chunk_id"]])
    assert _rel(before["value_first_order"].to_numpy(), after["value_first_order"].to_numpy()) <= 1e-5


def test_shards_are_contiguous_equal_slices_in_rank_order():
    ids = [7, 3, 9, 1, 4, 8]
    parts = [DistContext(3, r).shard(ids) for r in range(3)]
    assert parts == [[7, 3], [9, 1], [4, 8]]
    assert DistContext().shard(ids) == ids
    local = torch.arange(4.0).reshape(2, 2)
    assert torch.equal(DistContext().gather_rows(local), local)


def test_a_batch_that_does_not_split_evenly_is_refused():
    with pytest.raises(ConfigError, match="multiple of the number of ranks"):
        check_world_size(tiny_config(), 3)
    check_world_size(tiny_config(), 2)
    check_world_size(tiny_config(), 4)


def test_resume_refuses_another_number_of_ranks(runs, tmp_path):
    import shutil

    from provenance.errors import RunMismatchError
    from provenance.train import resume

    run = tmp_path / "two"
    shutil.copytree(runs[1], run)
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["status"] = "training"  # as if killed after its last checkpoint
    (run / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(RunMismatchError, match="recorded on 2 rank"):
        resume(run, progress=False)


def test_a_two_rank_run_resumed_on_two_ranks_equals_the_uninterrupted_one(runs, tmp_path):
    """Cut the 2-rank run back to its step-4 checkpoint (as if killed during step 5) and resume it under
    torchrun: steps 5-6 are retrained on 2 ranks and every table and weight is bit for bit the same."""
    import shutil

    uninterrupted = runs[1]
    run = tmp_path / "two"
    shutil.copytree(uninterrupted, run)
    for name in ("train_log.parquet", "contributions.parquet", "ledger.parquet", "values.parquet"):
        (run / name).unlink()
    shutil.rmtree(run / "model")
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["status"], manifest["files"] = "training", {}
    (run / "manifest.json").write_text(json.dumps(manifest))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "provenance.cli", "--", "train", "--run", str(run), "--resume", "--quiet"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    for name in ("train_log", "contributions", "ledger", "values"):
        a = pd.read_parquet(uninterrupted / f"{name}.parquet").drop(columns=["seconds"], errors="ignore")
        b = pd.read_parquet(run / f"{name}.parquet").drop(columns=["seconds"], errors="ignore")
        assert a.equals(b), name
    w1, w2 = (load_file(str(r / "model" / "model.safetensors")) for r in (uninterrupted, run))
    assert all(torch.equal(w1[k], w2[k]) for k in w1)


def test_verify_rederives_a_step_of_a_two_rank_run(runs):
    """verify replays to the sampled step on 2 processes (the recorded arithmetic), then values the step's
    whole batch by brute force in one process and compares with what the 2 ranks recorded."""
    from provenance.train.verify import verify_run

    report = verify_run(runs[1], steps=[4], progress=False)
    (check,) = report.steps
    assert check.step == 4 and check.n_values == 4 * len(TARGETS)
    assert check.relative_error <= 1e-5
