"""Second order's Hessian-vector products (engine._hvps): formed as vector-Jacobian products of the targets'
gradients with vectors handed over only when backward reaches them, and consumed parameter by parameter
inside the last target's backward, so the kept per-row blocks are freed there (the step's memory peak)."""

from __future__ import annotations

import torch
from torch import nn

import provenance.engine.engine as engine_module
from provenance.engine import AttributionEngine, EngineConfig
from provenance.engine.engine import _hand_over_when_reached

from .scenarios import gpt2_batch, targets_for, to_engine
from .tiny_models import build_gpt2


class _TiedNet(nn.Module):
    """Embedding tied with an output head, a LayerNorm (one backward node yields its weight and bias
    gradients) and a nonlinearity, so the Hessian has cross terms everywhere."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(11, 6)
        self.norm = nn.LayerNorm(6)
        self.hidden = nn.Linear(6, 6)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = torch.tanh(self.hidden(self.norm(self.embed(ids))))
        return torch.log_softmax(x @ self.embed.weight.T, dim=-1)[..., 3].sum()


def test_products_equal_hessian_vector_products():
    torch.manual_seed(0)
    net = _TiedNet().double()
    ids = torch.tensor([[1, 4, 4, 7], [2, 9, 0, 3]])
    params = list(net.parameters())
    vectors = [torch.randn_like(p) for p in params]
    formed: list[int] = []

    def vector(i: int) -> torch.Tensor:
        formed.append(i)
        return vectors[i]

    grads = list(torch.autograd.grad(net(ids), params, create_graph=True))
    edges, stand_ins, handles = _hand_over_when_reached(grads, vector)
    assert all(g is None for g in grads)  # only their places in the graph are kept
    assert formed == []  # nothing formed before backward reaches it
    try:
        products = torch.autograd.grad(edges, params, grad_outputs=stand_ins)
    finally:
        for handle in handles:
            handle.remove()
    assert sorted(formed) == list(range(len(params)))  # each vector formed once

    # Independent of double backward: central differences of the gradient along the vectors (float64).
    originals = [p.detach().clone() for p in params]

    def gradient_at(shift: float) -> list[torch.Tensor]:
        with torch.no_grad():
            for p, v in zip(params, vectors):
                p.add_(v, alpha=shift)
        try:
            return list(torch.autograd.grad(net(ids), params))
        finally:
            with torch.no_grad():
                for p, original in zip(params, originals):
                    p.copy_(original)

    step = 1e-5
    differences = [(a - b) / (2 * step) for a, b in zip(gradient_at(step), gradient_at(-step))]
    scale = max(d.abs().max() for d in differences)
    for got, expected in zip(products, differences):
        assert (got - expected).abs().max() <= 1e-6 * scale
    # And the same numbers, bit for bit, as the textbook form d(g . u)/dw the engine used before.
    grads = torch.autograd.grad(net(ids), params, create_graph=True)
    textbook = torch.autograd.grad(sum((g * v).sum() for g, v in zip(grads, vectors)), params)
    for got, expected in zip(products, textbook):
        assert torch.equal(got, expected)


def test_last_target_values_each_parameter_inside_its_backward(monkeypatch):
    """Each parameter is valued (its kept blocks released) as soon as its products are complete, inside the
    last target's second backward, not after all products were collected."""
    inside: list[bool] = []
    value_late = engine_module.AttributionEngine._value_late

    def spy(self, *args, **kwargs):
        inside.append(torch._C._current_graph_task_id() != -1)
        return value_late(self, *args, **kwargs)

    monkeypatch.setattr(engine_module.AttributionEngine, "_value_late", spy)
    model = build_gpt2(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    engine = AttributionEngine(model, optimizer, EngineConfig(order=2))
    engine.set_targets(to_engine("gpt2", targets_for("gpt2", torch.Generator().manual_seed(99), k=1)))
    with engine:
        engine.step([gpt2_batch(0)])
    assert len(inside) == len(list(model.parameters()))
    assert all(inside)
