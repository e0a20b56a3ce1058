"""Brute-force values of one step, computed without the engine's layer rules or hooks.

Used by `provenance verify` (re-derive sampled steps) and by benchmarks as ground truth. Each row's
gradient is taken by its own forward/backward pass, each target's gradient and Hessian-vector product by
autograd, and the formulas of DESIGN.md section 1 are applied to the flat vectors. Slow, and meant to be:
its only job is to be obviously right. Call it before the optimizer step it checks (it does not step).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from .config import EngineConfig
from .optimizers import linearize
from .task import CausalLMTask, Task


def _flat(grads, params, dtype) -> torch.Tensor:
    return torch.cat(
        [(torch.zeros_like(p) if g is None else g).reshape(-1).to(dtype) for g, p in zip(grads, params)]
    )


def reference_values(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    micro_batches: Sequence[Any],
    targets: Any,
    config: EngineConfig | None = None,
    task: Task | None = None,
    dtype: torch.dtype = torch.float64,
) -> dict[str, torch.Tensor | float]:
    """Values of the step the optimizer is about to take: {'values_first', 'values_second'?, 'clip_factor'}."""
    config = config or EngineConfig()
    task = task or CausalLMTask()
    params = [p for group in optimizer.param_groups for p in group["params"] if p.requires_grad]
    groups = {id(p): group for group in optimizer.param_groups for p in group["params"]}
    weights = [task.row_weights(mb) for mb in micro_batches]
    total_weight = float(sum(float(w.sum()) for w in weights))
    total_rows = sum(task.batch_size(mb) for mb in micro_batches)

    # Per-row gradients, one row at a time (rows never interact, so a row alone gives its own term).
    rows = []
    for mb, w in zip(micro_batches, weights):
        for i in range(task.batch_size(mb)):
            single = _select_row(task, mb, i)
            sums, _ = task.loss_terms(model, single)
            term = sums[0] / total_weight if config.loss_reduction == "token_mean" else sums[0] / w[i] / total_rows
            rows.append(_flat(torch.autograd.grad(term, params, allow_unused=True), params, dtype))
    per_row = torch.stack(rows)
    g_batch = per_row.sum(dim=0)

    norm = float(g_batch.norm())
    clip = 1.0 if config.max_grad_norm is None else min(1.0, config.max_grad_norm / (norm + 1e-6))

    was_training = model.training
    model.eval()
    try:
        k = task.num_targets(targets)
        target_grads, hvps = [], []
        coef_parts, history_parts, clipped_parts = [], [], []
        offsets = [0]
        for p in params:
            offsets.append(offsets[-1] + p.numel())
        for p, start, stop in zip(params, offsets[:-1], offsets[1:]):
            clipped = (clip * g_batch[start:stop]).view_as(p).to(p.dtype)
            lin = linearize(optimizer, p, groups[id(p)], clipped, config.adam_denominator)
            coef = lin.coef
            coef_parts.append(
                coef.reshape(-1).to(dtype) if isinstance(coef, torch.Tensor) else torch.full((p.numel(),), coef, dtype=dtype)
            )
            history_parts.append(lin.history().reshape(-1).to(dtype))
            clipped_parts.append(clipped.reshape(-1).to(dtype))
        coef = torch.cat(coef_parts)
        history = torch.cat(history_parts)
        u_flat = history - 0.5 * coef * torch.cat(clipped_parts)
        u = [u_flat[a:b].view_as(p).to(p.dtype) for p, a, b in zip(params, offsets[:-1], offsets[1:])]
        for j in range(k):
            single = task.select_targets(targets, [j])
            loss = task.target_losses(model, single)[0]
            grads = torch.autograd.grad(loss, params, create_graph=config.order == 2, allow_unused=True)
            target_grads.append(_flat([None if g is None else g.detach() for g in grads], params, dtype))
            if config.order == 2:
                inner = sum((g * v).sum() for g, v in zip(grads, u) if g is not None)
                hvps.append(_flat(torch.autograd.grad(inner, params, allow_unused=True), params, dtype))
    finally:
        model.train(was_training)

    g_v = torch.stack(target_grads) if target_grads else torch.zeros(0, g_batch.numel(), dtype=dtype)
    out: dict[str, torch.Tensor | float] = {
        "values_first": clip * per_row @ (coef * g_v).T,
        "clip_factor": clip,
        "history_term": -(g_v @ history),
    }
    if config.order == 2:
        out["values_second"] = clip * per_row @ (coef * (g_v + torch.stack(hvps))).T
    return out


def _select_row(task: Task, batch: Any, index: int) -> Any:
    if hasattr(batch, "rows"):
        return batch.rows([index])
    return task.select_targets(batch, [index])
