"""Shared set-up for the engine tests: models, optimizers, seeded batches and the engine's batch types."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor, nn

from . import reference as ref
from .tiny_models import image_batch, lm_batch, lm_targets

OPTIMIZERS: dict[str, Callable[[Any], torch.optim.Optimizer]] = {
    "sgd_momentum": lambda p: torch.optim.SGD(p, lr=0.2, momentum=0.9, weight_decay=0.01),
    "sgd_nesterov": lambda p: torch.optim.SGD(
        p, lr=0.2, momentum=0.8, dampening=0.0, nesterov=True, weight_decay=0.02
    ),
    "sgd_plain": lambda p: torch.optim.SGD(p, lr=0.2),
    "adamw": lambda p: torch.optim.AdamW(p, lr=3e-3, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1),
    "adam_l2": lambda p: torch.optim.Adam(p, lr=3e-3, weight_decay=0.05),
}


def token_losses_for(model_name: str) -> ref.TokenLoss:
    return ref.classification_token_losses if model_name == "cnn" else ref.causal_lm_token_losses


def training_batch(model_name: str, gen: torch.Generator, micro: int = 0) -> dict[str, Tensor]:
    """A padded micro-batch (rows of different lengths) or a batch of images."""
    if model_name == "cnn":
        return image_batch(5, gen)
    lengths = [[11, 6, 9, 4], [7, 10, 5]][micro % 2]
    return lm_batch(lengths, gen)


def targets_for(model_name: str, gen: torch.Generator, k: int = 3) -> dict[str, Tensor]:
    if model_name == "cnn":
        return image_batch(k, gen)
    shapes = [(4, 6), (2, 3), (5, 8), (3, 4), (1, 5)][:k]
    return lm_targets(shapes, gen)


def to_engine(model_name: str, batch: dict[str, Tensor]) -> Any:
    """The engine's batch type for this task (LMBatch, or (inputs, labels) for the classifier)."""
    from provenance.engine import LMBatch

    if model_name == "cnn":
        return (batch["inputs"], batch["labels"])
    return LMBatch(batch["input_ids"], batch["attention_mask"], batch["labels"])


def gpt2_batch(seed: int) -> Any:
    """One GPT-2 training batch in the engine's form, from its own seed."""
    return to_engine("gpt2", training_batch("gpt2", torch.Generator().manual_seed(seed)))


def task_for(model_name: str) -> Any:
    from provenance.engine import CausalLMTask, ClassificationTask

    return ClassificationTask() if model_name == "cnn" else CausalLMTask()


def weights_of(model: nn.Module) -> dict[str, Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def max_abs_difference(a: dict[str, Tensor], b: dict[str, Tensor]) -> float:
    return max(float((a[n] - b[n]).abs().max()) for n in b)


@dataclass(frozen=True)
class MatrixError:
    """Errors of an engine matrix against the reference matrix of the same shape."""

    relative: float  # ||a - b|| / ||b||
    max_relative: float  # max |a - b| / max |b|

    @staticmethod
    def of(engine: Tensor, reference: Tensor) -> "MatrixError":
        a = engine.detach().to(torch.float64)
        b = reference.detach().to(torch.float64)
        if a.shape != b.shape:
            raise AssertionError(f"shape {tuple(a.shape)} != reference shape {tuple(b.shape)}")
        return MatrixError(
            relative=float((a - b).norm() / b.norm()),
            max_relative=float((a - b).abs().max() / b.abs().max()),
        )

    def within(self, tol: float) -> bool:
        return self.relative <= tol and self.max_relative <= tol
