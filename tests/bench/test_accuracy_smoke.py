"""Smoke tests of bench/accuracy.py: each piece against a truth computed another way, then a --quick run."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("sklearn")
BENCH = Path(__file__).resolve().parents[2] / "bench" / "accuracy.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("accuracy_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def test_flip_labels_flips_the_requested_share_to_other_classes(bench):
    labels = torch.arange(200) % 10
    noisy, mask = bench.flip_labels(labels, 0.1, torch.Generator().manual_seed(1))
    assert int(mask.sum()) == 20
    assert bool((noisy[mask] != labels[mask]).all())
    assert torch.equal(noisy[~mask], labels[~mask])
    assert int(noisy.min()) >= 0 and int(noisy.max()) <= 9


def test_auroc_on_a_hand_counted_example(bench):
    # positives 0.35, 0.8 against negatives 0.1, 0.4: 3 of the 4 pairs are ordered right
    assert bench.auroc(torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([False, False, True, True])) == 0.75


def test_permutation_shapley_additive_game_is_exact_for_each_player(bench):
    weights = torch.tensor([3.0, -1.0, 0.5, 2.0, 0.0], dtype=torch.float64)
    mean, stderr, _ = bench.permutation_shapley(5, 8, 4, 0, lambda masks: masks.double() @ weights, progress=False)
    torch.testing.assert_close(mean, weights)
    assert float(stderr.abs().max()) < 1e-12


def test_permutation_shapley_antithetic_pairs_on_a_symmetric_game(bench):
    # U(S) = |S|^2 with n players: by symmetry and efficiency every Shapley value is n^2 / n = n. A player's
    # marginals at positions j and n-1-j (a permutation and its reverse) average to exactly n.
    n = 6
    mean, stderr, marginals = bench.permutation_shapley(
        n, 10, 4, 3, lambda masks: masks.double().sum(dim=1) ** 2, progress=False
    )
    torch.testing.assert_close(mean, torch.full((n,), float(n), dtype=torch.float64))
    assert float(stderr.max()) < 1e-12
    assert float(marginals.std()) > 1.0  # single permutations do vary; only the pairs are exact


def test_permutation_shapley_rejects_odd_counts(bench):
    with pytest.raises(ValueError, match="even"):
        bench.permutation_shapley(3, 5, 2, 0, lambda m: m.double().sum(1), progress=False)


def test_batched_retraining_equals_the_plain_training_loop(bench):
    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(6, 1, 8, 8, generator=generator), torch.randint(0, 10, (6,), generator=generator)
    val = (torch.randn(5, 1, 8, 8, generator=generator), torch.randint(0, 10, (5,), generator=generator))
    masks = torch.tensor([[0, 0, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0], [1, 1, 0, 1, 0, 1], [1, 1, 1, 1, 1, 1]]).bool()
    got = bench.retrain_utilities(bench.build_model(7), x, y, masks, 4, 0.1, val)
    expected = [0.0]
    for mask in masks[1:]:
        model = bench.build_model(7)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        with torch.no_grad():
            before = F.cross_entropy(model(val[0]), val[1])
        for _ in range(4):
            optimizer.zero_grad()
            F.cross_entropy(model(x[mask]), y[mask]).backward()
            optimizer.step()
        with torch.no_grad():
            expected.append(float(before - F.cross_entropy(model(val[0]), val[1])))
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64), atol=1e-5, rtol=1e-4)


def test_in_run_values_map_rows_back_to_training_indices(bench):
    """One SGD step, no clipping: the first-order value of point i is lr * (1/B) grad l_i . grad(mean val
    loss), computed here by plain autograd, one point at a time."""
    generator = torch.Generator().manual_seed(2)
    x, y = torch.randn(10, 1, 8, 8, generator=generator), torch.randint(0, 10, (10,), generator=generator)
    val = (torch.randn(3, 1, 8, 8, generator=generator), torch.randint(0, 10, (3,), generator=generator))
    batch = torch.tensor([7, 2, 9, 4])
    lr = 0.1
    model = bench.build_model(5)
    params = list(model.parameters())
    g_val = torch.autograd.grad(F.cross_entropy(model(val[0]), val[1]), params)
    expected = torch.zeros(10, dtype=torch.float64)
    for i in batch.tolist():
        g_i = torch.autograd.grad(F.cross_entropy(model(x[i : i + 1]), y[i : i + 1]), params)
        expected[i] = lr / len(batch) * sum(float((a * b).sum()) for a, b in zip(g_i, g_val))
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    first, second = bench.in_run_values(model, optimizer, [batch], x, y, val, None)
    torch.testing.assert_close(first, expected, atol=1e-6, rtol=1e-4)
    assert bool((first[[0, 1, 3, 5, 6, 8]] == 0).all()) and bool((second[[0, 1, 3, 5, 6, 8]] == 0).all())


def test_quick_run_prints_one_json_line(bench, capsys):
    assert bench.main(["--quick", "--json"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    result = json.loads(lines[0])
    for key in ("auroc_first_order", "auroc_second_order", "spearman_vs_monte_carlo"):
        assert math.isfinite(result[key])
    assert 0.0 <= result["auroc_first_order"] <= 1.0
    # Shapley efficiency: the MC values add up to U(all players) (exactly, for permutation sampling)
    assert result["monte_carlo_sum_of_values"] == pytest.approx(result["monte_carlo_grand_utility"], abs=1e-6)
