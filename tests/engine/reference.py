"""Brute-force reference for the attribution engine, written without reading the engine.

Why it exists: an exactness test must compare the engine against an independent computation. Here
everything is done the slow, obvious way in float64 with torch.func: explicit per-row gradients
(vmap of grad over rows, each row run as a batch of one), explicit target gradients, an explicit
Hessian-vector product per target (forward-over-reverse), the optimizer's update linearized from
torch.optim's own update rules, and per-token splits as derivatives along the value direction (by
predicted token, and by the position where the weights were used, via per-position perturbations). `plain_training_step` is ordinary PyTorch training (forward, backward,
clip_grad_norm_, optimizer.step) and serves as ground truth for the real parameter change.

Definitions (see /work/shared/DESIGN.md section 1 and the engine brief):
  token_mean:  L = sum over rows of (row's summed token loss) / (all loss tokens of the step)
  sample_mean: L = mean over rows of (row's mean token loss)
  g_i = gradient of row i's term in L;  k = min(1, max_norm / (||sum_i g_i|| + 1e-6))
  dw = h + sum_i d_i with d_i = -c * g_i (elementwise c per parameter, clip factor included)
  first order  phi_ik = g_i . (c * g_vk)
  second order phi_ik = g_i . (c * (g_vk + H_vk u)),  u = h + D/2,  D = sum_j d_j
  history_k = -h . g_vk
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from itertools import combinations
from typing import Callable, Mapping, Protocol, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, jvp, vmap

Params = dict[str, Tensor]
Batch = Mapping[str, Tensor]
CLIP_EPS = 1e-6  # the epsilon torch.nn.utils.clip_grad_norm_ adds to the norm


# ----------------------------------------------------------------------------------------------------
# Losses: one function per task gives each row's per-position losses and which positions count.
# ----------------------------------------------------------------------------------------------------
class TokenLoss(Protocol):
    """Per-position losses of a batch: (B, P) losses (0 where masked) and a (B, P) bool mask."""

    def __call__(self, call: Callable[..., object], batch: Batch) -> tuple[Tensor, Tensor]: ...


def causal_lm_token_losses(call: Callable[..., object], batch: Batch) -> tuple[Tensor, Tensor]:
    """Cross-entropy of logits[:, t] against labels[:, t+1]; column t of the result is logit position t.

    The last input position predicts nothing, so the result has T-1 columns."""
    out = call(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    logits = out.logits if hasattr(out, "logits") else out
    shifted_logits = logits[:, :-1, :]
    shifted_labels = batch["labels"][:, 1:]
    mask = shifted_labels != -100
    safe_labels = torch.where(mask, shifted_labels, torch.zeros_like(shifted_labels))
    losses = nn.functional.cross_entropy(
        shifted_logits.transpose(1, 2), safe_labels, reduction="none"
    )
    return losses * mask, mask


def classification_token_losses(call: Callable[..., object], batch: Batch) -> tuple[Tensor, Tensor]:
    """One 'token' per row: cross-entropy of the class logits against the row's label."""
    logits = call(batch["inputs"])
    labels = batch["labels"]
    mask = labels != -100
    safe_labels = torch.where(mask, labels, torch.zeros_like(labels))
    losses = nn.functional.cross_entropy(logits, safe_labels, reduction="none")
    return (losses * mask)[:, None], mask[:, None]


