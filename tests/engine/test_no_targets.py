"""Training without targets sums every batch gradient exactly as training with targets does: a run trained
with none is later replayed with some, and the replay must reproduce its losses bit for bit."""

from __future__ import annotations

import pytest
import torch

from provenance.engine import AttributionEngine, EngineConfig
from provenance.engine.rules import linear

from .scenarios import gpt2_batch, targets_for, to_engine
from .tiny_models import VOCAB, build_gpt2


def _weights_after_steps(k: int, config: EngineConfig, micro_batches: int) -> dict[str, torch.Tensor]:
    model = build_gpt2(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    with AttributionEngine(model, optimizer, config) as engine:
        if k:
            engine.set_targets(to_engine("gpt2", targets_for("gpt2", torch.Generator().manual_seed(99), k=k)))
        for step in range(3):
            engine.step([gpt2_batch(10 * step + m) for m in range(micro_batches)])
    return {name: p.detach().clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize(
    "order, denominator, micro_batches",
    [(1, "current", 1), (2, "current", 1), (1, "previous", 1), (1, "current", 2)],
)
def test_weights_are_bitwise_the_same_with_and_without_targets(monkeypatch, order, denominator, micro_batches):
    # Pieces of two output-head rows: kept per-row gradients then come in several pieces of several rows, as
    # the output head's do at real sizes (GPT-2 with vocabulary 4096 and width 128: 8 rows a piece). Fails
    # before the fix for every case here.
    monkeypatch.setattr(linear, "_ROW_PIECE_BYTES", 2 * VOCAB * 32 * 8)
    config = EngineConfig(order=order, adam_denominator=denominator, max_grad_norm=1.0)
    without = _weights_after_steps(0, config, micro_batches)
    for k in (1, 3):
        valued = _weights_after_steps(k, config, micro_batches)
        differing = [name for name in without if not torch.equal(without[name], valued[name])]
        assert not differing, f"K={k}: {differing}"
