"""EngineConfig(release_memory=True) returns freed heap memory to the OS before each step's forward pass
(provenance/engine/heap.py); off by default (it costs time), and numbers never depend on it."""

from __future__ import annotations

import platform

import pytest
import torch

import provenance.engine.engine as engine_module
from provenance.engine import AttributionEngine, EngineConfig
from provenance.engine.heap import release_free_heap

from .scenarios import gpt2_batch, targets_for, to_engine
from .tiny_models import build_gpt2


def _run(monkeypatch, release, enabled: bool, steps: int = 3):
    calls: list[int] = []

    def spy() -> bool:
        calls.append(1)
        return release()

    monkeypatch.setattr(engine_module, "release_free_heap", spy)
    model = build_gpt2(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    engine = AttributionEngine(model, optimizer, EngineConfig(order=2, release_memory=enabled))
    engine.set_targets(to_engine("gpt2", targets_for("gpt2", torch.Generator().manual_seed(99), k=2)))
    with engine:
        values = [engine.step([gpt2_batch(s)]).values for s in range(steps)]
    return calls, values, [p.detach().clone() for p in model.parameters()]


def test_released_before_every_step_when_asked(monkeypatch):
    calls, _, _ = _run(monkeypatch, release_free_heap, enabled=True)
    assert len(calls) == 3


def test_not_released_by_default(monkeypatch):
    calls, _, _ = _run(monkeypatch, release_free_heap, enabled=False)
    assert calls == []
    assert EngineConfig().release_memory is False


def test_values_and_weights_do_not_depend_on_the_release(monkeypatch):
    _, values, params = _run(monkeypatch, release_free_heap, enabled=True)
    _, values_kept, params_kept = _run(monkeypatch, release_free_heap, enabled=False)
    for got, ref in zip(values + params, values_kept + params_kept):
        assert torch.equal(got, ref)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_release_works_on_glibc():
    assert release_free_heap() is True