# ----------------------------------------------------------------------------------------------------
# Parameters and functional calls
# ----------------------------------------------------------------------------------------------------
def trainable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """Named trainable parameters; a tied parameter appears once (named_parameters deduplicates)."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def detached(params: Mapping[str, Tensor]) -> Params:
    return {name: p.detach() for name, p in params.items()}


def functional(model: nn.Module, params: Params) -> Callable[..., object]:
    """A callable that runs `model` with `params` substituted (tied weights follow automatically)."""

    def call(*args: object, **kwargs: object) -> object:
        return functional_call(model, params, args, kwargs)

    return call


def dot(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> Tensor:
    return sum((a[n] * b[n]).sum() for n in a)


def batched_dot(rows: Mapping[str, Tensor], vec: Mapping[str, Tensor]) -> Tensor:
    """(R,) dot products of per-row tensors (R, *shape) with one tensor per parameter."""
    return sum((rows[n] * vec[n].unsqueeze(0)).flatten(1).sum(1) for n in rows)


def slice_rows(batch: Batch, index: int) -> dict[str, Tensor]:
    return {k: v[index : index + 1] for k, v in batch.items()}


# ----------------------------------------------------------------------------------------------------
# Gradients
# ----------------------------------------------------------------------------------------------------
def row_weights(masks: Sequence[Tensor], reduction: str) -> list[Tensor]:
    """Per-row factor turning a row's summed token loss into its term of the step loss L."""
    counts = [m.sum(1).to(torch.float64) for m in masks]
    n_rows = sum(c.numel() for c in counts)
    if reduction == "token_mean":
        total = sum(c.sum() for c in counts)
        return [torch.full_like(c, 1.0) / total for c in counts]
    if reduction == "sample_mean":
        return [1.0 / (c * n_rows) for c in counts]
    raise ValueError(f"unknown reduction {reduction!r}")


def per_row_summed_gradients(
    model: nn.Module, params: Params, batch: Batch, token_losses: TokenLoss
) -> Params:
    """Gradient of each row's summed token loss, (R, *shape), each row run alone as a batch of one."""

    def row_loss(p: Params, row: dict[str, Tensor]) -> Tensor:
        losses, _ = token_losses(functional(model, p), {k: v.unsqueeze(0) for k, v in row.items()})
        return losses.sum()

    return vmap(grad(row_loss), in_dims=(None, 0))(params, dict(batch))


def loss_split_values(
    model: nn.Module, params: Params, batch: Batch, token_losses: TokenLoss, direction: Params
) -> Tensor:
    """(R, P) derivative of each loss position's own loss along `direction` (split by predicted token).

    Column p is the logit position p, i.e. the loss of predicting label p+1."""

    def losses(p: Params) -> Tensor:
        return token_losses(functional(model, p), batch)[0]

    return jvp(losses, (params,), (direction,))[1]


def use_split_values(
    model: nn.Module, params: Params, batch: Batch, token_losses: TokenLoss, direction: Params
) -> Tensor:
    """(R, T) derivative of each row's summed loss when only the parameters' use AT POSITION t moves.

    Every parametrized module of a transformer acts position by position, so moving its parameters by
    eps_t * direction at position t alone changes its output there by eps_t * (jvp of the module along
    direction). Forward hooks add that term; the gradient of the loss with respect to eps is the split of
    g_i . direction over the positions where the weights were used (attention carries a position's
    effect to later losses). Summed over positions it equals g_i . direction."""
    named = trainable_parameters(model)
    name_of = {id(p): n for n, p in named.items()}
    # resolved before functional_call swaps the module's parameters for `params`
    owned = {
        m: {k: name_of[id(p)] for k, p in m.named_parameters(recurse=False) if id(p) in name_of}
        for m in model.modules()
    }
    owned = {m: names for m, names in owned.items() if names}
    input_ids = batch["input_ids"]
    eps = torch.zeros(input_ids.shape, dtype=torch.float64, requires_grad=True)
    busy = {"flag": False}

    def hook(module: nn.Module, inputs: tuple, output: Tensor) -> Tensor | None:
        if busy["flag"]:
            return None
        names = owned[module]
        theta = {k: params[n] for k, n in names.items()}
        tangent_in = {k: direction[n] for k, n in names.items()}
        busy["flag"] = True
        try:
            _, tangent = jvp(lambda th: functional_call(module, th, inputs), (theta,), (tangent_in,))
        finally:
            busy["flag"] = False
        return output + eps.unsqueeze(-1).to(output.dtype) * tangent

    handles = [m.register_forward_hook(hook) for m in owned]
    try:
        losses, _ = token_losses(functional(model, params), batch)
        (split,) = torch.autograd.grad(losses.sum(), [eps])
    finally:
        for handle in handles:
            handle.remove()
    return split


