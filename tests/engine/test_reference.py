"""Checks of the brute-force reference itself, against the real torch step and finite differences.

The exactness tests trust the reference; these tests are why: its linearized update equals torch's real
optimizer step, its per-row gradients sum to the autograd batch gradient, its Hessian-vector products
agree with double backward and with finite differences, and its Shapley enumeration reproduces a
utility whose Shapley values are known in closed form."""

from __future__ import annotations

import pytest
import torch

from . import reference as ref
from .tiny_models import BUILDERS, image_batch, lm_batch, lm_targets

OPTIMIZERS = {
    "sgd": lambda p: torch.optim.SGD(p, lr=0.1),
    "sgd_momentum_wd": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=0.01),
    "sgd_dampening": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.8, dampening=0.3, weight_decay=0.02),
    "sgd_nesterov": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01),
    "adam_l2": lambda p: torch.optim.Adam(p, lr=1e-2, weight_decay=0.05),
    "adamw": lambda p: torch.optim.AdamW(p, lr=1e-2, betas=(0.8, 0.95), weight_decay=0.1),
}


def _batches(model_name: str, gen: torch.Generator) -> list[dict[str, torch.Tensor]]:
    if model_name == "cnn":
        return [image_batch(4, gen), image_batch(3, gen)]
    return [lm_batch([9, 5, 7], gen), lm_batch([6, 8], gen)]


@pytest.mark.parametrize("opt_name", list(OPTIMIZERS))
@pytest.mark.parametrize("model_name", ["gpt2", "cnn"])
def test_linearized_update_equals_real_torch_step(model_name: str, opt_name: str) -> None:
    """h + sum_i d_i == the real optimizer step's dw, at the first step and after the state is built."""
    build = BUILDERS[model_name]
    token_losses = ref.classification_token_losses if model_name == "cnn" else ref.causal_lm_token_losses
    model = build()
    optimizer = OPTIMIZERS[opt_name](model.parameters())
    gen = torch.Generator().manual_seed(1)
    targets = image_batch(1, gen) if model_name == "cnn" else lm_targets([(3, 4)], gen)
    for step in range(3):
        batches = _batches(model_name, gen)
        if step == 1:  # check the first step (empty state) and one with the state built
            ref.plain_training_step(model, optimizer, batches, token_losses, "token_mean", 0.05)
            continue
        result = ref.reference_step(
            model, optimizer, batches, targets, token_losses, "token_mean", max_grad_norm=0.05
        )
        assert result.clip_factor < 1.0
        dw = ref.real_update(model, optimizer, build, batches, token_losses, "token_mean", 0.05)
        assert ref.relative_error(result.predicted_update, dw) < 1e-12, (step, opt_name)
        ref.plain_training_step(model, optimizer, batches, token_losses, "token_mean", 0.05)


@pytest.mark.parametrize("reduction", ["token_mean", "sample_mean"])
def test_per_row_gradients_sum_to_batch_gradient(reduction: str) -> None:
    model = BUILDERS["llama"]()
    gen = torch.Generator().manual_seed(2)
    batches = _batches("llama", gen)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    targets = lm_targets([(2, 3)], gen)
    result = ref.reference_step(model, optimizer, batches, targets, ref.causal_lm_token_losses, reduction)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    loss = ref.plain_training_step(model, optimizer, batches, ref.causal_lm_token_losses, reduction)
    batch_grad = {n: before[n] - p.detach() for n, p in model.named_parameters()}  # lr = 1, no decay
    row_sum = {n: g.sum(0) for n, g in result.row_gradients.items()}
    assert ref.relative_error(row_sum, batch_grad) < 1e-12
    assert abs(result.loss - loss) < 1e-12 * abs(loss)


def test_per_token_splits_sum_to_row_values_and_localize() -> None:
    """Both per-token splits sum to g_i . V; each is checked where its meaning is unambiguous."""
    model = BUILDERS["gpt2"]()
    gen = torch.Generator().manual_seed(3)
    batch = lm_batch([7, 4, 6], gen)
    params = ref.detached(ref.trainable_parameters(model))
    direction = {n: torch.randn(p.shape, generator=gen, dtype=p.dtype) for n, p in params.items()}
    rows = ref.per_row_summed_gradients(model, params, batch, ref.causal_lm_token_losses)
    row_values = ref.batched_dot(rows, direction)
    by_loss = ref.loss_split_values(model, params, batch, ref.causal_lm_token_losses, direction)
    by_use = ref.use_split_values(model, params, batch, ref.causal_lm_token_losses, direction)
    assert torch.allclose(by_loss.sum(1), row_values, rtol=1e-12, atol=0)
    assert torch.allclose(by_use.sum(1), row_values, rtol=1e-12, atol=0)
    assert not torch.allclose(by_use[:, :-1], by_loss, rtol=1e-3, atol=0)  # two different definitions
    _, mask = ref.causal_lm_token_losses(model, batch)
    assert (by_loss[~mask] == 0).all()
    # A direction on the position embeddings only: row t of wpe is used at position t alone, so the use
    # split at t is the derivative along direction[wpe][t], read off the per-row gradient directly.
    wpe_only = {n: (v if n == "transformer.wpe.weight" else torch.zeros_like(v)) for n, v in direction.items()}
    by_use_wpe = ref.use_split_values(model, params, batch, ref.causal_lm_token_losses, wpe_only)
    width = batch["input_ids"].shape[1]
    expected = (rows["transformer.wpe.weight"][:, :width] * direction["transformer.wpe.weight"][:width]).sum(-1)
    assert torch.allclose(by_use_wpe, expected, rtol=1e-10, atol=1e-15)


