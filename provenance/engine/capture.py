"""Forward/backward hooks that keep each tracked module's input-side factor and output gradient.

Hooks are attached inside a context manager that always detaches them, and they do nothing unless a
capture is switched on, so the model trains normally between steps (Opacus issue #176: leaking hooks).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
from torch import nn

from ..errors import UnsupportedLayerError
from .registry import LayerRule


@dataclass
class Record:
    """One call of one module in one pass: what its rule saved, and dL/d(output) once backward ran."""

    module_name: str
    micro_batch: int
    saved: Any
    grad: torch.Tensor | None = None


@dataclass
class CaptureStore:
    records: list[Record] = field(default_factory=list)

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
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            store = self._store
            if store is None or not torch.is_grad_enabled():
                return
            if not isinstance(output, torch.Tensor) or not output.requires_grad:
                return
            saved = rule.capture(module, args, output)
            if rule.rows(saved) != self._rows or output.shape[0] != self._rows:
                raise UnsupportedLayerError(
                    f"module '{name}' ({type(module).__name__}) was called on {output.shape[0]} rows while the "
                    f"batch has {self._rows}: its output is shared across rows (e.g. position embeddings "
                    "broadcast over the batch), so per-row gradients cannot be separated. Pass per-row inputs "
                    "(e.g. explicit position_ids of shape (rows, tokens))."
                )
            record = Record(name, self._micro_batch, saved)
            store.records.append(record)

            def keep_grad(grad: torch.Tensor) -> None:
                record.grad = grad.detach() if record.grad is None else record.grad + grad.detach()

            output.register_hook(keep_grad)

        return hook

    @contextmanager
    def capture(self, store: CaptureStore, micro_batch: int, rows: int) -> Iterator[CaptureStore]:
        self._store, self._micro_batch, self._rows = store, micro_batch, rows
        try:
            yield store
        finally:
            self._store = None