def target_losses(model: nn.Module, params: Params, targets: Batch, token_losses: TokenLoss) -> Tensor:
    """(K,) mean loss over each target's own loss positions (eval mode)."""
    losses, mask = token_losses(functional(model, params), targets)
    return losses.sum(1) / mask.sum(1)


def target_gradient(
    model: nn.Module, params: Params, targets: Batch, index: int, token_losses: TokenLoss
) -> Params:
    def loss(p: Params) -> Tensor:
        return target_losses(model, p, slice_rows(targets, index), token_losses)[0]

    return grad(loss)(params)


def target_hvp(
    model: nn.Module,
    params: Params,
    targets: Batch,
    index: int,
    token_losses: TokenLoss,
    vector: Params,
) -> Params:
    """H_v vector for target `index`, by forward-over-reverse (jvp of grad)."""

    def loss(p: Params) -> Tensor:
        return target_losses(model, p, slice_rows(targets, index), token_losses)[0]

    _, hv = jvp(grad(loss), (params,), (vector,))
    return hv


def target_hvp_double_backward(
    model: nn.Module,
    params: Params,
    targets: Batch,
    index: int,
    token_losses: TokenLoss,
    vector: Params,
) -> Params:
    """Same product by double backward with plain autograd (a cross-check of `target_hvp`)."""
    leaves = {n: p.detach().clone().requires_grad_(True) for n, p in params.items()}
    loss = target_losses(model, leaves, slice_rows(targets, index), token_losses)[0]
    names = list(leaves)
    first = torch.autograd.grad(loss, [leaves[n] for n in names], create_graph=True)
    second = torch.autograd.grad(first, [leaves[n] for n in names], grad_outputs=[vector[n] for n in names])
    return dict(zip(names, second))


# ----------------------------------------------------------------------------------------------------
# Optimizer linearization: dw = h + sum_i (-c * g_i), from torch.optim's update rules
# ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Linearization:
    scale: Params  # c: the elementwise factor multiplying each player's gradient (clip factor included)
    history: Params  # h: the part of dw no player of this batch owns


