"""The causal LM loss: next-token losses without copying the logits, the same numbers as slicing them."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from provenance.engine import LMBatch
from provenance.engine.task import CausalLMTask

from .tiny_models import build_gpt2, lm_batch, lm_targets


def _sliced_token_losses(model, batch: LMBatch) -> torch.Tensor:
    """The textbook form: logits[:, t] against labels[:, t + 1], the logits sliced (and so copied)."""
    rows, length = batch.input_ids.shape
    positions = torch.arange(length).unsqueeze(0).expand(rows, length)
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=positions).logits
    shifted = logits[:, :-1, :]
    losses = F.cross_entropy(shifted.reshape(-1, shifted.shape[-1]), batch.labels[:, 1:].reshape(-1),
                             ignore_index=-100, reduction="none")
    return losses.view(rows, length - 1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kind", ["padded-batch", "targets-with-prompts"])
def test_token_losses_and_gradients_equal_the_sliced_logits_form_bit_for_bit(dtype, kind):
    """Runs recorded with the sliced form replay bit for bit: losses, their row sums and every gradient equal."""
    generator = torch.Generator().manual_seed(11)
    raw = lm_batch([9, 5, 12, 1], generator) if kind == "padded-batch" else lm_targets([(3, 4), (0, 6)], generator)
    batch = LMBatch(raw["input_ids"], raw["attention_mask"], raw["labels"])
    model = build_gpt2().to(dtype)
    ours = CausalLMTask()._token_losses(model, batch)
    sliced = _sliced_token_losses(model, batch)
    assert ours.shape == sliced.shape == (batch.input_ids.shape[0], batch.input_ids.shape[1] - 1)
    assert torch.equal(ours, sliced)
    sums, _ = CausalLMTask().loss_terms(model, batch)
    assert torch.equal(sums, sliced.sum(dim=1))
    weights = torch.rand(ours.shape, generator=generator, dtype=dtype)
    grads_ours = torch.autograd.grad((ours * weights).sum(), list(model.parameters()))
    grads_sliced = torch.autograd.grad((sliced * weights).sum(), list(model.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(grads_ours, grads_sliced))
    assert (ours[batch.labels[:, 1:] == -100] == 0).all()
