"""Dots of kept per-row blocks (in pieces of rows) with K directions, against a direct float64 contraction."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from provenance.engine.rules import linear


def _pieces(rows_per_piece: list[int], shape: tuple[int, int], seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(rows, *shape, generator=g, dtype=torch.float64) for rows in rows_per_piece]


@pytest.mark.parametrize("module", [nn.Linear(6, 5), Conv1D(5, 6)], ids=["linear", "conv1d"])
@pytest.mark.parametrize("k", [1, 2, 8])
def test_dot_rows_equals_a_direct_contraction(module, k):
    rule = linear.LinearRule() if isinstance(module, nn.Linear) else linear.GPT2Conv1DRule()
    shape = tuple(module.weight.shape)
    pieces = _pieces([1, 1, 1, 2, 1, 1], shape)
    z = torch.randn(k, *shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    got = rule.dot_rows(module, "weight", pieces, z)
    expected = torch.einsum("rij,kij->rk", torch.cat(pieces), z)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)