def linearize_optimizer(
    optimizer: torch.optim.Optimizer,
    named_params: Mapping[str, nn.Parameter],
    batch_gradient: Params,
    clip_factor: float,
    adam_denominator: str = "current",
) -> Linearization:
    """c and h per parameter for the optimizer's NEXT step, given the clipped-gradient factor k.

    SGD, g' = k g_B + wd w:
      no momentum or no buffer yet: dw = -lr (1 + mu*nesterov) g'
      buffer b:   b' = mu b + (1-damp) g';  dw = -lr b'                      (plain)
                  dw = -lr (g' + mu b') = -lr (1 + mu(1-damp)) g' - lr mu^2 b (nesterov)
    Adam/AdamW at step t, g' = k g_B (+ wd w for Adam's L2 decay):
      v_t = b2 v + (1-b2) g'^2, denom = sqrt(v_t)/sqrt(1-b2^t) + eps  (held at the value the step uses)
      dw = -lr wd w [AdamW] - lr/(1-b1^t) * (b1 m + (1-b1) g') / denom
    adam_denominator="previous" holds denom at sqrt(v_{t-1}/(1-b2^(t-1))) + eps instead (DESIGN.md's A_t;
    the first step, which has no v_0, uses "current", and so do elements whose v_{t-1} is exactly zero);
    then h + sum_i d_i is not the real update.
    """
    if adam_denominator not in ("current", "previous"):
        raise ValueError(f"unknown adam_denominator {adam_denominator!r}")
    name_of = {id(p): n for n, p in named_params.items()}
    scale: Params = {}
    history: Params = {}
    k = float(clip_factor)
    for group in optimizer.param_groups:
        for p in group["params"]:
            if id(p) not in name_of:
                continue
            name = name_of[id(p)]
            w = p.detach()
            g_b = batch_gradient[name]
            state = optimizer.state.get(p, {})
            lr = float(group["lr"])
            wd = float(group.get("weight_decay", 0.0))
            if group.get("maximize", False):
                raise NotImplementedError("maximize=True is outside the reference")
            if isinstance(optimizer, torch.optim.SGD):
                mu = float(group["momentum"])
                damp = float(group["dampening"])
                nesterov = bool(group["nesterov"])
                buf = state.get("momentum_buffer")
                if mu == 0.0:
                    factor, carried = 1.0, torch.zeros_like(w)
                elif buf is None:
                    factor, carried = (1.0 + mu) if nesterov else 1.0, torch.zeros_like(w)
                elif nesterov:
                    factor, carried = 1.0 + mu * (1.0 - damp), -lr * mu * mu * buf
                else:
                    factor, carried = 1.0 - damp, -lr * mu * buf
                scale[name] = torch.full_like(w, lr * factor * k)
                history[name] = carried - lr * factor * wd * w
            elif isinstance(optimizer, torch.optim.Adam):  # AdamW subclasses Adam in torch >= 2.x
                if group.get("amsgrad", False):
                    raise NotImplementedError("amsgrad is outside the reference")
                beta1, beta2 = (float(b) for b in group["betas"])
                eps = float(group["eps"])
                decoupled = bool(group.get("decoupled_weight_decay", False)) or isinstance(
                    optimizer, torch.optim.AdamW
                )
                step = int(float(state["step"])) + 1 if "step" in state else 1
                m_prev = state.get("exp_avg", torch.zeros_like(w))
                v_prev = state.get("exp_avg_sq", torch.zeros_like(w))
                l2 = torch.zeros_like(w) if decoupled else wd * w
                g_used = k * g_b + l2
                v_t = beta2 * v_prev + (1.0 - beta2) * g_used * g_used
                bc1 = 1.0 - beta1**step
                bc2 = 1.0 - beta2**step
                denom = v_t.sqrt() / math.sqrt(bc2) + eps
                if adam_denominator == "previous" and step > 1:
                    # elements never updated (v_{t-1} == 0) keep the current denominator
                    held = v_prev.sqrt() / math.sqrt(1.0 - beta2 ** (step - 1)) + eps
                    denom = torch.where(v_prev == 0, denom, held)
                scale[name] = lr * (1.0 - beta1) * k / (bc1 * denom)
                h = -lr * beta1 * m_prev / (bc1 * denom) - lr * (1.0 - beta1) * l2 / (bc1 * denom)
                if decoupled:
                    h = h - lr * wd * w
                history[name] = h
            else:
                raise NotImplementedError(f"{type(optimizer).__name__} is outside the reference")
    for name, p in named_params.items():  # parameters the optimizer does not own never move
        scale.setdefault(name, torch.zeros_like(p))
        history.setdefault(name, torch.zeros_like(p))
    return Linearization(scale=scale, history=history)


# ----------------------------------------------------------------------------------------------------
# The reference step
# ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ReferenceStep:
    values_first: Tensor  # (R, K)
    values_second: Tensor  # (R, K)
    # per-token splits, (R, positions, K), when asked: "loss_first" splits first-order values by the loss
    # position that is predicted (logit position, T-1 columns); "use_first" / "use_second" split first /
    # second-order values by the input position where the weights were used (T columns)
    per_token: dict[str, Tensor] | None
    history_term: Tensor  # (K,)
    target_loss: Tensor  # (K,)
    loss: float
    n_tokens: int
    grad_norm: float
    clip_factor: float
    row_gradients: Params  # g_i, (R, *shape)
    target_gradients: list[Params]  # g_vk
    linearization: Linearization
    predicted_update: Params  # h + sum_i d_i (the real update unless adam_denominator='previous')


