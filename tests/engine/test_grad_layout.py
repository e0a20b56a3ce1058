"""The batch gradients the engine forms are handed to the optimizer in each parameter's own memory layout,
and runs recorded before that (contiguous_grads=False) get their old layout, and numbers, back."""

from __future__ import annotations

import pytest
import torch
from transformers.pytorch_utils import Conv1D

from provenance.engine import AttributionEngine, CausalLMTask, EngineConfig

from .scenarios import gpt2_batch, targets_for, to_engine
from .tiny_models import build_gpt2


def _targets(k: int):
    return to_engine("gpt2", targets_for("gpt2", torch.Generator().manual_seed(99), k=k))


def _step_grads(contiguous: bool, model_seed: int = 0, dtype: torch.dtype = torch.float64) -> dict[str, torch.Tensor]:
    """p.grad of every parameter as the optimizer receives it in one engine step (Adam, one target, no
    clipping: clip_grad_norm_ scales .grad in place)."""
    model = build_gpt2(model_seed).to(dtype)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    engine = AttributionEngine(model, optimizer, EngineConfig(contiguous_grads=contiguous, max_grad_norm=None))
    engine.set_targets(_targets(1))
    seen: dict[str, torch.Tensor] = {}

    def spy(*args, **kwargs):
        seen.update({name: p.grad.clone(memory_format=torch.preserve_format) for name, p in model.named_parameters()})

    optimizer.step = spy
    with engine:
        engine.step([gpt2_batch(1)])
    return seen


def test_default_gradients_are_contiguous_in_the_parameters_layout():
    grads = _step_grads(contiguous=True)
    assert grads and all(g.is_contiguous() for g in grads.values()), [n for n, g in grads.items() if not g.is_contiguous()]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_old_runs_get_conv1d_gradients_as_transposed_views_with_the_old_numbers(dtype):
    """The layout before contiguous_grads: per-row blocks (rows, out, in) = b^T a, summed over rows, handed
    over as a transposed view. Formed here independently from autograd's per-module output gradients. The
    engine now forms a^T b: the old numbers come back bit for bit where the machine's matmul gives each
    element of b^T a as of a^T b (float32 on every machine seen here, recorded runs' precision; float64 not on
    an AMD EPYC), else equal to rounding."""
    model = build_gpt2(0).to(dtype)
    inputs, outputs = {}, {}
    for name, module in model.named_modules():
        if isinstance(module, Conv1D):
            def keep(mod, args, out, name=name):
                inputs[name] = args[0].detach()
                out.register_hook(lambda g: outputs.__setitem__(name, g.detach()))
            module.register_forward_hook(keep)
    batch = gpt2_batch(1)
    sums, weights = CausalLMTask().loss_terms(model, batch)
    (sums.sum() / weights.sum()).backward()

    old = _step_grads(contiguous=False, dtype=dtype)
    for name in inputs:
        a, b = inputs[name], outputs[name]
        expected = torch.bmm(b.transpose(1, 2), a).sum(dim=0).T  # (in, out) view of (out, in) memory
        got = old[f"{name}.weight"]
        assert not got.is_contiguous() and got.T.is_contiguous(), name
        symmetric = torch.equal(torch.bmm(b.transpose(1, 2), a), torch.bmm(a.transpose(1, 2), b).transpose(1, 2))
        assert symmetric or dtype == torch.float64, name  # float32: what recorded runs were trained in
        if symmetric:
            assert torch.equal(got, expected), name
        else:
            torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-15)
    new = _step_grads(contiguous=True, dtype=dtype)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    for name, grad in old.items():
        torch.testing.assert_close(new[name], grad, rtol=tol, atol=tol * 1e-3)


@pytest.mark.parametrize("contiguous", [True, False])
def test_values_do_not_depend_on_the_layout(contiguous):
    """The layout changes how the optimizer reads gradients, never a value (float64, tight tolerance)."""
    def values(flag):
        model = build_gpt2(0)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        with AttributionEngine(model, optimizer, EngineConfig(contiguous_grads=flag, order=2)) as engine:
            engine.set_targets(_targets(2))
            return [engine.step([gpt2_batch(s)]).values for s in range(3)]

    for got, ref in zip(values(contiguous), values(True)):
        torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-12)
