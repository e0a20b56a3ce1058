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



@pytest.mark.parametrize("module", [nn.Linear(6, 5), Conv1D(5, 6)], ids=["linear", "conv1d"])
@pytest.mark.parametrize("rows_per_piece", [1, 2, 3])
def test_kept_pieces_are_the_per_row_gradients_in_one_allocation(module, rows_per_piece, monkeypatch):
    """The stored route's pieces: each row's weight gradient (against float64 einsum), views of one allocation
    (so a large call's blocks are one mapping the system gets back when the step frees them), and the batch
    gradient summed piece by piece as runs were trained: first piece's rows in order, then each further
    piece's own sum added (a one-row piece added as it is)."""
    rule = linear.LinearRule() if isinstance(module, nn.Linear) else linear.GPT2Conv1DRule()
    monkeypatch.setattr(linear, "_ROW_PIECE_BYTES", rows_per_piece * module.weight.numel() * 4)
    g = torch.Generator().manual_seed(3)
    rows, tokens, din, dout = 7, 4, 6, 5
    saved = torch.randn(rows, tokens, din, generator=g)
    grad = torch.randn(rows, tokens, dout, generator=g)
    total, pieces = rule.grad_and_rows(module, "weight", saved, grad)

    assert [p.shape[0] for p in pieces] == [min(rows_per_piece, rows - i) for i in range(0, rows, rows_per_piece)]
    assert len({p.untyped_storage().data_ptr() for p in pieces}) == 1
    per_row = torch.einsum("rnd,rno->rod", saved.double(), grad.double())  # nn.Linear layout (dout, din)
    if isinstance(module, Conv1D):
        per_row = per_row.transpose(1, 2)  # Conv1D stores (din, dout)
    torch.testing.assert_close(torch.cat(pieces).double(), per_row, rtol=1e-5, atol=1e-6)

    expected = pieces[0][0].clone()
    for row in pieces[0][1:]:
        expected += row
    for piece in pieces[1:]:
        part = piece[0].clone()
        for row in piece[1:]:
            part += row
        expected += part
    assert torch.equal(total, expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("tokens", [3, 7, 64])
@pytest.mark.parametrize("chunk_elems", [1, 5000, 10**8], ids=["min-rows", "several", "whole"])
@pytest.mark.parametrize("piece_rows", [1, 2, 5])
def test_blocks_by_weight_rows_sum_as_the_kept_pieces(dtype, tokens, chunk_elems, piece_rows, monkeypatch):
    """A tied output head valued in backward forms its blocks a few weight rows at a time: the batch gradient
    is bit for bit the stored route's exactly where chunks_reproduce_pieces (checked on other, random numbers
    of these shapes) says so — the engine takes this route only there, so training does not depend on the
    route — and equal to rounding elsewhere; the dots are each row's gradient with the direction the callback
    gives for those weight rows (against float64 einsum), and the touched rows' dots re-derived after backward
    likewise."""
    # Pieces of one row (the output head at the benchmark size), two, or all five (a small head: formed whole)
    monkeypatch.setattr(linear, "_ROW_PIECE_BYTES", piece_rows * 300 * 16 * torch.finfo(dtype).bits // 8)
    module = nn.Linear(16, 300, bias=False).to(dtype)
    rule = linear.LinearRule()
    g = torch.Generator().manual_seed(5)
    rows, k = 5, 3
    saved = torch.randn(rows, tokens, 16, generator=g, dtype=dtype)
    grad = torch.randn(rows, tokens, 300, generator=g, dtype=dtype)
    z = torch.randn(k, 300, 16, generator=g, dtype=dtype)
    seen = []

    def direction_of(weight_rows, grad_rows):
        seen.append((weight_rows.start, weight_rows.stop))
        return z[:, weight_rows]

    linear.release_scratch()
    total, values = rule.grad_and_dot_by_weight_rows(module, saved, grad, direction_of, chunk_elems)
    stored, _ = rule.grad_and_rows(module, "weight", saved, grad)
    assert torch.equal(total, stored) == rule.chunks_reproduce_pieces(module, rows, tokens, dtype, chunk_elems)
    torch.testing.assert_close(total.double(), torch.einsum("rnd,rno->od", saved.double(), grad.double()),
                               rtol=1e-12 if dtype == torch.float64 else 1e-5, atol=1e-12 if dtype == torch.float64 else 1e-5)
    widths = [stop - start for start, stop in seen]
    assert seen[0][0] == 0 and seen[-1][1] == 300 and all(a[1] == b[0] for a, b in zip(seen, seen[1:]))
    assert min(widths) >= linear._MIN_CHUNK_ROWS and (len(seen) > 1) == (chunk_elems < 10**8 and piece_rows <= 2)
    per_row = torch.einsum("rnd,rno->rod", saved.double(), grad.double())
    expected = torch.einsum("rod,kod->rk", per_row, z.double())
    tol = 1e-12 if dtype == torch.float64 else 1e-4
    torch.testing.assert_close(values.double(), expected, rtol=tol, atol=tol)
    index = torch.tensor([0, 7, 64, 65, 299])
    touched = rule.dot_weight_rows(module, saved, grad, z[:, index], index, budget_elems=rows * 16 * 2)
    torch.testing.assert_close(touched.double(), torch.einsum("rod,kod->rk", per_row[:, index], z.double()[:, index]),
                               rtol=tol, atol=tol)
