"""A step's direction z = coef * g_v and history term -h . g_v (formed in place over the K directions) against
h and coef formed explicitly, in float64, for one to five targets."""

from __future__ import annotations

import pytest
import torch

from provenance.engine.optimizers import linearize


def _warm(optimizer_name: str) -> tuple[torch.optim.Optimizer, torch.nn.Parameter]:
    g = torch.Generator().manual_seed(0)
    p = torch.nn.Parameter(torch.randn(5, 4, generator=g, dtype=torch.float64))
    if optimizer_name == "adamw":
        opt = torch.optim.AdamW([p], lr=1e-2, weight_decay=0.1)
    elif optimizer_name == "adam_l2":
        opt = torch.optim.Adam([p], lr=1e-2, weight_decay=0.1)
    else:
        opt = torch.optim.SGD([p], lr=1e-2, momentum=0.9, weight_decay=0.1)
    for _ in range(3):  # moments and momentum become non-trivial
        p.grad = torch.randn(p.shape, generator=g, dtype=torch.float64)
        opt.step()
    p.grad = torch.randn(p.shape, generator=g, dtype=torch.float64)
    return opt, p


@pytest.mark.parametrize("optimizer_name", ["adamw", "adam_l2", "sgd"])
@pytest.mark.parametrize("k", [1, 2, 5])
def test_direction_and_history_match_explicit_h_and_coef(optimizer_name, k):
    opt, p = _warm(optimizer_name)
    entry = linearize(opt, p, opt.param_groups[0], p.grad, "current")
    g_v = torch.randn(k, *p.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    coef = entry.coef if isinstance(entry.coef, torch.Tensor) else torch.tensor(entry.coef, dtype=torch.float64)
    h = entry.history()
    expected_z = g_v * coef
    expected_history = -(g_v.reshape(k, -1) @ h.reshape(-1))
    assert h.abs().sum() > 0  # momentum and decay present: the history term is exercised
    z, history = entry.direction_and_history(g_v.clone())
    torch.testing.assert_close(z, expected_z, rtol=1e-12, atol=0)
    torch.testing.assert_close(history, expected_history, rtol=1e-12, atol=1e-15)