def reference_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    micro_batches: Sequence[Batch],
    targets: Batch,
    token_losses: TokenLoss,
    reduction: str = "token_mean",
    max_grad_norm: float | None = None,
    per_token: bool = False,
    adam_denominator: str = "current",
) -> ReferenceStep:
    """Values of the optimizer's next step, computed by brute force. Reads model and optimizer only."""
    named = trainable_parameters(model)
    params = detached(named)
    was_training = model.training

    # Per-row gradients of each row's term of L (training mode, as the real step runs).
    model.train()
    masks = [token_losses(functional(model, params), mb)[1] for mb in micro_batches]
    weights = row_weights(masks, reduction)
    summed = [per_row_summed_gradients(model, params, mb, token_losses) for mb in micro_batches]
    rows: Params = {
        n: torch.cat([s[n] * _expand(w, s[n]) for s, w in zip(summed, weights)]) for n in params
    }
    with torch.no_grad():
        loss = sum(
            (token_losses(functional(model, params), mb)[0].sum(1) * w).sum()
            for mb, w in zip(micro_batches, weights)
        )

    # Clipping exactly as clip_grad_norm_.
    g_batch = {n: g.sum(0) for n, g in rows.items()}
    grad_norm = float(torch.sqrt(sum((g * g).sum() for g in g_batch.values())))
    k = 1.0 if max_grad_norm is None else min(1.0, max_grad_norm / (grad_norm + CLIP_EPS))

    lin = linearize_optimizer(optimizer, named, g_batch, k, adam_denominator)
    c, h = lin.scale, lin.history
    players_total = {n: -c[n] * g_batch[n] for n in params}  # D = sum_j d_j
    u = {n: h[n] + 0.5 * players_total[n] for n in params}

    # Targets: eval mode, weights before the step.
    model.eval()
    n_targets = next(iter(targets.values())).shape[0]
    with torch.no_grad():
        t_loss = target_losses(model, params, targets, token_losses)
    first_cols, second_cols, history_cols, g_vs = [], [], [], []
    splits: dict[str, list[Tensor]] = {"loss_first": [], "use_first": [], "use_second": []}
    for index in range(n_targets):
        g_v = target_gradient(model, params, targets, index, token_losses)
        hu = target_hvp(model, params, targets, index, token_losses, u)
        g_vs.append(g_v)
        first_cols.append(batched_dot(rows, {n: c[n] * g_v[n] for n in params}))
        second_cols.append(batched_dot(rows, {n: c[n] * (g_v[n] + hu[n]) for n in params}))
        history_cols.append(-dot(h, g_v))
        if per_token:
            model.train()
            first_dir = {n: c[n] * g_v[n] for n in params}
            second_dir = {n: c[n] * (g_v[n] + hu[n]) for n in params}
            for key, split, vec in (
                ("loss_first", loss_split_values, first_dir),
                ("use_first", use_split_values, first_dir),
                ("use_second", use_split_values, second_dir),
            ):
                parts = [
                    split(model, params, mb, token_losses, vec) * w[:, None]
                    for mb, w in zip(micro_batches, weights)
                ]
                splits[key].append(_pad_cat(parts))
            model.eval()
    model.train(was_training)

    return ReferenceStep(
        values_first=torch.stack(first_cols, 1),
        values_second=torch.stack(second_cols, 1),
        per_token={k: torch.stack(v, 2) for k, v in splits.items()} if per_token else None,
        history_term=torch.stack(history_cols),
        target_loss=t_loss,
        loss=float(loss),
        n_tokens=int(sum(int(m.sum()) for m in masks)),
        grad_norm=grad_norm,
        clip_factor=k,
        row_gradients=rows,
        target_gradients=g_vs,
        linearization=lin,
        predicted_update={n: h[n] + players_total[n] for n in params},
    )


def _pad_cat(parts: Sequence[Tensor]) -> Tensor:
    """Concatenate (rows, positions) blocks of micro-batches of different widths (zero-padded)."""
    width = max(p.shape[1] for p in parts)
    return torch.cat([nn.functional.pad(p, (0, width - p.shape[1])) for p in parts])


def _expand(weights: Tensor, like: Tensor) -> Tensor:
    return weights.reshape(weights.shape + (1,) * (like.dim() - weights.dim()))


