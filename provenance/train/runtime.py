"""Determinism switches: the same machine, thread count and kernels give bit-identical steps.

Replay and resume are proven by equality of the loss at every step, so every run executes under
``deterministic_runtime`` with the thread count recorded in the manifest (CPU reductions may group
differently with another thread count: measured on this project's 2-core machine, a 4-layer, 256-wide
GPT-2 recorded on 2 threads diverges at step 4 when replayed on 1). Segment-replay workers use it too.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def deterministic_runtime(num_threads: int | None = None) -> Iterator[int]:
    """Deterministic algorithms on, a fixed thread count; both restored on exit."""
    previous_threads = torch.get_num_threads()
    previous_det = torch.are_deterministic_algorithms_enabled()
    threads = num_threads or previous_threads
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True, warn_only=False)
    try:
        yield threads
    finally:
        torch.use_deterministic_algorithms(previous_det)
        torch.set_num_threads(previous_threads)
