"""Data order: which chunks form each step's batch, from a seeded torch.Generator.

Each epoch is a fresh permutation of the chunks drawn from the generator; batches are consecutive
slices of it and the last incomplete slice is dropped (so a chunk never appears twice in a batch).
The state (epoch, position, generator state at the start of the epoch) fits in JSON, so a checkpoint
restores the exact same order.
"""

from __future__ import annotations

from typing import Any

import torch

from provenance.config import ConfigError
from provenance.store.checkpoint import rng_state_from_list, rng_state_to_list


class DataOrder:
    def __init__(self, n_chunks: int, batch_size: int, seed: int) -> None:
        if n_chunks < batch_size:
            raise ConfigError(
                f"the corpus gives {n_chunks} training chunks but a step takes {batch_size}; "
                "lower --batch-size or add documents"
            )
        self.n_chunks = n_chunks
        self.batch_size = batch_size
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)
        self.epoch = -1
        self._start_new_epoch()

    def _start_new_epoch(self) -> None:
        self.epoch += 1
        self.position = 0
        self.epoch_start_state = self.generator.get_state()
        self.permutation = torch.randperm(self.n_chunks, generator=self.generator).tolist()

    def next_batch(self) -> list[int]:
        if self.position + self.batch_size > self.n_chunks:
            self._start_new_epoch()
        batch = self.permutation[self.position : self.position + self.batch_size]
        self.position += self.batch_size
        return batch

    def state_dict(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "n_chunks": self.n_chunks,
            "batch_size": self.batch_size,
            "epoch": self.epoch,
            "position": self.position,
            "epoch_start_generator_state": rng_state_to_list(self.epoch_start_state),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if (state["n_chunks"], state["batch_size"], state["seed"]) != (self.n_chunks, self.batch_size, self.seed):
            raise ConfigError("data-order state belongs to another corpus or batch size")
        self.generator.set_state(rng_state_from_list(state["epoch_start_generator_state"]))
        self.epoch = state["epoch"] - 1
        self._start_new_epoch()
        self.position = state["position"]
