"""The optimizer's step written as dw = h + sum_i d_i with d_i = -coef * k * g_i.

g_i is player i's (unclipped, loss-weighted) gradient, k the clipping factor, coef a scalar or an
elementwise tensor per parameter, and h the part of the update no player of this batch owns (momentum
carried from earlier batches, weight decay). This must reproduce torch's own update, which the tests check.

Adam/AdamW (fixed-state utility: the moments are held, so the update is linear in the batch gradient):
- "previous": A_t = sqrt(v_{t-1} / (1 - beta2^(t-1))) + eps, as DESIGN.md and the Adam follow-up paper. It
  is known before the step, so values can be formed inside backward. h + sum_i d_i then differs from the
  real update by the change of the denominator; the ledger reports that remainder.
- "current": the denominator the optimizer really applies, sqrt(v_t / (1 - beta2^t)) + eps with v_t
  including this batch: h + sum_i d_i is exactly the real update. Needs the clipped batch gradient.
An optimizer's first step has no v_{t-1}, so it always uses "current".
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import UnsupportedOptimizerError


@dataclass
class Linearization:
    coef: float | torch.Tensor  # d_i = -coef * (k g_i)
    history: torch.Tensor  # h
    lr: float


def _scalar(value) -> float:
    return float(value.item() if isinstance(value, torch.Tensor) else value)


def check_optimizer(optimizer: torch.optim.Optimizer) -> None:
    """Refuse optimizers and options without an exact linearization here."""
    if isinstance(optimizer, torch.optim.SGD):
        for group in optimizer.param_groups:
            if group.get("maximize"):
                raise UnsupportedOptimizerError("SGD(maximize=True) is not supported; minimize the loss instead")
        return
    if isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)):
        for group in optimizer.param_groups:
            if group.get("amsgrad"):
                raise UnsupportedOptimizerError(
                    "Adam/AdamW with amsgrad=True is not supported (its max over second moments has no exact "
                    "per-step linearization here); use amsgrad=False"
                )
            if group.get("maximize"):
                raise UnsupportedOptimizerError("Adam(maximize=True) is not supported")
        return
    raise UnsupportedOptimizerError(
        f"optimizer {type(optimizer).__name__} is not supported; use torch.optim.SGD, Adam or AdamW"
    )


def _decoupled(optimizer: torch.optim.Optimizer, group: dict) -> bool:
    if isinstance(optimizer, torch.optim.AdamW):
        return True
    return bool(group.get("decoupled_weight_decay", False))


def needs_gradient(optimizer: torch.optim.Optimizer, denominator: str) -> bool:
    """True if this step's linearization depends on the batch gradient (so it is known only after backward)."""
    if isinstance(optimizer, torch.optim.SGD):
        return False
    if denominator == "current":
        return True
    return any(
        "exp_avg_sq" not in optimizer.state.get(p, {}) for group in optimizer.param_groups for p in group["params"]
    )


def linearize(
    optimizer: torch.optim.Optimizer,
    param: torch.Tensor,
    group: dict,
    clipped_grad: torch.Tensor | None,
    denominator: str = "previous",
) -> Linearization:
    """Coefficient (without the clip factor k) and history part of this parameter's coming update.

    Called before optimizer.step(). clipped_grad may be None when needs_gradient() is False.
    """
    lr = _scalar(group["lr"])
    wd = _scalar(group.get("weight_decay", 0.0))
    state = optimizer.state.get(param, {})
    p = param.detach()
    if isinstance(optimizer, torch.optim.SGD):
        mu = _scalar(group.get("momentum", 0.0))
        damp = _scalar(group.get("dampening", 0.0))
        nesterov = bool(group.get("nesterov", False))
        decay = wd * p if wd != 0 else torch.zeros_like(p)
        buf = state.get("momentum_buffer") if mu != 0 else None
        if mu == 0:
            return Linearization(lr, -lr * decay, lr)
        if buf is None:  # first step: buf = g'
            scale = (1 + mu) if nesterov else 1.0
            return Linearization(lr * scale, -lr * scale * decay, lr)
        if nesterov:  # d_p = g' + mu (mu buf + (1-damp) g')
            scale = 1 + mu * (1 - damp)
            return Linearization(lr * scale, -lr * (scale * decay + mu * mu * buf), lr)
        return Linearization(lr * (1 - damp), -lr * (mu * buf + (1 - damp) * decay), lr)

    beta1, beta2 = (_scalar(b) for b in group["betas"])
    eps = _scalar(group["eps"])
    step = int(_scalar(state["step"])) + 1 if "step" in state else 1
    exp_avg = state.get("exp_avg")
    exp_avg_sq = state.get("exp_avg_sq")
    if exp_avg is None:
        exp_avg = torch.zeros_like(p)
        exp_avg_sq = torch.zeros_like(p)
    decoupled = _decoupled(optimizer, group)
    bc1 = 1 - beta1**step
    if denominator == "previous" and step > 1:
        denom = exp_avg_sq.sqrt() / ((1 - beta2 ** (step - 1)) ** 0.5) + eps
    else:
        if clipped_grad is None:
            raise ValueError("the 'current' Adam denominator needs the clipped batch gradient")
        grad = clipped_grad if (decoupled or wd == 0) else clipped_grad + wd * p
        v_t = exp_avg_sq * beta2 + (1 - beta2) * grad * grad
        denom = v_t.sqrt() / ((1 - beta2**step) ** 0.5) + eps
    step_size = lr / bc1
    coef = step_size * (1 - beta1) / denom
    momentum_part = beta1 * exp_avg
    if not decoupled and wd != 0:
        momentum_part = momentum_part + (1 - beta1) * wd * p
    history = -step_size * momentum_part / denom
    if decoupled and wd != 0:
        history = history - lr * wd * p
    return Linearization(coef, history, lr)
