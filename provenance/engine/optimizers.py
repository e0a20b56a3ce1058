"""The optimizer's step written as dw = h + sum_i d_i with d_i = -coef * k * g_i.

g_i is player i's (unclipped, loss-weighted) gradient, k the clipping factor, coef a scalar or an
elementwise tensor per parameter, and h the part of the update no player of this batch owns (momentum
carried from earlier batches, weight decay). This must reproduce torch's own update, which the tests check.

Adam/AdamW (fixed-state utility: the moments are held, so the update is linear in the batch gradient):
- "previous": A_t = sqrt(v_{t-1} / (1 - beta2^(t-1))) + eps, as DESIGN.md and the Adam follow-up paper. It
  is known before the step, so values can be formed inside backward. h + sum_i d_i then differs from the
  real update by the change of the denominator; the ledger reports that remainder. Elements whose v_{t-1}
  is exactly zero (never updated yet, e.g. embedding rows of unseen tokens) take the current denominator:
  with eps alone they would be weighted up to ~1e6x more than the optimizer really moves them.
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
    """One parameter's update as h + sum_i d_i, kept in factored form (no param-sized h unless asked).

    d_i = -scale * precond * (k g_i)                     (precond = 1 for SGD, 1/denominator for Adam)
    h   = decay * p + momentum_scale * momentum * precond + l2_scale * p * precond
    """

    lr: float
    scale: float
    precond: torch.Tensor | None
    param: torch.Tensor
    decay: float = 0.0
    momentum: torch.Tensor | None = None
    momentum_scale: float = 0.0
    l2_scale: float = 0.0

    @property
    def coef(self) -> float | torch.Tensor:
        return self.scale if self.precond is None else self.scale * self.precond

    def direction(self, g_v: torch.Tensor) -> torch.Tensor:
        """coef * g_v, without the clip factor: (K, *shape)."""
        if self.precond is None:
            return g_v * self.scale
        return (g_v * self.precond.to(g_v.dtype)).mul_(self.scale)

    def scale_in_place(self, g: torch.Tensor) -> torch.Tensor:
        """g *= coef; g holds K directions shaped (and laid out) like the parameter."""
        if self.precond is None:
            return g.mul_(self.scale)
        return g.mul_(_scaled(self.precond, g.dtype, self.scale))

    def direction_and_history(self, g_v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(direction(g_v), -h . g_v per target), turning g_v into the direction in place: with K
        targets each is K x the parameter's size, and every pass over memory of that size costs on CPU.
        h is formed once and dotted with g_v before g_v is scaled: two passes over the K directions."""
        if self.scale == 0:  # no step: z = 0, only the decay part of h remains
            decay_part = -self.decay * _dots(g_v, self.param.detach().to(g_v.dtype))
            return g_v.zero_(), decay_part
        h = self._history(g_v.dtype)
        history = torch.zeros(g_v.shape[0], dtype=g_v.dtype) if h is None else -_dots(g_v, h)
        del h
        self.scale_in_place(g_v)
        return g_v, history

    def history(self) -> torch.Tensor:
        """h itself (only the second order needs it materialized)."""
        h = self._history(self.param.dtype)
        return torch.zeros_like(self.param.detach()) if h is None else h

    def _history(self, dtype: torch.dtype) -> torch.Tensor | None:
        """h = decay * p + momentum_scale * momentum * precond + l2_scale * p * precond as one new tensor
        (None if h = 0), formed in place term by term."""
        param = self.param.detach()
        precond = self.precond
        h = None
        if self.momentum is not None and self.momentum_scale:
            h = _scaled(self.momentum, dtype, self.momentum_scale)
            if precond is not None:
                h.mul_(precond)
        if self.l2_scale:  # Adam's L2 (non-decoupled) weight decay: precond is set
            term = _scaled(param, dtype, self.l2_scale).mul_(precond)
            h = term if h is None else h.add_(term)
        if self.decay:
            h = _scaled(param, dtype, self.decay) if h is None else h.add_(param, alpha=self.decay)
        return h


def _scaled(t: torch.Tensor, dtype: torch.dtype, factor: float) -> torch.Tensor:
    """factor * t as a new tensor of `dtype`, in one pass."""
    return torch.mul(t, factor, out=torch.empty(t.shape, dtype=dtype))


def _dots(stacked: torch.Tensor, single: torch.Tensor) -> torch.Tensor:
    """(K,) dots of each stacked[k] with `single`."""
    return stacked.reshape(stacked.shape[0], -1) @ single.reshape(-1)


