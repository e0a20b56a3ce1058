"""Smoke tests of bench/curation.py: its pieces against independent computations, then a --quick --json run."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from provenance.train import train

BENCH = Path(__file__).resolve().parents[2] / "bench" / "curation.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("curation_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def test_steps_to_reach_takes_the_first_step_at_or_below(bench):
    curve = pd.DataFrame({"step": [0, 10, 20, 30], "validation": [5.0, 3.0, 3.2, 2.9]})
    assert bench.steps_to_reach(curve, "validation", 3.1) == 10
    assert bench.steps_to_reach(curve, "validation", 2.9) == 30
    assert bench.steps_to_reach(curve, "validation", 2.0) is None


def test_mean_target_loss_against_a_loop(bench):
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_positions=12, n_embd=16, n_layer=1, n_head=2)).eval()
    ids = torch.randint(0, 50, (3, 12))
    mask = torch.ones_like(ids)
    labels = ids.clone()
    labels[0, 7:] = -100  # text lengths differ: 6, 11 and 3 predicted tokens
    labels[2, :1] = -100
    labels[2, 5:] = -100
    per_text = []
    for row in range(3):
        logits = model(input_ids=ids[row : row + 1]).logits[0]
        losses = [
            float(torch.nn.functional.cross_entropy(logits[t - 1 : t].detach(), ids[row, t : t + 1]))
            for t in range(1, 12) if labels[row, t] != -100
        ]
        per_text.append(sum(losses) / len(losses))
    got = bench.mean_target_loss(model, (ids, mask, labels))
    assert got == pytest.approx(sum(per_text) / 3, rel=1e-5)


def test_a_run_without_targets_follows_the_same_trajectory(bench, tmp_path):
    """The bench trains the curated and random runs without targets; the engine must only observe."""
    settings = dataclasses.replace(bench.QUICK, steps=8, n_train_docs=30)
    corpus, val_texts, _ = bench.split_corpus(settings)
    tokenizer = bench.train_tokenizer(corpus, settings.vocab_size)
    tokenizer_path = bench.save_tokenizer(tokenizer, tmp_path / "tok.json")
    targets = bench.windows(tokenizer, val_texts, 3, settings.context_length - 1, 0, "validation:")
    config = bench.run_config(settings)
    with_targets = train(corpus, tmp_path / "a", config, targets=targets, tokenizer=tokenizer_path, progress=False)
    without = train(corpus, tmp_path / "b", config, targets=[], tokenizer=tokenizer_path, progress=False)
    log_a = pd.read_parquet(with_targets.train_log_path)["loss"]
    log_b = pd.read_parquet(without.train_log_path)["loss"]
    pd.testing.assert_series_equal(log_a, log_b)
    for t in targets:
        assert len(tokenizer.encode(t.text, add_special_tokens=False).ids) <= settings.context_length - 1


def test_quick_run_prints_one_json_line(bench, capsys, tmp_path):
    plot_path = tmp_path / "curation.png"
    assert bench.main(["--quick", "--json", "--out", str(plot_path)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    result = json.loads(lines[0])
    for key in ("steps_baseline", "steps_curated", "steps_random"):
        assert key in result and (result[key] is None or isinstance(result[key], int))
    assert result["steps_baseline"] is not None  # the baseline reaches its own final loss, at the latest at the end
    assert result["plot_path"] == str(plot_path) and plot_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert result["n_train_documents"] == bench.QUICK.n_train_docs
    assert 0 <= result["n_dropped"] < result["n_train_documents"]
    # our checkpoint evaluation agrees with the loss the engine recorded for each validation target
    assert result["eval_vs_ledger_max_abs_diff"] < 1e-4
    steps = result["curves"]["step"]
    assert steps[0] == 0 and steps[-1] == bench.QUICK.steps
