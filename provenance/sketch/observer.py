"""The engine observer that sketches every row's gradient inside the training backward.

The engine calls `observe(record, start, stop)` once per tracked module call when its output gradient
is ready (docs/engine.md, add_observer); the record holds the layer's input factors and dL/d(output) of
the step's scaled loss, so the per-row sketch of a matrix is (B Q_out^T)^T (A Q_in^T) per row: a few
thin matmuls, never a per-row d_out x d_in gradient. After the step, `end_step` scales each row's
sketch by that step's AdamW coefficient (lr * (1-beta1)/(1-beta1^t) * clip factor), the same scalar the
engine applies to its exact values, and hands the rows to the store's segment accumulator.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from provenance.errors import UnsupportedLayerError, UnsupportedOptimizerError
from provenance.sketch.projection import ParamSlot, Projections


class RowSketcher:
    """Per-row sketches of the current step's gradient (rows, dim), filled by the engine's observer calls."""

    def __init__(self, model: nn.Module, projections: Projections):
        from provenance.engine.registry import tracked_modules
        from provenance.engine.rules.embedding import EmbeddingRule
        from provenance.engine.rules.linear import MatmulRule
        from provenance.engine.rules.norm import ScaleRule

        self.projections = projections
        names = {id(p): name for name, p in model.named_parameters()}
        dtypes = {p.dtype for p in model.parameters()}
        self.dtype = torch.float64 if torch.float64 in dtypes else torch.float32
        # module name -> [(pname, slot, family)]
        self._plan: dict[str, list[tuple[str, ParamSlot, str]]] = {}
        for module_name, module, rule in tracked_modules(model):
            family = ("embedding" if isinstance(rule, EmbeddingRule) else "matmul" if isinstance(rule, MatmulRule)
                      else "scale" if isinstance(rule, ScaleRule) else None)
            for pname, p in module.named_parameters(recurse=False):
                if not p.requires_grad or pname not in rule.param_names:
                    continue
                if family is None:
                    raise UnsupportedLayerError(
                        f"module {module_name} ({type(module).__name__}) has no gradient sketch rule; "
                        "sketches support Linear, GPT-2 Conv1D, Conv2d, Embedding, LayerNorm and RMSNorm"
                    )
                self._plan.setdefault(module_name, []).append((pname, projections.by_name[names[id(p)]], family))
        self.buffer: torch.Tensor | None = None
        self.rows = 0

    def observe(self, record: Any, start: int, stop: int) -> None:
        """Engine observer: add this module call's per-row sketch to rows start..stop."""
        plan = self._plan.get(record.module_name)
        if not plan:
            return
        if self.buffer is None or self.buffer.shape[0] < stop:
            grown = torch.zeros(max(stop, 1), self.projections.dim, dtype=self.dtype)
            if self.buffer is not None:
                grown[: self.buffer.shape[0]] = self.buffer
            self.buffer = grown
        self.rows = max(self.rows, stop)
        out = self.buffer[start:stop]
        for pname, slot, family in plan:
            block = self._sketch(record, pname, slot, family)
            out[:, slot.offset : slot.offset + slot.size] += block.reshape(block.shape[0], -1)

    def _sketch(self, record: Any, pname: str, slot: ParamSlot, family: str) -> torch.Tensor:
        q = self.projections.q
        dtype = self.dtype
        if family == "matmul":
            a, b = record.rule.factors(record.module, record.saved, record.grad)
            b = b.to(dtype)
            if slot.kind == "vector":  # bias: sum over positions of b
                return b.sum(dim=1) @ q(f"{slot.name}.vec", dtype).T
            pa = torch.matmul(a.to(dtype), q(f"{slot.name}.in", dtype).T)  # (rows, N, k_in)
            pb = torch.matmul(b, q(f"{slot.name}.out", dtype).T)  # (rows, N, k_out)
            return torch.bmm(pb.transpose(1, 2), pa)
        if family == "embedding":
            rows = record.saved.shape[0]
            ids = record.saved.reshape(rows, -1)
            b = record.grad.reshape(rows, ids.shape[1], -1).to(dtype)
            valid = (ids >= 0).unsqueeze(2).to(dtype)
            q_out = q(f"{slot.name}.out", dtype).T  # (V, k_out)
            picked = q_out[ids.clamp(min=0)] * valid  # (rows, N, k_out): Q_out e_id
            pb = torch.matmul(b, q(f"{slot.name}.in", dtype).T)  # (rows, N, k_in)
            return torch.bmm(picked.transpose(1, 2), pb)
        # LayerNorm / RMSNorm: g(w) = sum_n b_n * xhat_n, g(bias) = sum_n b_n
        rows = record.saved.shape[0]
        width = record.module.weight.numel()
        b = record.grad.reshape(rows, -1, width).to(dtype)
        source = b * record.saved.reshape(rows, -1, width).to(dtype) if pname == "weight" else b
        return source.sum(dim=1) @ q(f"{slot.name}.vec", dtype).T

    def take(self) -> torch.Tensor:
        """This step's per-row sketches (rows, dim), unscaled; the buffer starts empty for the next step."""
        if self.buffer is None or self.rows == 0:
            raise RuntimeError("no sketch was observed in this step; is the observer attached to the engine?")
        out = self.buffer[: self.rows].clone()
        self.buffer.zero_()
        self.rows = 0
        return out


def adam_scales(optimizer: torch.optim.Optimizer, model: nn.Module, projections: Projections,
                clip_factor: float) -> torch.Tensor:
    """Per-element factor of the step just taken: lr * (1-beta1)/(1-beta1^t) * k, per parameter slot.

    Call right after the optimizer step (t = the optimizer's step count then). Parameters with no Adam
    state (never updated) get 0: the step did not move them."""
    if not isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)):
        raise UnsupportedOptimizerError(
            f"gradient sketches support Adam/AdamW only (got {type(optimizer).__name__})"
        )
    groups = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    params = dict(model.named_parameters())
    scale = torch.zeros(projections.dim, dtype=torch.float64)
    for slot in projections.slots:
        p = params[slot.name]
        state = optimizer.state.get(p, {})
        group = groups.get(id(p))
        if group is None or "step" not in state:
            continue
        t = int(float(state["step"]))
        beta1 = float(group["betas"][0])
        value = float(group["lr"]) * (1 - beta1) / (1 - beta1**t) * clip_factor
        scale[slot.offset : slot.offset + slot.size] = value
    return scale


def attach(engine: Any, sketcher: RowSketcher) -> Callable[[], None]:
    """Register the sketcher on an AttributionEngine; returns the remover."""
    return engine.add_observer(sketcher.observe)
