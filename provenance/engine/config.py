"""Engine settings, frozen so a run's settings cannot drift after they are recorded."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch


@dataclass(frozen=True)
class EngineConfig:
    """How values are computed for each training step.

    order: 1 = first-order Taylor (exact Shapley of the linearized utility); 2 = adds the pairwise
        curvature term (one Hessian-vector product of each target's loss per step).
    max_grad_norm: global-norm clipping exactly as torch.nn.utils.clip_grad_norm_ (None = no clipping).
    loss_reduction: "token_mean" (sum of token losses over all rows of all micro-batches / their token
        count) or "sample_mean" (mean over rows of each row's mean token loss).
    per_token: also return values split over the training tokens of each row.
    value_dtype: dtype of the value computation; None = float64 for float64 models, else float32.
    memory_budget_mb: cap on transient per-player gradient blocks (the per-player route); the buffer is
        reused across steps, so it sits on top of the forward pass's peak. It fixes the summation order of
        the batch gradient, so a replay takes it from the run's manifest. Target-direction buffers (K x a
        parameter's size) kept for the next step are capped by the same amount.
    keep_rows_mb: cap on per-row gradients kept from backward for values taken after it (second order,
        Adam "current", many targets): within it, the per-row blocks that form the batch gradient anyway are
        kept ("stored" route: no extra matmul, memory rows x parameters); above it, they are re-derived
        after backward from kept activations (one more batched matmul per weight). 0 = never keep.
    weight_gradients: how the batch gradient of matmul weights and embeddings is formed.
        "per_row": by the engine from per-row blocks (a batched matmul of the same multiply-adds, then
            summed), so per-row gradients come at no extra matmul: the fast choice for Adam (whose
            preconditioner rules out pairwise dots) and for many targets.
        "matmul": by autograd's single matmul; SGD values then use pairwise ("ghost") dots,
            sum_{n,s} (a_n . a_s)(b_n . b_s), which never form a per-row gradient: the fast choice for SGD with
            few targets (per-row blocks are re-derived only where a cost model finds it cheaper).
        "auto" (default): "matmul" for SGD, "per_row" for Adam/AdamW. The choice fixes the floating-point
            summation order of training, so replays of a run must use the same one (the run records it).
    adam_denominator: which Adam second moment defines the fixed-state linearization.
        "current" (default): the denominator the optimizer really applies in this step (v_t includes this
            batch). Then h + sum_i d_i is exactly the real update and the ledger closes; values track real
            leave-one-out retraining best (tests/engine/test_shapley_sanity.py). It needs the step's clipped
            gradient: matmul weights used once per step are formed in backward and, when the previous step
            was unclipped, valued there as if this step were unclipped too (clip factor 1); a clipped step
            re-derives them after backward from kept inputs (the same numbers, one more batched matmul).
            Other parameters are valued after backward.
        "previous" (DESIGN.md, the Adam follow-up paper): A_t = sqrt(v_{t-1}/(1-beta2^(t-1))) + eps, known
            before the step, so first-order values are formed inside backward at almost no cost. Elements
            never updated yet (v_{t-1} == 0) and an optimizer's first step use "current".
    contiguous_grads: hand the optimizer gradients the engine formed in the parameter's own memory layout
        (default). False reproduces runs recorded before this setting existed, which handed GPT-2 Conv1D
        weights a transposed view: clipping and AdamW then sum and round in another order, so a replay
        must use the run's own setting (trainer.engine_config reads it from the manifest).
    release_memory: before each step's forward pass, return the memory earlier steps freed to the OS
        (glibc's malloc_trim; a no-op elsewhere). glibc keeps freed chunks under 32 MB resident, so the
        engine's transient memory (per-row blocks kept until backward ends, directions) otherwise stays
        under the next forward pass and sets the process's peak: with it, every benchmark configuration
        stayed under 1.3x plain training's peak RSS (docs/engine.md). Costs page faults on the next step
        (measured: 8-12% longer steps in session 9, more since); numbers are unchanged. Off by default.
        Independently of it, a step that keeps 256 MB or more of per-row blocks past backward (second order)
        returns the free heap memory once, late in backward, where its peak is (engine._keep_rows).
    """

    order: Literal[1, 2] = 1
    max_grad_norm: float | None = 1.0
    loss_reduction: Literal["token_mean", "sample_mean"] = "token_mean"
    per_token: bool = False
    value_dtype: torch.dtype | None = None
    memory_budget_mb: float = 160.0
    keep_rows_mb: float = 4096.0
    weight_gradients: Literal["auto", "per_row", "matmul"] = "auto"
    adam_denominator: Literal["current", "previous"] = "current"
    contiguous_grads: bool = True
    release_memory: bool = False

    def __post_init__(self) -> None:
        if self.order not in (1, 2):
            raise ValueError(f"EngineConfig.order must be 1 or 2, got {self.order!r}")
        if self.loss_reduction not in ("token_mean", "sample_mean"):
            raise ValueError(
                f"EngineConfig.loss_reduction must be 'token_mean' or 'sample_mean', got {self.loss_reduction!r}"
            )
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ValueError(f"EngineConfig.max_grad_norm must be > 0 or None, got {self.max_grad_norm!r}")
        if self.adam_denominator not in ("previous", "current"):
            raise ValueError(
                f"EngineConfig.adam_denominator must be 'previous' or 'current', got {self.adam_denominator!r}"
            )
        if self.memory_budget_mb <= 0:
            raise ValueError("EngineConfig.memory_budget_mb must be > 0")
        if self.weight_gradients not in ("auto", "per_row", "matmul"):
            raise ValueError(
                f"EngineConfig.weight_gradients must be 'auto', 'per_row' or 'matmul', got {self.weight_gradients!r}"
            )
        if not self.keep_rows_mb >= 0:
            raise ValueError("EngineConfig.keep_rows_mb must be >= 0")

    def to_json(self) -> dict:
        """Plain-JSON form for run manifests."""
        return {
            "order": self.order,
            "max_grad_norm": self.max_grad_norm,
            "loss_reduction": self.loss_reduction,
            "per_token": self.per_token,
            "value_dtype": None if self.value_dtype is None else str(self.value_dtype).removeprefix("torch."),
            "memory_budget_mb": self.memory_budget_mb,
            "keep_rows_mb": self.keep_rows_mb,
            "weight_gradients": self.weight_gradients,
            "adam_denominator": self.adam_denominator,
            "contiguous_grads": self.contiguous_grads,
            "release_memory": self.release_memory,
        }
