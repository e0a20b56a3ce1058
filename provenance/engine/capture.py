"""Forward/backward hooks on the tracked modules.

The forward hook keeps what the module's rule needs (its input, a normalized input, token ids) and puts a
hook on the output tensor; when backward reaches that output, the gradient is handed to the engine with
the saved input. Hooks are attached for the engine's lifetime but do nothing unless a capture is switched
on, and `detach()` always removes them (Opacus issue #176: leaking hooks).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch
from torch import nn

from ..errors import UnsupportedLayerError
from .registry import LayerRule


@dataclass
class Record:
    """One call of one module in one pass: what its rule saved, and dL/d(output) once backward ran."""

    module_name: str
    module: nn.Module
    rule: LayerRule
    micro_batch: int
    saved: Any
    grad: torch.Tensor | None = None


@dataclass
class CaptureStore:
    """Records of one pass. With `keep=False` a record is dropped as soon as the engine has used it."""

    keep: bool = True
    keep_only: set[str] | None = None  # keep records of these modules only (None: all)
    on_grad: Callable[[Record], None] | None = None
    records: list[Record] = field(default_factory=list)
    leaves: list[torch.Tensor] = field(default_factory=list)  # outputs the hooks made into grad leaves
    calls: dict[tuple[int, str], int] = field(default_factory=dict)  # (micro-batch, module): forward calls

    def by_module(self) -> dict[str, list[Record]]:
        out: dict[str, list[Record]] = {}
        for record in self.records:
            if record.grad is not None:
                out.setdefault(record.module_name, []).append(record)
        return out


class Capturer:
    """Owns the hooks on the tracked modules; `capture(store, micro_batch, rows)` switches them on."""

    def __init__(self, tracked: list[tuple[str, nn.Module, LayerRule]]):
        self._tracked = tracked
        self._handles: list[Any] = []
        self._store: CaptureStore | None = None
        self._micro_batch = 0
        self._rows = 0

    def attach(self) -> None:
        if self._handles:
            return
        for name, module, rule in self._tracked:
            self._handles.append(module.register_forward_hook(self._make_hook(name, rule)))

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _make_hook(self, name: str, rule: LayerRule):
        def hook(module: nn.Module, args: tuple, output: Any) -> Any:
            store = self._store
            if store is None or not torch.is_grad_enabled() or not isinstance(output, torch.Tensor):
                return None
            replaced = None
            if not output.requires_grad:
                # The engine owns this module's weight gradient (requires_grad is off during the pass) and
                # its input needs none: make the output a leaf that requires grad, so backward reaches it.
                replaced = output = output.detach().requires_grad_(True)
                store.leaves.append(replaced)
            saved = rule.capture(module, args, output)
            if rule.rows(saved) != self._rows or output.shape[0] != self._rows:
                raise UnsupportedLayerError(
                    f"module '{name}' ({type(module).__name__}) was called on {output.shape[0]} rows while the "
                    f"batch has {self._rows}: its output is shared across rows (e.g. position embeddings "
                    "broadcast over the batch), so per-row gradients cannot be separated. Pass per-row inputs "
                    "(e.g. explicit position_ids of shape (rows, tokens))."
                )
            record = Record(name, module, rule, self._micro_batch, saved)
            key = (self._micro_batch, name)
            store.calls[key] = store.calls.get(key, 0) + 1
            keep = store.keep and (store.keep_only is None or name in store.keep_only)
            if keep:
                store.records.append(record)

            def keep_grad(grad: torch.Tensor) -> None:
                record.grad = grad.detach()
                if store.on_grad is not None:
                    store.on_grad(record)
                if not keep:
                    record.saved = record.grad = None

            output.register_hook(keep_grad)
            return replaced

        return hook

    @contextmanager
    def capture(self, store: CaptureStore, micro_batch: int, rows: int) -> Iterator[CaptureStore]:
        self._store, self._micro_batch, self._rows = store, micro_batch, rows
        try:
            yield store
        finally:
            self._store = None
            # A leaf's gradient hook refers back to the store: kept past the pass, the leaf (an activation of
            # rows x tokens x width), its gradient and its record would be a reference cycle, freed only by
            # Python's cyclic collector at some later time, long after their step, where they pin and
            # fragment glibc's heap (the peak grew every step). Backward and autograd.grad run inside the block.
            store.leaves.clear()