def _rows_of(t: torch.Tensor, rows: slice | torch.Tensor) -> torch.Tensor:
    part = t[rows]
    return part.reshape(part.shape[0], -1)


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


def needs_gradient(optimizer: torch.optim.Optimizer, param: torch.Tensor, denominator: str) -> bool:
    """True if this parameter's linearization depends on the batch gradient (known only after backward):
    Adam's "current" denominator, an optimizer's first step, or "previous" with elements whose second
    moment is still exactly zero (never updated: e.g. embedding rows of tokens not seen yet)."""
    if isinstance(optimizer, torch.optim.SGD):
        return False
    if denominator == "current":
        return True
    exp_avg_sq = optimizer.state.get(param, {}).get("exp_avg_sq")
    return exp_avg_sq is None or not bool((exp_avg_sq > 0).all())


def linearize(
    optimizer: torch.optim.Optimizer,
    param: torch.Tensor,
    group: dict,
    clipped_grad: torch.Tensor | None,
    denominator: str = "previous",
    rows: slice | torch.Tensor | None = None,
) -> Linearization:
    """Coefficient (without the clip factor k) and history part of this parameter's coming update.

    Called before optimizer.step(). clipped_grad may be None when needs_gradient() is False. rows (a slice or
    an index along dim 0): the linearization of those rows of the parameter only, each flattened
    (clipped_grad then holds them); every update is elementwise, so it equals those rows of the whole one's.
    """
    lr = _scalar(group["lr"])
    wd = _scalar(group.get("weight_decay", 0.0))
    state = optimizer.state.get(param, {})
    if rows is not None:  # those rows, each flattened (a convolution's (out, in, kh, kw) as (out, in*kh*kw))
        state = {key: _rows_of(value, rows) if isinstance(value, torch.Tensor) and value.dim() else value
                 for key, value in state.items()}
    p = param.detach() if rows is None else _rows_of(param.detach(), rows)
    if isinstance(optimizer, torch.optim.SGD):
        mu = _scalar(group.get("momentum", 0.0))
        damp = _scalar(group.get("dampening", 0.0))
        nesterov = bool(group.get("nesterov", False))
        buf = state.get("momentum_buffer") if mu != 0 else None
        if mu == 0:
            return Linearization(lr, lr, None, p, decay=-lr * wd)
        if buf is None:  # first step: buf = g'
            scale = (1 + mu) if nesterov else 1.0
            return Linearization(lr, lr * scale, None, p, decay=-lr * scale * wd)
        if nesterov:  # d_p = g' + mu (mu buf + (1-damp) g')
            scale = 1 + mu * (1 - damp)
            return Linearization(lr, lr * scale, None, p, -lr * scale * wd, buf, -lr * mu * mu)
        return Linearization(lr, lr * (1 - damp), None, p, -lr * (1 - damp) * wd, buf, -lr * mu)

    beta1, beta2 = (_scalar(b) for b in group["betas"])
    eps = _scalar(group["eps"])
    step = int(_scalar(state["step"])) + 1 if "step" in state else 1
    exp_avg = state.get("exp_avg")
    exp_avg_sq = state.get("exp_avg_sq")
    if exp_avg_sq is None:
        exp_avg_sq = torch.zeros_like(p)
    decoupled = _decoupled(optimizer, group)
    bc1 = 1 - beta1**step
    fresh = None  # elements that take the current denominator
    if denominator == "previous" and step > 1:
        precond = exp_avg_sq.sqrt().div_((1 - beta2 ** (step - 1)) ** 0.5).add_(eps).reciprocal_()
        fresh = exp_avg_sq == 0
        if not bool(fresh.any()):
            fresh = None
    if fresh is not None or denominator != "previous" or step == 1:
        if clipped_grad is None:
            raise ValueError("this Adam linearization needs the clipped batch gradient (needs_gradient() is True)")
        grad = clipped_grad if (decoupled or wd == 0) else clipped_grad + wd * p
        v_t = torch.mul(exp_avg_sq, beta2).addcmul_(grad, grad, value=1 - beta2)  # torch's own arithmetic
        current = v_t.sqrt_().div_((1 - beta2**step) ** 0.5).add_(eps).reciprocal_()
        precond = current if fresh is None else torch.where(fresh, current, precond)
    step_size = lr / bc1
    return Linearization(
        lr,
        step_size * (1 - beta1),
        precond,
        p,
        decay=-lr * wd if decoupled else 0.0,
        momentum=exp_avg,
        momentum_scale=-step_size * beta1,
        l2_scale=0.0 if (decoupled or wd == 0) else -step_size * (1 - beta1) * wd,
    )
