"""Engine tests run tiny float64 models: one intra-op thread is faster (no oversubscription on a shared
2-core machine) and keeps reductions in a fixed order. The previous setting is restored afterwards."""

from __future__ import annotations

from typing import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def single_thread() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