@pytest.mark.parametrize("model_name", ["gpt2", "llama", "cnn"])
def test_hvp_matches_double_backward_and_finite_differences(model_name: str) -> None:
    model = BUILDERS[model_name]()
    model.eval()
    gen = torch.Generator().manual_seed(4)
    targets = image_batch(2, gen) if model_name == "cnn" else lm_targets([(3, 5), (1, 2)], gen)
    token_losses = ref.classification_token_losses if model_name == "cnn" else ref.causal_lm_token_losses
    params = ref.detached(ref.trainable_parameters(model))
    vector = {n: torch.randn(p.shape, generator=gen, dtype=p.dtype) for n, p in params.items()}
    norm = float(torch.sqrt(sum((v * v).sum() for v in vector.values())))
    vector = {n: v / norm for n, v in vector.items()}
    for index in range(2):
        hv = ref.target_hvp(model, params, targets, index, token_losses, vector)
        hv_db = ref.target_hvp_double_backward(model, params, targets, index, token_losses, vector)
        assert ref.relative_error(hv, hv_db) < 1e-10
        # central difference of the gradient along the vector
        step = 1e-4
        plus = ref.target_gradient(model, {n: p + step * vector[n] for n, p in params.items()}, targets, index, token_losses)
        minus = ref.target_gradient(model, {n: p - step * vector[n] for n, p in params.items()}, targets, index, token_losses)
        fd = {n: (plus[n] - minus[n]) / (2 * step) for n in params}
        assert ref.relative_error(hv, fd) < 1e-6


def test_exact_shapley_of_known_games() -> None:
    weights = torch.tensor([0.3, -1.2, 2.0, 0.5, 0.0])
    pair = torch.randn(5, 5, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    pair = pair + pair.T
    pair.fill_diagonal_(0.0)

    def utility(subset: tuple[int, ...]) -> float:
        idx = list(subset)
        linear = float(weights[idx].sum()) if idx else 0.0
        quadratic = float(pair[idx][:, idx].sum()) / 2 if idx else 0.0
        return linear + quadratic

    phi = ref.exact_shapley(utility, 5)
    # additive part goes to its player, each pair term split equally: phi_i = w_i + 1/2 sum_j pair_ij
    expected = weights.to(torch.float64) + 0.5 * pair.sum(1)
    assert torch.allclose(phi, expected, atol=1e-12)
    assert abs(float(phi.sum()) - utility(tuple(range(5)))) < 1e-12  # efficiency


def test_clone_does_not_share_optimizer_state() -> None:
    model = BUILDERS["cnn"]()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    gen = torch.Generator().manual_seed(6)
    batches = [image_batch(4, gen)]
    ref.plain_training_step(model, optimizer, batches, ref.classification_token_losses)
    buffers = [optimizer.state[p]["momentum_buffer"].clone() for p in model.parameters()]
    ref.real_update(model, optimizer, BUILDERS["cnn"], batches, ref.classification_token_losses, "token_mean", None)
    for p, saved in zip(model.parameters(), buffers):
        assert torch.equal(optimizer.state[p]["momentum_buffer"], saved)


@pytest.mark.parametrize("model_name", ["gpt2", "llama"])
def test_language_models_are_causal_and_ignore_padding(model_name: str) -> None:
    """Guards the test models themselves: a later token or a padding token never changes earlier logits."""
    model = BUILDERS[model_name]()
    model.eval()
    gen = torch.Generator().manual_seed(7)
    batch = lm_batch([8, 8], gen)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        changed = batch["input_ids"].clone()
        changed[:, 5] = (changed[:, 5] + 1) % 97
        logits_changed = model(input_ids=changed, attention_mask=batch["attention_mask"]).logits
        assert torch.equal(logits[:, :5], logits_changed[:, :5])
        assert not torch.allclose(logits[:, 5:], logits_changed[:, 5:])
        mask = batch["attention_mask"].clone()
        mask[:, 6:] = 0
        logits_padded = model(input_ids=changed, attention_mask=mask).logits
        assert torch.allclose(logits_padded[:, :6], logits_changed[:, :6], rtol=0, atol=1e-13)
