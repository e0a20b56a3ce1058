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


def observer_plan(model: nn.Module, projections: Projections) -> dict[str, list[tuple[str, ParamSlot, str]]]:
    """Per tracked module: (parameter name, its slot, rule family) for every parameter the sketch covers."""
    from provenance.engine.registry import tracked_modules
    from provenance.engine.rules.embedding import EmbeddingRule
    from provenance.engine.rules.linear import MatmulRule
    from provenance.engine.rules.norm import ScaleRule

    names = {id(p): name for name, p in model.named_parameters()}
    plan: dict[str, list[tuple[str, ParamSlot, str]]] = {}
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
            if names[id(p)] in projections.skipped:
                continue
            plan.setdefault(module_name, []).append((pname, projections.by_name[names[id(p)]], family))
    return plan


class RowSketcher:
    """Per-row sketches of the current step's gradient (rows, dim), filled by the engine's observer calls."""

    def __init__(self, model: nn.Module, projections: Projections):
        self.projections = projections
        dtypes = {p.dtype for p in model.parameters()}
        self.dtype = torch.float64 if torch.float64 in dtypes else torch.float32
        self._plan = observer_plan(model, projections)  # module name -> [(pname, slot, family)]
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
        xhat = record.rule.normalized(record.module, record.saved)  # the rule keeps the input, not xhat
        source = b * xhat.reshape(rows, -1, width).to(dtype) if pname == "weight" else b
        return source.sum(dim=1) @ q(f"{slot.name}.vec", dtype).T

    def take(self) -> torch.Tensor:
        """This step's per-row sketches (rows, dim), unscaled; the buffer starts empty for the next step."""
        if self.buffer is None or self.rows == 0:
            raise RuntimeError("no sketch was observed in this step; is the observer attached to the engine?")
        out = self.buffer[: self.rows].clone()
        self.buffer.zero_()
        self.rows = 0
        return out


class CovarianceSketch:
    """Engine observer for data-dependent projections: per matrix side wider than its k, a sketch
    Y = C Omega of the side's gradient covariance over the calibration window.

    For a per-token gradient factor b_t a_t^T (out x in; an embedding's out factor is the one-hot of its
    id) the side covariances are C_out = sum_t |a_t|^2 b_t b_t^T and C_in = sum_t |b_t|^2 a_t a_t^T: the
    same-token part of sum_i G_i G_i^T and G_i^T G_i, on one scale for every use of a parameter (wte
    as embedding and as tied lm_head add up). Omega is Gaussian (dim x l, l = oversample * k) for sides
    wider than l, else None (C itself is kept). At most max_tokens tokens per module call are used (an
    even stride), so a calibration step costs a few thin matmuls per layer."""

    def __init__(self, model: nn.Module, projections: Projections, oversample: int = 4, max_tokens: int = 1024,
                 seed: int = 0):
        self.projections = projections
        self.max_tokens = max_tokens
        self._plan = observer_plan(model, projections)
        generator = torch.Generator().manual_seed(seed + 7919)
        self.omega: dict[str, torch.Tensor | None] = {}
        self.y: dict[str, torch.Tensor] = {}
        for slot in projections.slots:
            if slot.kind != "matrix":
                continue
            for side, dim, k in (("out", slot.out_dim, slot.k_out), ("in", slot.in_dim, slot.k_in)):
                if dim <= k:
                    continue  # kept exactly (Q = I)
                key = f"{slot.name}.{side}"
                width = oversample * k
                self.omega[key] = (torch.randn(dim, width, generator=generator, dtype=torch.float64) / width**0.5
                                   if dim > width else None)
                self.y[key] = torch.zeros(dim, width if dim > width else dim, dtype=torch.float64)
        self.tokens_seen = 0

    def _stride(self, n: int) -> slice:
        return slice(None, None, max(1, -(-n // self.max_tokens)))

    def _add(self, key: str, vectors: torch.Tensor, weights: torch.Tensor) -> None:
        """C += sum_t weights_t v_t v_t^T, through Omega."""
        if key not in self.y:
            return
        omega = self.omega[key]
        v = vectors.to(torch.float64)
        projected = v if omega is None else v @ omega
        self.y[key] += v.T @ (projected * weights.to(torch.float64)[:, None])

    def observe(self, record: Any, start: int, stop: int) -> None:
        plan = self._plan.get(record.module_name)
        if not plan:
            return
        for pname, slot, family in plan:
            if slot.kind != "matrix":
                continue
            if family == "matmul":
                a, b = record.rule.factors(record.module, record.saved, record.grad)
                a = a.reshape(-1, a.shape[-1])
                b = b.reshape(-1, b.shape[-1])
                pick = self._stride(a.shape[0])
                a, b = a[pick].double(), b[pick].double()
                self._add(f"{slot.name}.out", b, (a * a).sum(1))
                self._add(f"{slot.name}.in", a, (b * b).sum(1))
                self.tokens_seen += a.shape[0]
            elif family == "embedding":
                ids = record.saved.reshape(-1)
                b = record.grad.reshape(ids.shape[0], -1)
                pick = self._stride(ids.shape[0])
                ids, b = ids[pick], b[pick].double()
                valid = ids >= 0
                ids, b = ids[valid], b[valid]
                energy = (b * b).sum(1)
                key = f"{slot.name}.out"
                if key in self.y:  # one-hot out factor: C_out += |b_t|^2 e_id e_id^T
                    omega = self.omega[key]
                    rows = energy[:, None] * (omega[ids] if omega is not None
                                              else torch.nn.functional.one_hot(ids, slot.out_dim).double())
                    self.y[key].index_add_(0, ids, rows)
                self._add(f"{slot.name}.in", b, torch.ones_like(energy))

    def projections_pca(self) -> Projections:
        """The calibrated projections: each estimated side's top-k eigenvectors (orthonormal rows)."""
        from provenance.sketch.projection import top_eigenvectors

        replaced = {}
        for key, y in self.y.items():
            name, side = key.rsplit(".", 1)
            slot = self.projections.by_name[name]
            k = slot.k_out if side == "out" else slot.k_in
            try:
                replaced[key] = top_eigenvectors(y, self.omega[key], k)
            except ValueError as exc:
                raise UnsupportedLayerError(f"calibrating projection {key}: {exc}") from exc
        return self.projections.with_matrices(replaced, "pca")


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
