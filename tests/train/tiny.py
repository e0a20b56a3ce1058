"""Tiny corpora and runs for the pipeline tests (seconds each on a CPU)."""

from __future__ import annotations

import random
from pathlib import Path

from provenance.config import ModelConfig, RunConfig, TrainConfig
from provenance.train.targets import TargetSpec

WORDS = (
    "river stone tree light dark king queen ship sea wind fire water earth sky moon sun bread salt "
    "road hill song bird field gold iron door"
).split()


def tiny_config(**train_overrides) -> RunConfig:
    base = dict(steps=6, batch_size=4, micro_batch_size=2, warmup_steps=2, checkpoint_every=2,
                tokenizer_vocab_size=300)
    base.update(train_overrides)
    return RunConfig(
        model=ModelConfig(n_layer=2, n_head=2, n_embd=32, context_length=32),
        train=TrainConfig(**base),
    ).check()


def write_corpus(folder: Path, n_docs: int = 16, seed: int = 0) -> Path:
    """A folder of .txt documents of random words (different lengths, so some span two chunks)."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n_docs):
        n = rng.randint(15, 60)
        (folder / f"doc{i:02d}.txt").write_text(" ".join(rng.choice(WORDS) for _ in range(n)) + ".\n")
    return folder


TARGETS = [
    TargetSpec("t-river", "the king", " river stone tree light"),
    TargetSpec("t-sea", "", "ship sea wind fire"),
]
