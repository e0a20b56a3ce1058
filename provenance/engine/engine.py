"""The attribution engine: one call per optimizer step returns every player's value for every target.

Per step:
1. targets pass (eval mode, RNG untouched): each target's loss and, per tracked module, the factors of its
   gradient, so a target gradient is formed one parameter at a time and never all at once;
2. training passes over the micro-batches with the loss scaled exactly as the real update uses it. With
   weight_gradients="per_row" (Adam's default) the engine forms the batch gradient of matmul weights and
   embeddings itself, from per-row blocks (the same multiply-adds autograd would spend), so per-row
   gradients are on hand without extra matmuls; with "matmul" (SGD's default) autograd forms it;
3. global-norm clipping (torch's own), then the optimizer's step linearized as dw = h + sum_i d_i;
4. values: value_i,k = g_i . z_k with z_k = k * coef * (g_v,k [+ H_v,k u]), u = h + D/2. Per parameter use:
   - "backward": z is known before backward (first order with SGD, or Adam with the "previous"
     denominator): dots taken inside backward where the per-row blocks exist; nothing is stored and the
     clip factor k, a scalar, is applied at the end;
   - "ghost": the same, for SGD with autograd-formed weights: pairwise dots sum (a.a_v)(b.b_v) over
     training and target tokens, no gradient formed (plus tied weights' cross terms);
   - "stored": z is known only after backward (second order, Adam "current", a first step): the per-row
     blocks formed in backward are kept (up to keep_rows_mb) and dotted once z is known;
   - "player"/"target"/"gather"/...: the rule re-derives the dots after backward from kept inputs and
     output gradients (beyond keep_rows_mb, embeddings, per-token maps);
5. the real optimizer step, unchanged. Training is bitwise the same whatever the targets or the route,
   because the gradient is formed the same way for a given weight_gradients: replays compare exactly.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch import nn
from torch.autograd.graph import get_gradient_edge

from ..errors import BatchError, NonFiniteLossError
from . import rules  # noqa: F401  (registers the layer rules)
from .capture import Capturer, CaptureStore, Record
from .config import EngineConfig
from .heap import release_free_heap
from .optimizers import Linearization, check_optimizer, linearize, needs_gradient
from .registry import LayerRule, tracked_modules
from .task import CausalLMTask, Task


@dataclass
class StepResult:
    """Everything one step yields. Values: positive = the row lowered the target's loss."""

    loss: float
    n_tokens: int
    values_first: torch.Tensor  # (rows, K)
    values_second: torch.Tensor | None  # (rows, K) when order=2
    per_token: torch.Tensor | None  # (rows, tokens, K) when per_token=True (of the recorded order)
    target_loss: torch.Tensor  # (K,) before the step
    lr: float
    grad_norm: float
    clip_factor: float
    history_term: torch.Tensor  # (K,) = -h . g_v, first order
    route: str = ""
    routes: dict[str, str] = field(default_factory=dict)

    @property
    def values(self) -> torch.Tensor:
        return self.values_second if self.values_second is not None else self.values_first


@dataclass
class _Use:
    module_name: str
    module: nn.Module
    rule: LayerRule
    pname: str


# Second order / Adam "current" steps that keep per-row blocks from backward: once this fraction of them is
# kept (the last quarter is about the last layer's), the heap's free memory is returned (_keep_rows); not for
# blocks under _TRIM_MIN_BYTES, where the peak is not theirs.
_TRIM_AT_FRACTION = 0.75
_TRIM_MIN_BYTES = 256 * 2**20


@dataclass
class _StepState:
    """What the backward hooks need during one step."""

    value_dtype: torch.dtype
    budget: int
    offsets: list[int]
    values: torch.Tensor | None = None  # (rows, K), filled by the backward route
    history: torch.Tensor | None = None
    pre: dict[int, Linearization] | None = None  # linearization known before backward
    target_records: dict[str, list[Record]] = field(default_factory=dict)
    directions: dict[int, torch.Tensor] = field(default_factory=dict)  # backward route: z per parameter
    cross: dict[tuple[int, str], torch.Tensor | None] = field(default_factory=dict)  # ghost: other uses' z
    stored: set[tuple[str, str]] = field(default_factory=set)  # (module, param) uses on the stored route
    kept_bytes: int = 0  # per-row blocks kept from backward so far
    trim_at_bytes: int | None = None  # return the heap's free memory once the kept blocks pass this (_keep_rows)
    row_grads: dict[tuple[str, str, int], list[torch.Tensor]] = field(default_factory=dict)  # per call
    buffers: dict[int, torch.Tensor] = field(default_factory=dict)  # pooled memory behind directions[id(p)]
    pending: dict[tuple[int, int], int] = field(default_factory=dict)  # (micro-batch, id(p)): calls left
    calls: dict[tuple[int, str], int] = field(default_factory=dict)  # (micro-batch, module): forward calls
    early: set[int] = field(default_factory=set)  # Adam "current": valued in backward if the step is unclipped
    predict_unclipped: bool = False  # the previous step was unclipped
    early_parts: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)  # values, history
    split: set[int] = field(default_factory=set)  # tied output heads valued in backward on untouched rows
    touched: dict[int, torch.Tensor] = field(default_factory=dict)  # their rows the embedding use touches
    split_parts: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)  # untouched rows:
    # values, history
    store: CaptureStore | None = None  # the training pass's records