# ----------------------------------------------------------------------------------------------------
# Plain training (ground truth for the real update) and cloning
# ----------------------------------------------------------------------------------------------------
def plain_training_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    micro_batches: Sequence[Batch],
    token_losses: TokenLoss,
    reduction: str = "token_mean",
    max_grad_norm: float | None = None,
) -> float:
    """Ordinary PyTorch training of one step with gradient accumulation; returns the step loss."""
    model.train()
    optimizer.zero_grad(set_to_none=True)
    with torch.no_grad():
        masks = [token_losses(model, mb)[1] for mb in micro_batches]
    weights = row_weights(masks, reduction)
    total = 0.0
    for mb, w in zip(micro_batches, weights):
        losses, _ = token_losses(model, mb)
        loss = (losses.sum(1) * w).sum()
        loss.backward()
        total += float(loss.detach())
    if max_grad_norm is not None:
        torch.nn.utils.clip_grad_norm_(
            [p for p in model.parameters() if p.requires_grad], max_grad_norm
        )
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return total


def clone_training_state(
    model: nn.Module, optimizer: torch.optim.Optimizer, build: Callable[[], nn.Module]
) -> tuple[nn.Module, torch.optim.Optimizer]:
    """A fresh model (from `build`) and optimizer with the same weights, hyperparameters and state.

    Built fresh instead of deep-copied so no hook the engine may have attached is copied along."""
    twin = build()
    twin.load_state_dict(model.state_dict())
    name_of = {id(p): n for n, p in model.named_parameters()}
    twin_params = dict(twin.named_parameters())
    groups = []
    for group in optimizer.param_groups:
        options = {k: v for k, v in group.items() if k != "params"}
        groups.append({"params": [twin_params[name_of[id(p)]] for p in group["params"]], **options})
    twin_opt = type(optimizer)(groups)
    # deep copy: load_state_dict keeps same-dtype tensors by reference, and a twin's step would then
    # update the original's momentum buffers in place
    twin_opt.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    return twin, twin_opt


def real_update(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    build: Callable[[], nn.Module],
    micro_batches: Sequence[Batch],
    token_losses: TokenLoss,
    reduction: str,
    max_grad_norm: float | None,
) -> Params:
    """dw of the real torch step, taken on a clone so the caller's model and optimizer do not move."""
    twin, twin_opt = clone_training_state(model, optimizer, build)
    before = {n: p.detach().clone() for n, p in trainable_parameters(twin).items()}
    plain_training_step(twin, twin_opt, micro_batches, token_losses, reduction, max_grad_norm)
    return {n: p.detach() - before[n] for n, p in trainable_parameters(twin).items()}


def relative_error(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> float:
    """||a - b|| / ||b|| over all parameters together."""
    num = sum(((a[n] - b[n]) ** 2).sum() for n in b)
    den = sum((b[n] ** 2).sum() for n in b)
    return float(torch.sqrt(num / den))


# ----------------------------------------------------------------------------------------------------
# Shapley ground truth
# ----------------------------------------------------------------------------------------------------
def exact_shapley(utility: Callable[[tuple[int, ...]], float], n_players: int) -> Tensor:
    """Exact Shapley values by enumerating all 2^n subsets (utility takes a sorted tuple of players)."""
    cache: dict[tuple[int, ...], float] = {}
    for size in range(n_players + 1):
        for subset in combinations(range(n_players), size):
            cache[subset] = float(utility(subset))
    phi = torch.zeros(n_players, dtype=torch.float64)
    for i in range(n_players):
        others = [j for j in range(n_players) if j != i]
        for size in range(n_players):
            weight = math.factorial(size) * math.factorial(n_players - size - 1) / math.factorial(n_players)
            for subset in combinations(others, size):
                with_i = tuple(sorted(subset + (i,)))
                phi[i] += weight * (cache[with_i] - cache[subset])
    return phi


def pearson(a: Tensor, b: Tensor) -> float:
    a = a.flatten().to(torch.float64) - a.to(torch.float64).mean()
    b = b.flatten().to(torch.float64) - b.to(torch.float64).mean()
    return float((a * b).sum() / torch.sqrt((a * a).sum() * (b * b).sum()))
