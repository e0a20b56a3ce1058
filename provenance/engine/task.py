"""What the engine needs to know about a model's losses: the per-row training loss and the targets' losses.

A *row* of a training batch is a player (a chunk of one document). Rows must not interact in the forward
pass (no batch norm), so each row's loss depends only on that row: this is what makes per-row gradients
well defined.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from ..errors import BatchError, TargetError

IGNORE_INDEX = -100


@dataclass
class LMBatch:
    """Rows of token ids. labels = -100 where no loss is taken (padding, prompt)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self) -> None:
        if self.input_ids.dim() != 2:
            raise BatchError(f"LMBatch.input_ids must be (rows, tokens), got shape {tuple(self.input_ids.shape)}")
        if self.attention_mask.shape != self.input_ids.shape or self.labels.shape != self.input_ids.shape:
            raise BatchError(
                "LMBatch.input_ids, attention_mask and labels must have the same shape, got "
                f"{tuple(self.input_ids.shape)}, {tuple(self.attention_mask.shape)}, {tuple(self.labels.shape)}"
            )

    def rows(self, index: slice | list[int]) -> "LMBatch":
        return LMBatch(self.input_ids[index], self.attention_mask[index], self.labels[index])


class Task(Protocol):
    """The model-specific part the user describes once (in the spirit of Kronfluence's Task)."""

    def batch_size(self, batch: Any) -> int:
        """Number of rows (players) in a batch."""

    def loss_terms(self, model: torch.nn.Module, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-row summed loss (rows,) and per-row weight (rows,), e.g. the number of loss tokens."""

    def row_weights(self, batch: Any) -> torch.Tensor:
        """The same per-row weights, without a forward pass (to normalize over micro-batches)."""

    def target_losses(self, model: torch.nn.Module, targets: Any) -> torch.Tensor:
        """Each target's loss, shape (targets,): the quantity whose decrease is attributed."""

    def num_targets(self, targets: Any) -> int: ...

    def select_targets(self, targets: Any, index: list[int]) -> Any: ...

    def check_targets(self, model: torch.nn.Module, targets: Any) -> None:
        """Raise TargetError for targets the model cannot score."""


def _context_length(model: torch.nn.Module) -> int | None:
    config = getattr(model, "config", None)
    for name in ("n_positions", "max_position_embeddings"):
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    return None


class CausalLMTask:
    """Next-token loss of a (HF-style) causal LM: logits[:, t] predicts labels[:, t + 1].

    Explicit per-row position ids are passed so that position embeddings get one gradient per row.
    """

    def batch_size(self, batch: LMBatch) -> int:
        return int(batch.input_ids.shape[0])

    def row_weights(self, batch: LMBatch) -> torch.Tensor:
        return (batch.labels[:, 1:] != IGNORE_INDEX).sum(dim=1)

    def _token_losses(self, model: torch.nn.Module, batch: LMBatch) -> torch.Tensor:
        rows, length = batch.input_ids.shape
        positions = torch.arange(length, device=batch.input_ids.device).unsqueeze(0).expand(rows, length)
        logits = model(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=positions
        ).logits
        # Position t predicts label t + 1: the labels are shifted (the last position gets none) rather than
        # the logits sliced, which would copy the whole logits tensor (rows x length x vocab) in forward and
        # scatter its gradient into a zeroed one in backward. The same numbers, bit for bit (tested).
        targets = F.pad(batch.labels[:, 1:], (0, 1), value=IGNORE_INDEX)
        losses = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE_INDEX, reduction="none"
        )
        return losses.view(rows, length)[:, :-1]

    def loss_terms(self, model: torch.nn.Module, batch: LMBatch) -> tuple[torch.Tensor, torch.Tensor]:
        return self._token_losses(model, batch).sum(dim=1), self.row_weights(batch)

    def target_losses(self, model: torch.nn.Module, targets: LMBatch) -> torch.Tensor:
        sums, counts = self.loss_terms(model, targets)
        return sums / counts.to(sums.dtype)

    def num_targets(self, targets: LMBatch) -> int:
        return int(targets.input_ids.shape[0])

    def select_targets(self, targets: LMBatch, index: list[int]) -> LMBatch:
        picked = targets.rows(index)
        # Trim trailing all-padding columns: the loss is unchanged and the HVP pass is cheaper.
        used = int(picked.attention_mask.sum(dim=0).nonzero().max().item()) + 1 if picked.attention_mask.any() else 1
        return LMBatch(picked.input_ids[:, :used], picked.attention_mask[:, :used], picked.labels[:, :used])

    def check_targets(self, model: torch.nn.Module, targets: LMBatch) -> None:
        context = _context_length(model)
        length = int(targets.input_ids.shape[1])
        if context is not None and length > context:
            raise TargetError(
                f"targets are {length} tokens long (prompt + output) but the model's context is {context} tokens; "
                "shorten the prompt or the output, or train with a longer context"
            )
        counts = self.row_weights(targets)
        empty = [i for i, n in enumerate(counts.tolist()) if n == 0]
        if empty:
            raise TargetError(
                f"target rows {empty} have no output tokens carrying loss (labels all -100 after the prompt); "
                "give each target a non-empty output text"
            )


class ClassificationTask:
    """Cross-entropy of a classifier: batch = (inputs, labels); one row = one example."""

    def batch_size(self, batch: tuple[torch.Tensor, torch.Tensor]) -> int:
        return int(batch[0].shape[0])

    def row_weights(self, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return torch.ones(batch[0].shape[0], dtype=torch.long)

    def loss_terms(self, model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]):
        inputs, labels = batch
        return F.cross_entropy(model(inputs), labels, reduction="none"), self.row_weights(batch)

    def target_losses(self, model: torch.nn.Module, targets: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return self.loss_terms(model, targets)[0]

    def num_targets(self, targets: tuple[torch.Tensor, torch.Tensor]) -> int:
        return int(targets[0].shape[0])

    def select_targets(self, targets, index: list[int]):
        return targets[0][index], targets[1][index]

    def check_targets(self, model: torch.nn.Module, targets) -> None:
        if targets[0].shape[0] != targets[1].shape[0]:
            raise TargetError("classification targets: inputs and labels have different numbers of rows")