class AttributionEngine:
    """Attach to a model and its optimizer; `step(micro_batches)` trains one step and values it.

    Use as a context manager (or call `close()`) so the hooks are always removed.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        config: EngineConfig | None = None,
        task: Task | None = None,
        process_group: Any = None,
    ):
        """process_group: a torch.distributed group (or `True` for the default group) when each rank trains
        its own shard of the global batch: the loss is scaled by the global token (row) count, gradients are
        summed across ranks before clipping, and each rank returns the values of its own rows. Do not also
        wrap the model in DistributedDataParallel (the engine forms most weight gradients itself)."""
        self.model = model
        self.optimizer = optimizer
        self.config = config or EngineConfig()
        self.task: Task = task or CausalLMTask()
        check_optimizer(optimizer)
        self._tracked = tracked_modules(model)
        self._capturer = Capturer(self._tracked)
        self._capturer.attach()
        self._targets: Any = None
        self._num_targets = 0
        self._uses = self._parameter_uses()
        self._uses_of = {id(p): uses for p, uses in self._uses}
        # Target gradients sum a parameter's uses matmul-first, so a tied embedding's scatter-add lands in
        # the head's gradient in place.
        self._gradient_uses = {
            key: sorted(uses, key=lambda use: not isinstance(use.rule, rules.linear.MatmulRule))
            for key, uses in self._uses_of.items()
        }
        self._uses_by_module: dict[str, list[tuple[nn.Parameter, _Use]]] = {}
        for p, uses in self._uses:
            for use in uses:
                self._uses_by_module.setdefault(use.module_name, []).append((p, use))
        # Parameters whose batch gradient the engine forms itself (every use must be able to).
        mode = self.config.weight_gradients
        if mode == "auto":
            mode = "matmul" if isinstance(optimizer, torch.optim.SGD) else "per_row"
        self.weight_gradients = mode
        self._owned = (
            [p for p, uses in self._uses if all(u.rule.owns_grad(u.pname) for u in uses)] if mode == "per_row" else []
        )
        self._owned_ids = {id(p) for p in self._owned}
        self._state: _StepState | None = None
        self.routes: dict[str, str] = {}
        self._observers: list[Callable[[Record, int, int], None]] = []
        self._group = _resolve_group(process_group)
        self._pool = _BufferPool()
        self._last_clip = 0.0  # the previous step's clip factor: 1.0 predicts an unclipped step

    # -- setup -------------------------------------------------------------------------------------
    def _parameter_uses(self) -> list[tuple[nn.Parameter, list[_Use]]]:
        """Each trainable parameter with every module that uses it (tied weights have several)."""
        order: list[nn.Parameter] = []
        uses: dict[int, list[_Use]] = {}
        for name, module, rule in self._tracked:
            for pname, p in module.named_parameters(recurse=False):
                if not p.requires_grad or pname not in rule.param_names:
                    continue
                if id(p) not in uses:
                    order.append(p)
                    uses[id(p)] = []
                uses[id(p)].append(_Use(name, module, rule, pname))
        return [(p, uses[id(p)]) for p in order]

    def _value_dtype(self) -> torch.dtype:
        if self.config.value_dtype is not None:
            return self.config.value_dtype
        dtypes = {p.dtype for p, _ in self._uses}
        return torch.float64 if torch.float64 in dtypes else torch.float32

    def set_targets(self, targets: Any) -> None:
        """Register the K targets whose loss decrease is attributed (None or K=0: plain training)."""
        if targets is None:
            self._targets, self._num_targets = None, 0
            return
        k = self.task.num_targets(targets)
        if k > 0:
            self.task.check_targets(self.model, targets)
        self._targets, self._num_targets = targets, k

    def add_observer(self, observer: Callable[[Record, int, int], None]) -> Callable[[], None]:
        """Call `observer(record, start, stop)` inside each training backward, once per tracked module call,
        when its output gradient is ready: record.saved / record.grad (the gradient of the step's scaled loss,
        before clipping) belong to rows start..stop of the step. For sketches of per-row gradients (e.g.
        projected gradients) at no extra backward. Returns a function that removes the observer."""
        self._observers.append(observer)
        return lambda: self._observers.remove(observer) if observer in self._observers else None

    @property
    def num_targets(self) -> int:
        return self._num_targets

    def close(self) -> None:
        self._capturer.detach()
        rules.linear.release_scratch()
        self._pool.clear()

    def __enter__(self) -> "AttributionEngine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- the step ----------------------------------------------------------------------------------
    def step(self, micro_batches: Sequence[Any] | Any) -> StepResult:
        """Train one optimizer step over `micro_batches` and return every row's value per target."""
        if not isinstance(micro_batches, (list, tuple)) or (
            isinstance(micro_batches, tuple) and micro_batches and isinstance(micro_batches[0], torch.Tensor)
        ):
            micro_batches = [micro_batches]
        if len(micro_batches) == 0:
            raise BatchError("step() got no micro-batches; pass at least one batch with at least one row")
        if self.config.release_memory:
            release_free_heap()  # what the previous step freed, before this forward pass (heap.py)
        sizes = [self.task.batch_size(mb) for mb in micro_batches]
        if any(size == 0 for size in sizes):
            raise BatchError(f"empty micro-batch (rows per micro-batch: {sizes}); every micro-batch needs rows")
        weights = [self.task.row_weights(mb) for mb in micro_batches]
        total_weight = int(sum(int(w.sum()) for w in weights))
        total_rows = sum(sizes)
        # Rows of this rank; the loss is scaled by the global counts (= sums over ranks).
        local_rows = total_rows
        if self._group is not None:
            total_weight, total_rows = _all_reduce_ints([total_weight, total_rows], self._group)
        if total_weight == 0:
            raise BatchError("the batch has no tokens carrying loss (all labels are -100)")
        if self.config.loss_reduction == "sample_mean" and any(bool((w == 0).any()) for w in weights):
            raise BatchError("sample_mean loss: a row has no tokens carrying loss; drop empty rows")

        dtype = self._value_dtype()
        k = self._num_targets
        # Read the optimizer's groups now, not at construction: load_state_dict() replaces the group dicts
        # (a cached copy would carry a stale learning rate into the values).
        self._groups = {id(p): group for group in self.optimizer.param_groups for p in group["params"]}
        offsets = [0]
        for size in sizes:
            offsets.append(offsets[-1] + size)
        state = _StepState(dtype, int(self.config.memory_budget_mb * 2**20 * 8 / torch.finfo(dtype).bits), offsets)
        target_loss = torch.zeros(k, dtype=dtype)
        if k:
            target_store = CaptureStore(keep=True)
            target_loss = self._target_pass(target_store).to(dtype)
            state.target_records = target_store.by_module()
        # Parameters whose direction is known before backward get their values inside backward; the rest
        # ("late") are contracted after it from kept inputs and output gradients. A step without targets
        # values none, but still forms the late ones' batch gradients as a valued step does: a run trained
        # without targets is replayed with some and must reproduce its losses bit for bit.
        late = self._late_params()
        late_ids = {id(p) for p in late}
        pre: dict[int, Linearization] = {
            id(p): linearize(self.optimizer, p, self._groups[id(p)], None, self.config.adam_denominator)
            for p, _ in self._uses
            if k and id(p) in self._groups and id(p) not in late_ids
        }
        deferred = late if k else []
        if late and not self.config.per_token:
            state.early = self._early_params(late, len(micro_batches), local_rows)
            state.predict_unclipped = bool(k) and self._last_clip == 1.0
            if k:
                state.split = self._split_params(late, len(micro_batches))
            state.stored, stored_bytes = self._stored_uses(
                [p for p in late if id(p) not in state.early and id(p) not in state.split], local_rows
            )
            if k and stored_bytes >= _TRIM_MIN_BYTES:
                state.trim_at_bytes = int(stored_bytes * _TRIM_AT_FRACTION)
        if pre:
            state.pre = pre
            state.values = torch.zeros(local_rows, k, dtype=dtype)
            state.history = torch.zeros(k, dtype=dtype)
        self._state = state
        self.routes = {}
        route = "none" if not k else ("backward" if not deferred else ("mixed" if pre else "after"))

        # Training passes: the loss is scaled here exactly as the real update uses it.
        self.optimizer.zero_grad(set_to_none=True)
        train_store = CaptureStore(
            keep=bool(deferred),
            keep_only={
                use.module_name
                for p in deferred
                for use in self._uses_of[id(p)]
                if (use.module_name, use.pname) not in state.stored
            },
            on_grad=self._on_train_grad,
            calls=state.calls,
        )
        state.store = train_store
        step_loss = 0.0
        for p in self._owned:
            p.requires_grad_(False)
        try:
            for index, (mb, rows, w) in enumerate(zip(micro_batches, sizes, weights)):
                with self._capturer.capture(train_store, index, rows):
                    sums, _ = self.task.loss_terms(self.model, mb)
                    if self.config.loss_reduction == "token_mean":
                        loss = sums.sum() / total_weight
                    else:
                        loss = (sums / w.to(sums.dtype)).sum() / total_rows
                    if not torch.isfinite(loss):
                        raise NonFiniteLossError(
                            f"training loss is {loss.item()} at micro-batch {index}; nothing was applied. Lower "
                            "the learning rate or check the data and the weights for NaN/Inf"
                        )
                    loss.backward()
                step_loss += float(loss.detach())
        except BaseException:
            self.optimizer.zero_grad(set_to_none=True)
            raise
        finally:
            for p in self._owned:
                p.requires_grad_(True)
            self._state = None
            for buffer in state.buffers.values():
                self._pool.give(buffer)
            state.buffers.clear()
            state.directions.clear()

        if self._group is not None:
            step_loss = _all_reduce_grads(self.optimizer, step_loss, self._group)
        params = [p for group in self.optimizer.param_groups for p in group["params"] if p.grad is not None]
        grad_norm, clip = self._clip(params)

        values_first = torch.zeros(local_rows, k, dtype=dtype)
        values_second = values_first.clone() if self.config.order == 2 else None
        per_token, history = None, torch.zeros(k, dtype=dtype)
        if pre:
            values_first += state.values * clip
            history += state.history
        self._last_clip = clip
        if clip != 1.0:  # clipped: the denominators formed in backward are not the optimizer's; re-derive
            state.early_parts.clear()
            state.split_parts.clear()
        if deferred:
            valued = state.early_parts.keys() | state.split_parts.keys()
            lin = _Linearizations(self.optimizer, self._groups, self.config.adam_denominator,
                                  [p for p in deferred if id(p) in self._groups and id(p) not in valued])
            first, second, per_token, late_history = self._values_after(train_store, state, lin, clip, k)
            values_first += first
            history += late_history
            if second is not None:
                values_second += second
        lr = float(self.optimizer.param_groups[0]["lr"])

        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self._pool.trim(int(self.config.memory_budget_mb * 2**20))
        return StepResult(
            loss=step_loss,
            n_tokens=total_weight,
            values_first=values_first,
            values_second=values_second,
            per_token=per_token,
            target_loss=target_loss.detach(),
            lr=lr,
            grad_norm=grad_norm,
            clip_factor=clip,
            history_term=history,
            route=route,
            routes=dict(self.routes),
        )

    # -- backward hooks ----------------------------------------------------------------------------
    def _on_train_grad(self, record: Record) -> None:
        """Called inside backward when a tracked module's output gradient is ready."""
        state = self._state
        if state is None:
            return
        start, stop = state.offsets[record.micro_batch], state.offsets[record.micro_batch + 1]
        for p, use in self._uses_by_module.get(record.module_name, []):
            if id(p) in state.early:
                self._value_early(p, use, record, state)
                continue
            if id(p) in state.split and isinstance(use.rule, rules.linear.MatmulRule):
                self._value_split(p, use, record, state)
                continue
            if (use.module_name, use.pname) in state.stored:
                self._keep_rows(p, use, record, state)
                continue
            z = None
            if state.pre is not None and id(p) in state.pre:
                z = self._direction(p, state)
            if id(p) in self._owned_ids:
                total, contrib = use.rule.grad_and_dot(use.module, use.pname, record.saved, record.grad, z, state.budget)
                self._add_grad(p, use, total)
                route = "backward"
            elif z is not None:
                contrib, route = self._dot_in_backward(p, use, record, z, state)
            else:
                continue
            if contrib is not None:
                state.values[start:stop] += contrib
                self.routes[f"{use.module_name}.{use.pname}"] = route
            if z is not None:
                self._done_with_call(p, record.micro_batch, state)
        for observer in self._observers:
            observer(record, start, stop)

    def _add_grad(self, p: nn.Parameter, use: _Use, total: torch.Tensor) -> None:
        """Add one call's batch gradient (in the parameter's own layout) to p.grad. Runs recorded before
        contiguous_grads existed handed the optimizer GPT-2 Conv1D gradients as transposed views, which
        send clipping and AdamW down torch's strided paths (other rounding, and a ~3x slower AdamW step):
        their replays get the same numbers in that layout again."""
        if not self.config.contiguous_grads and getattr(use.rule, "transposed", False):
            total = total.T.contiguous().T
        p.grad = total if p.grad is None else p.grad + total

    def _late_params(self) -> list[nn.Parameter]:
        """Parameters the optimizer updates whose step direction is known only after backward: second
        order and per-token maps need the whole step, Adam's "current" denominator (or a first step, or a
        zero second moment under "previous") needs the batch gradient."""
        whole_step = self.config.order != 1 or self.config.per_token
        return [
            p
            for p, _ in self._uses
            if id(p) in self._groups
            and (whole_step or needs_gradient(self.optimizer, p, self.config.adam_denominator))
        ]

    def _early_params(self, late: list[nn.Parameter], micro_batches: int, rows: int) -> set[int]:
        """Adam's "current" denominator needs the step's (clipped) gradient. A matmul weight the engine forms
        from per-row blocks in one call has its whole batch gradient in backward; if this step is unclipped
        (clip factor 1), the denominator the optimizer will apply is known right there, so the weight can be
        valued in backward with blocks in a reused buffer (none kept to the end of backward). Its inputs and
        output gradients are kept: a clipped step re-derives the same blocks after backward. Blocks, sums
        and dots are formed the same way on both paths, so a step's numbers never depend on the path.
        Weights whose blocks exceed memory_budget_mb take the stored route instead."""
        if not self._values_in_backward_possible(micro_batches):
            return set()
        budget = self.config.memory_budget_mb * 2**20
        return {
            id(p)
            for p in late
            if len(self._uses_of[id(p)]) == 1
            and id(p) in self._owned_ids
            and isinstance(self._uses_of[id(p)][0].rule, rules.linear.MatmulRule)
            and rows * p.numel() * p.element_size() <= budget
        }

    def _value_early(self, p: nn.Parameter, use: _Use, record: Record, state: _StepState) -> None:
        """Form p's batch gradient from per-row blocks (in a reused buffer) and, when the step is predicted
        unclipped, its values with the denominator the optimizer will then apply."""
        if state.calls.get((record.micro_batch, use.module_name), 0) != 1:
            # Several calls: the gradient is complete only later. Keep this call's blocks; re-derive the rest.
            self._store_instead(state.early, p, use, record, state)
            return
        total, pieces = use.rule.grad_and_rows(use.module, use.pname, record.saved, record.grad, reuse=True)
        self._add_grad(p, use, total)
        if not state.predict_unclipped:
            return
        # The directions are formed a few rows of the weight (as stored) at a time and dotted with those rows
        # of the blocks: at the last layers, early in backward, K x the weight's size of directions would sit
        # on top of nearly every activation (with 16 targets, 144 MiB for an MLP weight at the benchmark size).
        (per_row,) = pieces
        rows, dtype, k = per_row.shape[0], state.value_dtype, self._num_targets
        stored_rows = p.shape[0]
        blocks = per_row.reshape(rows, stored_rows, -1)
        grad = p.grad.detach().reshape(stored_rows, -1)
        width = max(1, _SPLIT_CHUNK_ELEMS // 2 // max(1, k * grad.shape[1]))
        values = torch.zeros(rows, k, dtype=dtype)
        history = torch.zeros(k, dtype=dtype)
        for start in range(0, stored_rows, width):
            chunk = slice(start, min(stored_rows, start + width))
            z = self._directions_of_rows(p, state, chunk, grad[chunk], history)
            values += blocks[:, chunk].reshape(rows, -1).to(dtype) @ z.reshape(k, -1).T
        state.early_parts[id(p)] = (values, history)

    def _store_instead(self, route: set[int], p: nn.Parameter, use: _Use, record: Record, state: _StepState) -> None:
        """Move p from a route valued in backward (`route`: state.early or state.split) to the stored route,
        keeping this call's blocks."""
        route.discard(id(p))
        state.stored.add((use.module_name, use.pname))
        self._keep_rows(p, use, record, state)

    def _values_in_backward_possible(self, micro_batches: int) -> bool:
        """Adam "current" at first order, where a weight's whole batch gradient (hence, for an unclipped step,
        its denominator) can be complete inside backward: one micro-batch, one process, no per-token maps."""
        return (
            micro_batches == 1
            and self._group is None
            and self.config.order == 1
            and not self.config.per_token
            and self.config.adam_denominator == "current"
            and not isinstance(self.optimizer, torch.optim.SGD)
        )

    def _split_params(self, late: list[nn.Parameter], micro_batches: int) -> set[int]:
        """Tied output heads (one matmul use of the weight, stored (vocab, width), and one embedding use)
        under Adam's "current" denominator. Their per-row blocks would be kept through backward (rows x vocab x
        width: 403 MB with 16 rows at vocab 8192, width 768), formed at the very start of backward where every
        activation is still alive, i.e. at the step's memory peak. But the rows of the weight that no token of
        the batch embeds get no gradient from the embedding use, so their part of the denominator, hence of
        the direction, is known as soon as the head's gradient is (if the step is unclipped): those rows are
        valued in backward, a few weight rows at a time (_value_split), and only the touched rows' blocks are
        re-derived after backward from the head's kept input and output gradient. A step that turns out
        clipped re-derives all rows after backward instead (one more matmul of the head's size): done even
        when the previous step was clipped, so that no step keeps the blocks and sets the run's peak."""
        if not self._values_in_backward_possible(micro_batches):
            return set()
        chosen = set()
        for p in late:
            uses = self._uses_of[id(p)]
            matmul = [u for u in uses if isinstance(u.rule, rules.linear.MatmulRule)]
            embedding = [u for u in uses if isinstance(u.rule, rules.embedding.EmbeddingRule)]
            if (
                len(uses) == 2
                and len(matmul) == 1
                and len(embedding) == 1
                and id(p) in self._owned_ids
                and matmul[0].pname == "weight"
                and not matmul[0].rule.transposed
                and p.dim() == 2
            ):
                chosen.add(id(p))
        return chosen

    def _value_split(self, p: nn.Parameter, use: _Use, record: Record, state: _StepState) -> None:
        """Form a tied head's batch gradient (summed as the stored route sums it: training is the same) and
        value the weight rows the embedding use leaves untouched, with the denominator the optimizer will
        apply if the step is unclipped (_split_params)."""
        embedding = next(u for u in self._uses_of[id(p)] if u is not use)
        ids = [r.saved for r in state.store.records if r.module_name == embedding.module_name
               and r.micro_batch == record.micro_batch] if state.store is not None else []
        single = state.calls.get((record.micro_batch, use.module_name), 0) == 1
        rows = record.grad.shape[0]
        # A chunk's blocks (rows x width x din) and its K directions (K x width x din) exist at once, at the
        # step's memory peak: keep both small (_SPLIT_CHUNK_ELEMS in all, split in proportion).
        chunk = _SPLIT_CHUNK_ELEMS * rows // (rows + self._num_targets)
        a, _ = use.rule.factors(use.module, record.saved, record.grad)
        if not single or not ids or not use.rule.chunks_reproduce_pieces(use.module, rows, a.shape[1], p.dtype, chunk):
            # The stored route instead: the batch gradient summed as every other step sums it (a run replayed
            # with other targets, or none, must train bit for bit the same), the blocks kept to the end.
            self._store_instead(state.split, p, use, record, state)
            return
        touched = torch.zeros(p.shape[0], dtype=torch.bool)
        for saved in ids:
            touched[saved[saved >= 0]] = True
        history = torch.zeros(self._num_targets, dtype=state.value_dtype)

        def direction_of(rows: slice, grad_rows: torch.Tensor) -> torch.Tensor:  # touched rows: after backward
            return self._directions_of_rows(p, state, rows, grad_rows, history, skip=touched[rows])

        total, values = use.rule.grad_and_dot_by_weight_rows(use.module, record.saved, record.grad, direction_of,
                                                              chunk)
        self._add_grad(p, use, total)
        state.touched[id(p)] = touched.nonzero().flatten()
        state.split_parts[id(p)] = (values, history)
        self.routes[f"{use.module_name}.{use.pname}"] = "split"

    def _directions_of_rows(self, p: nn.Parameter, state: _StepState, rows: slice | torch.Tensor,
                            grad_rows: torch.Tensor, history: torch.Tensor,
                            skip: torch.Tensor | None = None) -> torch.Tensor:
        """Directions (K, len(rows), columns) of rows `rows` of p (as stored) under Adam's "current" denominator
        with grad_rows as those rows' batch gradient; adds their -h . g_v to `history`. Rows where `skip` is
        set get a zero direction and no history (valued elsewhere)."""
        entry = linearize(self.optimizer, p, self._groups[id(p)], grad_rows, "current", rows=rows)
        g_v = self._target_gradient_rows(p, state.target_records, state.value_dtype, rows)
        if skip is not None:
            g_v[:, skip] = 0
        z, carried = entry.direction_and_history(g_v)
        history += carried
        return z

    def _target_gradient_rows(self, p: nn.Parameter, records: dict[str, list[Record]], dtype,
                              rows: slice | torch.Tensor) -> torch.Tensor:
        """Rows `rows` (a slice or an index) of each target's gradient of a tied head (its matmul use, then its
        embedding use; or a weight's single matmul use): (K, rows, columns of the weight as stored)."""
        size = rows.stop - rows.start if isinstance(rows, slice) else rows.numel()
        g_v = None
        for use in self._gradient_uses[id(p)]:
            for record in records.get(use.module_name, []):
                if isinstance(use.rule, rules.linear.MatmulRule):
                    part = use.rule.grads_of_weight_rows(use.module, record.saved, record.grad, dtype, rows)
                    g_v = part if g_v is None else g_v.add_(part)
                else:
                    if g_v is None:
                        g_v = torch.zeros(self._num_targets, size, p[0].numel(), dtype=dtype)
                    use.rule.add_grads_of_weight_rows(use.module, record.saved, record.grad, g_v, rows)
        if g_v is None:
            g_v = torch.zeros(self._num_targets, size, p[0].numel(), dtype=dtype)
        return g_v

    def _value_touched_rows(self, p: nn.Parameter, state: _StepState, train_records: dict[str, list[Record]],
                            untouched: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """After backward, a split head's touched rows (their denominator includes the embedding use's
        gradient): their blocks re-derived from the head's kept record and dotted with their directions,
        added to the untouched rows' values and history formed in backward. ((rows, K), (K,))"""
        values, history = untouched
        index = state.touched[id(p)]
        history = history.clone()
        z = self._directions_of_rows(p, state, index, p.grad.detach()[index], history)
        values = values.clone()
        for use in self._uses_of[id(p)]:  # the head's blocks of those rows, and the embedding use's rows
            for record in train_records.get(use.module_name, []):
                values += use.rule.dot_weight_rows(use.module, record.saved, record.grad, z, index, state.budget)
            self.routes[f"{use.module_name}.{use.pname}"] = "split"
        return values, history

    def _done_with_call(self, p: nn.Parameter, micro_batch: int, state: _StepState) -> None:
        """Count down the calls of p's modules in this micro-batch; after the last one of the last
        micro-batch, p's direction goes back to the pool (K x its size: only a few are alive at a time)."""
        key = (micro_batch, id(p))
        left = state.pending.get(key)
        if left is None:
            left = sum(state.calls.get((micro_batch, use.module_name), 0) for use in self._uses_of[id(p)])
        left -= 1
        state.pending[key] = left
        if left <= 0 and micro_batch == len(state.offsets) - 2:
            del state.pending[key]
            state.directions.pop(id(p), None)
            buffer = state.buffers.pop(id(p), None)
            if buffer is not None:
                self._pool.give(buffer)

    def _dot_in_backward(
        self, p: nn.Parameter, use: _Use, record: Record, z: torch.Tensor, state: _StepState
    ) -> tuple[torch.Tensor, str]:
        """Values of a parameter whose batch gradient autograd forms: pairwise ("ghost") dots when the step's
        direction is a scalar times the target gradient (SGD) and that is cheapest, else the rule's routes."""
        entry = state.pre[id(p)]
        targets = state.target_records.get(use.module_name, [])
        ghost = getattr(use.rule, "ghost_dot", None)
        if entry.precond is None and use.pname == "weight" and ghost is not None and targets:
            din_dout = p.numel()
            rows = record.saved.shape[0]
            tokens = record.saved[0].numel() // record.saved.shape[-1]
            ghost_cost = sum(use.rule.ghost_cost(use.module, record.saved, t.saved) for t in targets)
            player_cost = rows * tokens * din_dout + rows * z.shape[0] * din_dout
            if ghost_cost < player_cost:
                contrib = sum(
                    ghost(use.module, record.saved, record.grad, t.saved, t.grad, state.value_dtype) for t in targets
                ) * entry.scale
                key = (id(p), use.module_name)
                if key not in state.cross:
                    others = self._target_gradient(p, state.target_records, state.value_dtype, skip=use.module_name)
                    state.cross[key] = None if others is None else entry.direction(others)
                if state.cross[key] is not None:  # tied weights: the cross terms with the other uses
                    cross, _ = use.rule.dot(
                        use.module, use.pname, record.saved, record.grad, state.cross[key], False, state.budget
                    )
                    contrib = contrib + cross
                return contrib, "ghost"
        return use.rule.dot(use.module, use.pname, record.saved, record.grad, z, False, state.budget)

    def _stored_uses(self, late: list[nn.Parameter], rows: int) -> tuple[set[tuple[str, str]], int]:
        """Uses of late parameters (valued after backward) whose per-row gradients are kept from backward,
        within keep_rows_mb, and their bytes."""
        # Owned weights: their per-row blocks exist anyway. Others: only vectors (biases, norm scales), whose
        # per-row gradients are cheap; a matmul weight autograd forms would need a second matmul either way.
        uses = [
            (use, p)
            for p in late
            for use in self._uses_of[id(p)]
            if use.rule.keeps_rows(use.pname) and (id(p) in self._owned_ids or p.dim() <= 1)
        ]
        # Smallest first, while the cap allows: every matmul weight saves the same time per byte kept, and
        # the largest (an output head) would also keep its big output gradient on the other route anyway.
        chosen, used, cap = set(), 0, self.config.keep_rows_mb * 2**20
        for use, p in sorted(uses, key=lambda pair: pair[1].numel()):
            nbytes = rows * p.numel() * p.element_size()
            if used + nbytes > cap:
                break
            chosen.add((use.module_name, use.pname))
            used += nbytes
        return chosen, used

    def _keep_rows(self, p: nn.Parameter, use: _Use, record: Record, state: _StepState) -> None:
        """Stored route: keep this call's per-row gradients (forming the batch gradient from them if owned)."""
        if not self._num_targets:  # nothing to value: only the batch gradient, summed as a valued step sums it
            if id(p) in self._owned_ids:
                self._add_grad(p, use, use.rule.grad_and_rows(use.module, use.pname, record.saved, record.grad)[0])
            return
        calls = state.row_grads.setdefault((use.module_name, use.pname, record.micro_batch), [])
        if id(p) in self._owned_ids:
            # Fresh buffers, freed after the step like activations: a pool kept across steps would sit on
            # top of the next forward pass's activation peak.
            total, per_row = use.rule.grad_and_rows(use.module, use.pname, record.saved, record.grad)
            self._add_grad(p, use, total)
        else:
            per_row = use.rule.grads(use.module, use.pname, record.saved, record.grad, state.value_dtype)
        calls.append(per_row)
        self.routes[f"{use.module_name}.{use.pname}"] = "stored"
        state.kept_bytes += record.grad.shape[0] * p.numel() * p.element_size()
        if state.trim_at_bytes is not None and state.kept_bytes >= state.trim_at_bytes:
            # The step's memory peak is at the end of backward: the kept blocks (each its own mapping) on top of
            # the activation memory backward has freed, which glibc keeps in its heap. Returned here, once, it is
            # not under the last blocks (docs/engine.md, session 14: second order's peak 1.31 -> 1.22x plain at the
            # benchmark size, steps 1-2% longer). Numbers are unchanged.
            state.trim_at_bytes = None
            release_free_heap()

    def _target_gradient(
        self,
        p: nn.Parameter,
        records: dict[str, list[Record]],
        dtype,
        skip: str | None = None,
        out: torch.Tensor | None = None,
    ) -> torch.Tensor | None:
        """Each target's gradient for one parameter, summed over the parameter's uses: (K, *shape), written
        into the flat buffer `out` when the rule can. With `skip`: over the other uses only, None if none."""
        g_v = None
        for use in self._gradient_uses[id(p)]:
            if use.module_name == skip:
                continue
            for record in records.get(use.module_name, []):
                if g_v is None:
                    g_v = use.rule.grads(use.module, use.pname, record.saved, record.grad, dtype, out=out)
                else:
                    use.rule.add_grads(use.module, use.pname, record.saved, record.grad, g_v)
        if g_v is None and skip is None:
            if out is not None and out.dtype == dtype:
                return out[: self._num_targets * p.numel()].view(self._num_targets, *p.shape).zero_()
            return torch.zeros(self._num_targets, *p.shape, dtype=dtype)
        return g_v

    def _direction(self, p: nn.Parameter, state: _StepState) -> torch.Tensor:
        """coef * g_v for the backward route (k applied later); adds -h . g_v to the history once."""
        z = state.directions.get(id(p))
        if z is None:  # once per parameter and step, however many uses and micro-batches
            entry = state.pre[id(p)]
            buffer = self._pool.take(self._num_targets * p.numel(), state.value_dtype)
            state.buffers[id(p)] = buffer
            g_v = self._target_gradient(p, state.target_records, state.value_dtype, out=buffer)
            z, history = entry.direction_and_history(g_v)
            state.directions[id(p)] = z
            state.history += history
        return z

    # -- pieces ------------------------------------------------------------------------------------
    def _clip(self, params: list[torch.Tensor]) -> tuple[float, float]:
        """Global-norm clipping with torch's own function and formula; returns (norm, factor k)."""
        max_norm = self.config.max_grad_norm
        if max_norm is None:
            norm = torch.nn.utils.get_total_norm([p.grad for p in params]) if params else torch.tensor(0.0)
            clip = 1.0
        else:
            norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
            clip = min(1.0, float(max_norm / (norm + 1e-6)))
        if not math.isfinite(float(norm)):
            self.optimizer.zero_grad(set_to_none=True)
            raise NonFiniteLossError(f"gradient norm is {float(norm)}; nothing was applied")
        return float(norm), clip

    def _target_pass(self, store: CaptureStore) -> torch.Tensor:
        """Targets' losses and gradient factors at the current weights, in eval mode, RNG untouched."""
        was_training = self.model.training
        # Only the hooks' output gradients are needed: skip autograd's weight gradients where possible.
        others = [p for p, _ in self._uses if id(p) not in self._owned_ids]
        with torch.random.fork_rng(devices=[]):
            self.model.eval()
            for p in self._owned:
                p.requires_grad_(False)
            try:
                with self._capturer.capture(store, 0, self._num_targets):
                    losses = self.task.target_losses(self.model, self._targets)
                    if not torch.isfinite(losses).all():
                        raise NonFiniteLossError(f"target losses are not finite: {losses.tolist()}")
                    inputs = others + store.leaves  # autograd only runs the branches these need
                    if inputs:
                        torch.autograd.grad(losses.sum(), inputs, allow_unused=True)
            finally:
                for p in self._owned:
                    p.requires_grad_(True)
                self.model.train(was_training)
        return losses.detach()

    def _hvps(self, lin: "_Linearizations", consume: Callable[[nn.Parameter, torch.Tensor], None]
              ) -> dict[int, torch.Tensor]:
        """H_v,k u for each target k and parameter, u = h + D/2 with D = -coef * (clipped g_B), as (K, *shape).

        This runs on top of the per-row blocks kept through backward, the step's memory peak, so nothing
        parameter-sized is held longer than it must be. H_v u = d(g . u)/dw is taken as the vector-Jacobian
        product of the target's gradients g with u: only each g's place in the graph is kept (not g), and each
        u is formed when the second backward reaches that place (not all at once before it; with one target it
        is not kept). Each target's products go straight into (K, *shape) tensors (with one target, they are
        them), and the last target's second backward hands every parameter's products to `consume` the moment
        they are complete (which values the parameter and frees its blocks) instead of collecting all of them
        first. Returns the products `consume` did not get (parameters that backward does not reach: zeros)."""
        params = [p for p, _ in self._uses]
        k = self._num_targets
        kept_u: list[torch.Tensor | None] = [None] * len(params)  # several targets: each u formed once
        out: dict[int, torch.Tensor] = {}
        consumed: set[int] = set()
        set_aside: dict[int, torch.Tensor | None] = {}
        handles: list[Any] = []
        was_training = self.model.training

        def half_step(i: int) -> torch.Tensor:
            u = kept_u[i] if kept_u[i] is not None else self._half_step(params[i], lin)
            if k > 1:
                kept_u[i] = u
            return u

        def place(p: nn.Parameter, h: torch.Tensor | None, j: int) -> None:
            if k == 1:
                out[id(p)] = torch.zeros(1, *p.shape, dtype=p.dtype) if h is None else h.unsqueeze(0)
                return
            if id(p) not in out:
                out[id(p)] = torch.zeros(k, *p.shape, dtype=p.dtype)
            if h is not None:
                out[id(p)][j].copy_(h)

        def on_products(p: nn.Parameter) -> None:  # the last target's products of p are complete
            h, p.grad = p.grad, None
            place(p, h, k - 1)
            consumed.add(id(p))
            consume(p, out.pop(id(p)))

        with torch.random.fork_rng(devices=[]):
            self.model.eval()
            try:
                for j in range(k):
                    single = self.task.select_targets(self._targets, [j])
                    loss = self.task.target_losses(self.model, single)[0]
                    grads = list(torch.autograd.grad(loss, params, create_graph=True, allow_unused=True))
                    del loss
                    edges, stand_ins, swaps = _hand_over_when_reached(grads, half_step)
                    handles += swaps
                    if not edges:  # the targets' gradients do not depend on the weights: no products
                        continue
                    if j < k - 1:
                        hv = list(torch.autograd.grad(edges, params, grad_outputs=stand_ins, allow_unused=True))
                        del edges, stand_ins
                        for i, p in enumerate(params):
                            h, hv[i] = hv[i], None
                            place(p, h, j)
                        continue
                    # The last target: the products land in .grad (the batch gradients, set aside meanwhile) and
                    # are taken from there by a hook as soon as each is complete (a tied weight's once, summed).
                    for p in params:
                        set_aside[id(p)], p.grad = p.grad, None
                    handles += [p.register_post_accumulate_grad_hook(on_products) for p in params]
                    torch.autograd.backward(edges, grad_tensors=stand_ins, inputs=params)
                    del edges, stand_ins
            finally:
                for handle in handles:
                    handle.remove()
                for p in params:
                    if id(p) in set_aside:
                        p.grad = set_aside[id(p)]
                self.model.train(was_training)
        for p in params:  # not reached by the last second backward
            if id(p) not in consumed and id(p) not in out:
                place(p, None, k - 1)
        return out

    def _half_step(self, p: nn.Parameter, lin: "_Linearizations") -> torch.Tensor:
        """u = h + D/2 for one parameter (zeros when the optimizer does not update it)."""
        entry = lin.get(id(p))
        if entry is None:
            return torch.zeros_like(p)
        return (entry.history() - 0.5 * entry.coef * lin.grad(id(p))).to(p.dtype)

    def _values_after(self, train_store: CaptureStore, state: _StepState, lin: "_Linearizations", clip: float, k: int):
        """The "after" route: contract kept inputs/output gradients once the step's direction is known.

        Each parameter's additions to the values are collected and applied in parameter order, so the sums
        round the same whether a parameter was valued inside the second order's last backward (_hvps) or here."""
        dtype = state.value_dtype
        rows_total = state.offsets[-1]
        order2 = self.config.order == 2
        ncols = 2 * k if order2 else k
        out = torch.zeros(rows_total, ncols, dtype=dtype)
        per_token = None
        history = torch.zeros(k, dtype=dtype)
        train_records = train_store.by_module()
        valued: dict[int, tuple[torch.Tensor, list] | None] = {}

        def value(p: nn.Parameter, hvp: torch.Tensor | None) -> None:
            entry = lin.get(id(p))  # None: not updated by the optimizer, no player moves it
            valued[id(p)] = None if entry is None else self._value_late(p, entry, hvp, train_records, state, clip,
                                                                         ncols)

        hvps = self._hvps(lin, value) if order2 else {}
        for p, uses in self._uses:
            early = state.early_parts.pop(id(p), None)
            if early is not None:  # valued in backward (one call, one micro-batch), kept in this order
                out += early[0]
                history += early[1]
                self.routes[f"{uses[0].module_name}.{uses[0].pname}"] = "backward"
                continue
            split = state.split_parts.pop(id(p), None)
            if split is not None:  # a tied head valued on its untouched rows in backward: the touched rows
                split_values, split_history = self._value_touched_rows(p, state, train_records, split)
                out += split_values
                history += split_history
                continue
            if id(p) not in valued:
                value(p, hvps.pop(id(p)) if order2 else None)
            result = valued.pop(id(p))
            if result is None:
                continue
            carried, additions = result
            history += carried
            for start, stop, contrib in additions:
                if self.config.per_token:
                    if per_token is None or per_token.shape[1] < contrib.shape[1]:
                        per_token = _grow(per_token, rows_total, contrib.shape[1], ncols, dtype)
                    per_token[start:stop, : contrib.shape[1]] += contrib
                    out[start:stop] += contrib.sum(dim=1)
                else:
                    out[start:stop] += contrib
        train_store.records.clear()
        values_first = out[:, :k]
        values_second = out[:, :k] + out[:, k:] if order2 else None
        if per_token is not None:
            per_token = per_token[:, :, :k] + per_token[:, :, k:] if order2 else per_token
        return values_first, values_second, per_token, history

    def _value_late(self, p: nn.Parameter, entry: Linearization, hvp: torch.Tensor | None,
                    train_records: dict[str, list[Record]], state: _StepState, clip: float, ncols: int
                    ) -> tuple[torch.Tensor, list[tuple[int, int, torch.Tensor]]]:
        """One late parameter's values once its direction is known: (-h . g_v, [(first row, stop, values) per
        call]). Frees the parameter's kept blocks."""
        dtype = state.value_dtype
        # Not kept for the next step: taken after backward, a kept buffer would only sit under the next step's
        # forward and backward (the memory peak) to save re-faulting a few tens of MB here.
        buffer = self._pool.take(ncols * p.numel(), dtype, keep=False)
        g_v = self._target_gradient(p, state.target_records, dtype, out=buffer)
        first, carried = entry.direction_and_history(g_v)
        z = first if hvp is None else _with_second_order(first, buffer, entry, hvp.to(dtype))
        z.mul_(clip)
        del g_v, first, hvp
        additions = []
        for use in self._uses_of[id(p)]:
            if id(p) in state.early:  # not valued in backward (clipped step): the same blocks again
                for record in train_records.get(use.module_name, []):
                    _, per_row = use.rule.grad_and_rows(use.module, use.pname, record.saved, record.grad, reuse=True)
                    start, stop = state.offsets[record.micro_batch], state.offsets[record.micro_batch + 1]
                    additions.append((start, stop, use.rule.dot_rows(use.module, use.pname, per_row, z)))
                self.routes[f"{use.module_name}.{use.pname}"] = "player"
                continue
            if (use.module_name, use.pname) in state.stored:
                for mb in range(len(state.offsets) - 1):
                    start, stop = state.offsets[mb], state.offsets[mb + 1]
                    for per_row in state.row_grads.pop((use.module_name, use.pname, mb), []):
                        additions.append((start, stop, use.rule.dot_rows(use.module, use.pname, per_row, z)))
                continue
            for record in train_records.get(use.module_name, []):
                contrib, route = use.rule.dot(
                    use.module, use.pname, record.saved, record.grad, z, self.config.per_token, state.budget
                )
                self.routes[f"{use.module_name}.{use.pname}"] = route
                start, stop = state.offsets[record.micro_batch], state.offsets[record.micro_batch + 1]
                additions.append((start, stop, contrib))
        del z
        self._pool.give(buffer)
        return carried, additions


class _Linearizations:
    """The optimizer's linearization of the late parameters' updates, formed when asked and not kept: under
    Adam each holds a parameter-sized preconditioner, and all of them at once (139 MB at the benchmark size)
    would sit on the kept per-row blocks through the second order's HVP, the step's memory peak. Forming one
    again costs a few elementwise passes (~25 ms a step for all of them at the benchmark size). The clipped
    batch gradients are referenced here, so entries can be formed while .grad is set aside (_hvps)."""

    def __init__(self, optimizer: torch.optim.Optimizer, groups: dict[int, dict], denominator: str,
                 params: list[nn.Parameter]):
        self._optimizer, self._groups, self._denominator = optimizer, groups, denominator
        self._params = {id(p): p for p in params if p.grad is not None}
        self._grads = {id(p): p.grad.detach() for p in params if p.grad is not None}

    def grad(self, key: int) -> torch.Tensor:
        return self._grads[key]

    def get(self, key: int) -> Linearization | None:
        p = self._params.get(key)
        if p is None:
            return None
        return linearize(self._optimizer, p, self._groups[key], self._grads[key], self._denominator)


_MMAP_THRESHOLD_MAX = 32 * 2**20
_SPLIT_CHUNK_ELEMS = 16 * 2**20  # blocks and directions of a few weight rows valued in backward (split, early)


def _hand_over_when_reached(grads: list[torch.Tensor | None], vector: Callable[[int], torch.Tensor]):
    """Set up a vector-Jacobian product of the gradients `grads` (formed with create_graph) with vectors
    formed only when backward reaches each: returns the gradients' places in the graph (the gradients
    themselves are released from `grads`), zero-memory stand-ins to start backward with, and the hooks that
    swap each stand-in for vector(i) as its node runs. Values are those of passing the vectors themselves."""
    edges, stand_ins, wanted = [], [], {}
    for i in range(len(grads)):
        g, grads[i] = grads[i], None
        if g is not None and g.requires_grad:
            edge = get_gradient_edge(g)
            edges.append(edge)
            stand_ins.append(torch.zeros((), dtype=g.dtype).expand(g.shape))
            wanted.setdefault(id(edge.node), (edge.node, {}))[1][edge.output_nr] = i
        del g

    def swap(outputs: dict[int, int], grad_outputs: tuple) -> tuple:
        grad_outputs = list(grad_outputs)
        for output_nr, i in outputs.items():
            grad_outputs[output_nr] = vector(i)
        return tuple(grad_outputs)

    handles = [node.register_prehook(functools.partial(swap, outputs)) for node, outputs in wanted.values()]
    return edges, stand_ins, handles


def _with_second_order(first: torch.Tensor, buffer: torch.Tensor, entry: Linearization, hvp: torch.Tensor):
    """The (2K, *shape) directions [first; coef * hvp]. When `first` was formed at the start of `buffer`,
    the second-order half is written right after it in the same memory order, so the dots read one block
    (no concatenated or re-laid-out copy of 2K x the parameter's size)."""
    k = first.shape[0]
    numel = first.numel()
    if first.data_ptr() != buffer.data_ptr() or buffer.numel() < 2 * numel:
        return torch.cat([first, entry.direction(hvp)])
    if not first.is_contiguous():
        return torch.cat([first, entry.direction(hvp)])
    z = buffer[: 2 * numel].view(2 * k, *first.shape[1:])
    z[k:].copy_(hvp)
    entry.scale_in_place(z[k:])
    return z


class _BufferPool:
    """Flat buffers for target directions, kept across steps: a fresh K x parameter-sized tensor on every
    step costs its page faults again (on CPU they made forming 16 targets' directions ~3x slower than the
    matmul itself). Directions are handed back as soon as their parameter is valued, so only a few
    parameters' worth is alive at a time."""

    def __init__(self) -> None:
        self._free: list[torch.Tensor] = []
        self._taken: set[int] = set()  # data pointers of the buffers taken since the last trim

    def take(self, numel: int, dtype: torch.dtype, keep: bool = True) -> torch.Tensor:
        """A flat buffer of at least numel elements; keep=False: freed at the next trim unless also taken with
        keep=True meanwhile."""
        fits = [i for i, b in enumerate(self._free) if b.dtype == dtype and b.numel() >= numel]
        if fits:
            buffer = self._free.pop(min(fits, key=lambda i: self._free[i].numel()))
        else:
            # Above glibc's largest mmap threshold (32 MiB), so a buffer kept across steps is its own mapping
            # and never pins the heap (which would keep freed activation memory from going back).
            min_numel = (_MMAP_THRESHOLD_MAX + 4096) // torch.finfo(dtype).bits * 8 if dtype.is_floating_point else 0
            buffer = torch.empty(max(numel, min_numel), dtype=dtype)
        if keep:
            self._taken.add(buffer.data_ptr())
        return buffer

    def give(self, buffer: torch.Tensor) -> None:
        self._free.append(buffer)

    def trim(self, max_bytes: int) -> None:
        """Keep the smallest buffers this step took with keep=True (directions formed inside backward), up to
        max_bytes in all, for the next step and free the rest: what stays sits on top of the next forward
        pass's activation peak (with many targets, K x a large parameter would), while a freed one costs page
        faults again when it is next taken. A buffer the step did not take that way is not kept: a clipped
        step's whole-weight directions (108 MiB with 16 targets at the benchmark size) or second order's
        directions, both formed after backward, would otherwise sit under every later step's peak."""
        used = [b for b in self._free if b.data_ptr() in self._taken]
        self._taken = set()
        kept, total = [], 0
        for buffer in sorted(used, key=lambda b: b.numel() * b.element_size()):
            size = buffer.numel() * buffer.element_size()
            if total + size > max_bytes:
                break
            kept.append(buffer)
            total += size
        self._free = kept

    def clear(self) -> None:
        self._free.clear()
        self._taken = set()


def _resolve_group(process_group: Any) -> Any:
    """None (one process), or the group whose ranks share each step's batch."""
    if process_group is None or process_group is False:
        return None
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError(
            "AttributionEngine(process_group=...) needs torch.distributed initialized first "
            "(torch.distributed.init_process_group, e.g. under torchrun)"
        )
    return dist.group.WORLD if process_group is True else process_group


def _all_reduce_ints(numbers: list[int], group: Any) -> list[int]:
    import torch.distributed as dist

    tensor = torch.tensor(numbers, dtype=torch.int64)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=group)
    return [int(x) for x in tensor.tolist()]


def _all_reduce_grads(optimizer: torch.optim.Optimizer, step_loss: float, group: Any) -> float:
    """Sum every parameter's gradient (and the step's loss) over the ranks, so clipping, the optimizer
    step and the values' directions all see the global batch. A parameter keeps grad None only if it
    has none on every rank (Adam skips such parameters; a zero gradient would still move them)."""
    import torch.distributed as dist

    params = [p for g in optimizer.param_groups for p in g["params"]]
    present = torch.tensor([0 if p.grad is None else 1 for p in params] + [0], dtype=torch.float64)
    present[-1] = step_loss
    dist.all_reduce(present, op=dist.ReduceOp.SUM, group=group)
    grads = []
    for p, flag in zip(params, present[:-1].tolist()):
        if flag > 0:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            grads.append(p.grad)
    if grads:
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()
    return float(present[-1])


def _grow(current, rows, tokens, cols, dtype):
    grown = torch.zeros(rows, tokens, cols, dtype=dtype)
    if current is not None:
        grown[:, : current.shape[1]] = current
    return grown
