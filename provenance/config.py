"""Settings of a training run with attribution: frozen dataclasses, written whole into the manifest.

Defaults mirror the GPT-2/GPT-3 pretraining recipe the In-Run Data Shapley paper uses (AdamW,
lr 6e-4 decaying to 6e-5 with warmup + cosine, weight decay 0.1, betas 0.9/0.95, clipping at 1.0),
scaled down to a model that trains on a CPU in minutes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from provenance.errors import ProvenanceError


class ConfigError(ProvenanceError, ValueError):
    """A setting is out of range; the message names it and the allowed values."""


@dataclass(frozen=True)
class ModelConfig:
    """GPT-2 architecture, built from scratch (no download)."""

    n_layer: int = 4  # transformer blocks
    n_head: int = 4  # attention heads (n_embd must be divisible by it)
    n_embd: int = 128  # width of the residual stream
    context_length: int = 128  # tokens per training sequence (= chunk length)
    attn_implementation: str = "eager"  # eager attention: deterministic on CPU and double-backward safe

    def check(self) -> None:
        for name in ("n_layer", "n_head", "n_embd", "context_length"):
            if getattr(self, name) < 1:
                raise ConfigError(f"model.{name} must be >= 1 (got {getattr(self, name)})")
        if self.n_embd % self.n_head:
            raise ConfigError(
                f"model.n_embd ({self.n_embd}) must be divisible by model.n_head ({self.n_head})"
            )


@dataclass(frozen=True)
class TrainConfig:
    """Optimizer, schedule, batch and checkpointing. One step = one AdamW update."""

    steps: int = 300  # optimizer steps
    batch_size: int = 16  # players (chunks) per optimizer step
    micro_batch_size: int = 16  # rows per forward pass; batch_size must be a multiple of it
    lr: float = 6e-4  # peak learning rate
    min_lr: float = 6e-5  # learning rate at the end of the cosine decay
    warmup_steps: int = 20  # linear warmup from lr/warmup_steps to lr
    weight_decay: float = 0.1  # decoupled (AdamW) decay, on matrices only (not biases/LayerNorm)
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    max_grad_norm: float = 1.0  # global gradient-norm clipping (0 = off)
    seed: int = 0  # seeds the weights' init and the data order
    checkpoint_every: int = 100  # save model + optimizer + RNG + data cursor every N steps
    tokenizer_vocab_size: int = 4096  # when a BPE tokenizer is trained on the corpus

    def check(self) -> None:
        if self.steps < 1:
            raise ConfigError(f"train.steps must be >= 1 (got {self.steps})")
        if self.batch_size < 1 or self.micro_batch_size < 1:
            raise ConfigError("train.batch_size and train.micro_batch_size must be >= 1")
        if self.batch_size % self.micro_batch_size:
            raise ConfigError(
                f"train.batch_size ({self.batch_size}) must be a multiple of "
                f"train.micro_batch_size ({self.micro_batch_size})"
            )
        if not (0 < self.min_lr <= self.lr):
            raise ConfigError(f"need 0 < min_lr <= lr (got min_lr={self.min_lr}, lr={self.lr})")
        if self.warmup_steps < 0 or self.checkpoint_every < 1:
            raise ConfigError("train.warmup_steps must be >= 0 and train.checkpoint_every >= 1")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise ConfigError("train.beta1 and train.beta2 must lie in [0, 1)")
        if self.max_grad_norm < 0 or self.weight_decay < 0:
            raise ConfigError("train.max_grad_norm and train.weight_decay must be >= 0")


@dataclass(frozen=True)
class AttributionConfig:
    """What the engine computes at each step."""

    order: int = 1  # 1 = first-order In-Run Data Shapley, 2 = with the Hessian term
    loss_reduction: str = "token_mean"  # the training loss is the mean over all tokens of the step
    # MB of per-row gradients kept from backward until a step's direction is known (EngineConfig.keep_rows_mb).
    # Lower = less memory, slower steps (docs/engine.md). It decides how some gradients are summed, so a run
    # keeps its value: resume and replay use the recorded one.
    keep_rows_mb: float = 4096.0

    def check(self) -> None:
        if self.order not in (1, 2):
            raise ConfigError(f"attribution.order must be 1 or 2 (got {self.order})")
        if not self.keep_rows_mb >= 0:
            raise ConfigError(f"attribution.keep_rows_mb must be >= 0 (got {self.keep_rows_mb}); 0 keeps none")
        if self.loss_reduction != "token_mean":
            raise ConfigError(
                f"attribution.loss_reduction {self.loss_reduction!r} is not supported; use 'token_mean'"
            )


@dataclass(frozen=True)
class SketchConfig:
    """Projected-gradient sketches stored during training for fast approximate queries (docs/posthoc.md).

    Off by default. Each matrix's per-chunk gradient is sketched as Q_out G Q_in^T (k_out x k_in, a
    Kronecker-factored Gaussian projection; identity on a side whose size is <= k), vectors (biases,
    LayerNorm) with k_vector. Storage per stored (segment, chunk) row: ~ (n_matrices * k_out * k_in +
    n_vectors * k_vector) * 4 bytes. A query costs one target gradient per segment (every `every` steps).
    The values are approximate (docs/posthoc.md, demo-sized run, median Spearman against exact values):
    Gaussian projections rank documents far from exactly (0.37 at these defaults, 0.52 at k 64 / every 5);
    projection "pca" (each layer's top gradient-covariance eigenvectors, estimated on the first
    `calibration_steps` steps) reaches 0.92 at k 64 / every 5, and the same at k 48 / every 5 with
    `skip_embeddings` (embedding tables and a head tied to them left out: half the row size, a query in
    1.5 s over 100k stored rows). `every` sets how many anchors (2 x model size each) are stored and how
    many target gradients a query takes. Replay stays the answer.
    """

    enabled: bool = False
    every: int = 50  # steps per segment; one anchor (weights + Adam second moment) per segment
    k_out: int = 32  # projection size on a matrix's output side
    k_in: int = 32  # projection size on a matrix's input side
    k_vector: int = 64  # projection size of biases and LayerNorm parameters
    seed: int = 0  # seeds the fixed random projections
    projection: str = "gaussian"  # or "pca": data-dependent, calibrated on the first calibration_steps
    calibration_steps: int = 0  # "pca" only: a multiple of `every` (0 = one segment)
    skip_embeddings: bool = False  # leave embedding tables (and a head tied to them) out of the sketches

    def check(self, train: TrainConfig) -> None:
        for name in ("every", "k_out", "k_in", "k_vector"):
            if getattr(self, name) < 1:
                raise ConfigError(f"sketch.{name} must be >= 1 (got {getattr(self, name)})")
        if self.projection not in ("gaussian", "pca"):
            raise ConfigError(f"sketch.projection must be 'gaussian' or 'pca' (got {self.projection!r})")
        if self.calibration_steps < 0 or self.calibration_steps % self.every:
            raise ConfigError(
                f"sketch.calibration_steps ({self.calibration_steps}) must be a multiple of sketch.every "
                f"({self.every}); 0 means one segment"
            )
        if self.enabled and self.projection == "pca" and self.calibration_steps > train.checkpoint_every:
            raise ConfigError(
                f"sketch.calibration_steps ({self.calibration_steps}) must be <= train.checkpoint_every "
                f"({train.checkpoint_every}): a resume may not start inside the calibration window"
            )
        if self.enabled and train.checkpoint_every % self.every:
            raise ConfigError(
                f"sketch.every ({self.every}) must divide train.checkpoint_every ({train.checkpoint_every}) "
                "so a resumed run restarts on a segment boundary"
            )


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines a run; replay and resume refuse a run whose RunConfig differs."""

    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    attribution: AttributionConfig = field(default_factory=AttributionConfig)
    sketch: SketchConfig = field(default_factory=SketchConfig)

    def check(self) -> RunConfig:
        self.model.check()
        self.train.check()
        self.attribution.check()
        self.sketch.check(self.train)
        return self

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunConfig:
        """Inverse of to_json; unknown keys are refused (they come from another version)."""
        parts = {}
        for f, kind in (("model", ModelConfig), ("train", TrainConfig), ("attribution", AttributionConfig),
                        ("sketch", SketchConfig)):
            section = dict(data.get(f, {}))
            known = {x.name for x in fields(kind)}
            unknown = sorted(set(section) - known)
            if unknown:
                raise ConfigError(
                    f"config.{f} has settings this version does not know: {unknown}; upgrade provenance"
                )
            parts[f] = kind(**section)
        return cls(**parts)

