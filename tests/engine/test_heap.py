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


@pytest.mark.parametrize(
    "optimizer, config, k, micro_batches",
    [
        ("sgd", dict(order=1), 2, 1),
        ("adamw", dict(order=2), 2, 1),
        ("adamw", dict(order=1, per_token=True), 1, 2),
        ("adamw", dict(order=1), 0, 1),
    ],
    ids=["sgd-first", "adamw-second", "adamw-per-token-2-micro", "no-targets"],
)
def test_a_step_leaves_no_reference_cycles(optimizer, config, k, micro_batches):
    """Tensors a step leaves in reference cycles are freed only when Python's cyclic collector next runs,
    at some later step, where they pin and fragment glibc's heap (the peak memory grew step after step):
    a step must leave none. The cyclic garbage is collected with gc.DEBUG_SAVEALL, which keeps it to inspect."""
    import gc

    model = build_gpt2(0)
    opt = (torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9) if optimizer == "sgd"
           else torch.optim.AdamW(model.parameters(), lr=1e-3))
    engine = AttributionEngine(model, opt, EngineConfig(**config))
    if k:
        engine.set_targets(to_engine("gpt2", targets_for("gpt2", torch.Generator().manual_seed(99), k=k)))
    with engine:
        engine.step([gpt2_batch(0)] * micro_batches)
        gc.collect()
        was_enabled = gc.isenabled()
        gc.disable()
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            for seed in (1, 2):
                engine.step([gpt2_batch(seed + 10 * m) for m in range(micro_batches)])
            gc.collect()
            left = [type(o).__name__ for o in gc.garbage if isinstance(o, torch.Tensor) or type(o).__name__ == "Record"]
        finally:
            gc.garbage.clear()
            gc.set_debug(0)
            if was_enabled:
                gc.enable()
    assert left == [], f"a step left {len(left)} objects in reference cycles: {sorted(set(left))}"


def test_direction_pool_keeps_only_what_the_step_took():
    """Buffers for target directions stay across steps (page faults) only if the step used them: one step's
    large directions must not sit under every later step's forward pass."""
    pool = engine_module._BufferPool()
    small, large = pool.take(10, torch.float32), pool.take(20 * 2**20, torch.float32)  # one step takes both
    pool.give(small)
    pool.give(large)
    pool.trim(2**40)
    assert {b.data_ptr() for b in pool._free} == {small.data_ptr(), large.data_ptr()}
    again = pool.take(10, torch.float32)  # a later step needs only a small one: the smallest that fits
    assert again.data_ptr() == small.data_ptr()
    pool.give(again)
    pool.trim(2**40)
    assert [b.data_ptr() for b in pool._free] == [small.data_ptr()]
    pool.trim(2**40)  # a step that took nothing keeps nothing
    assert pool._free == []
    big = pool.take(20 * 2**20, torch.float32)
    pool.give(big)
    pool.trim(big.numel() * big.element_size() - 1)  # over the cap: freed even though it was used
    assert pool._free == []


def test_buffers_taken_after_backward_are_not_kept_for_the_next_step():
    """Second order values every parameter after backward: its direction buffers (80 MB at the benchmark
    size) kept across steps would sit under the next step's forward and backward, the memory peak."""
    pool = engine_module._BufferPool()
    during = pool.take(10, torch.float32)
    after = pool.take(10, torch.float32, keep=False)
    pool.give(during)
    pool.give(after)
    pool.trim(2**40)
    assert [b.data_ptr() for b in pool._free] == [during.data_ptr()]

    model = build_gpt2(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    engine = AttributionEngine(model, optimizer, EngineConfig(order=2))
    engine.set_targets(to_engine("gpt2", targets_for("gpt2", torch.Generator().manual_seed(99), k=1)))
    with engine:
        for seed in range(2):
            engine.step([gpt2_batch(seed)])
            assert engine._pool._free == []


def test_heap_returned_once_per_step_late_in_backward_when_blocks_are_kept(monkeypatch):
    """Steps that keep per-row blocks past backward (here second order) return the heap's free memory once,
    when three quarters of them are kept (the benchmark-size threshold is lowered so the tiny model takes it);
    the numbers are those of steps that do not."""
    monkeypatch.setattr(engine_module, "_TRIM_MIN_BYTES", 0)
    calls, values, params = _run(monkeypatch, release_free_heap, enabled=False)
    assert len(calls) == 3
    monkeypatch.setattr(engine_module, "_TRIM_MIN_BYTES", 2**62)
    calls_none, values_none, params_none = _run(monkeypatch, release_free_heap, enabled=False)
    assert calls_none == []
    for got, ref in zip(values + params, values_none + params_none):
        assert torch.equal(got, ref)
