"""Learning-rate schedule: linear warmup, then cosine decay from lr to min_lr (nanoGPT/GPT-3 recipe).

A pure function of the step, so resume and replay need no scheduler object: the lr of step t is
recomputed, never restored.
"""

from __future__ import annotations

import math

from provenance.config import TrainConfig


def learning_rate(step: int, cfg: TrainConfig) -> float:
    """lr used by optimizer step ``step`` (1-based)."""
    if cfg.warmup_steps and step <= cfg.warmup_steps:
        return cfg.lr * step / cfg.warmup_steps
    decay_steps = max(cfg.steps - cfg.warmup_steps, 1)
    progress = min(max((step - cfg.warmup_steps) / decay_steps, 0.0), 1.0)
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.lr - cfg.min_lr)
