"""The sketch algebra against brute force, in float64 on a tiny GPT-2 (Conv1D, tied wte/lm_head, wpe,
LayerNorm, biases).

1. Per-row sketches formed inside the engine's backward (Kronecker factors, never a per-row gradient)
   equal Q_out G_i Q_in^T of per-row gradients computed by plain autograd, one row at a time.
2. With projections kept at full size (Q = I) and one-step segments, the query's values equal the
   engine's exact first-order values under Adam's "previous" denominator: the scaling (lr, clip, bias
   correction), the preconditioner, the orientation of Conv1D and the tied weights are all right.
"""

from __future__ import annotations

import torch

from provenance.engine import AttributionEngine, CausalLMTask, EngineConfig, LMBatch
from provenance.sketch.observer import RowSketcher, adam_scales
from provenance.sketch.projection import Projections
from provenance.sketch.query import chunk_values, target_sketches
from provenance.sketch.store import SketchStore, SketchWriter
from tests.engine.tiny_models import build_gpt2, lm_batch, lm_targets


def _batch(lengths, seed):
    b = lm_batch(lengths, torch.Generator().manual_seed(seed))
    return LMBatch(b["input_ids"], b["attention_mask"], b["labels"])


def _optimizer(model):
    return torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.9, 0.95), weight_decay=0.1, foreach=False)


def _per_row_grads(model, batch: LMBatch) -> list[dict[str, torch.Tensor]]:
    """Row i's gradient of the step's token-mean loss (its token losses / all tokens of the step)."""
    task = CausalLMTask()
    sums, weights = task.loss_terms(model, batch)
    total = weights.sum()
    params = dict(model.named_parameters())
    out = []
    for i in range(sums.shape[0]):
        grads = torch.autograd.grad(sums[i] / total, list(params.values()), retain_graph=True, allow_unused=True)
        out.append({n: (torch.zeros_like(p) if g is None else g) for (n, p), g in zip(params.items(), grads)})
    return out


def test_row_sketches_equal_projected_brute_force_gradients():
    model = build_gpt2(seed=1)
    optimizer = _optimizer(model)
    projections = Projections.build(model, k_out=5, k_in=7, k_vector=6, seed=3)
    assert any(s.k_out < s.out_dim for s in projections.slots)  # Gaussian sides are exercised
    batch = _batch([20, 32, 11], seed=4)
    expected = [projections.project_full(g) for g in _per_row_grads(model, batch)]
    sketcher = RowSketcher(model, projections)
    with AttributionEngine(model, optimizer, EngineConfig(max_grad_norm=None)) as engine:
        engine.add_observer(sketcher.observe)
        engine.step([batch])
    rows = sketcher.take()
    assert rows.shape == (3, projections.dim)
    for i in range(3):
        err = (rows[i] - expected[i]).abs().max() / expected[i].abs().max()
        assert err < 1e-10, (i, float(err))
    # per parameter block too (a wrong offset could hide in the max over the whole vector)
    for slot in projections.slots:
        block = slice(slot.offset, slot.offset + slot.size)
        ref = torch.stack([e[block] for e in expected])
        assert torch.allclose(rows[:, block], ref, rtol=1e-9, atol=1e-12 * float(ref.abs().max() + 1e-30)), slot.name


def test_skipped_embeddings_are_left_out_and_the_rest_is_unchanged():
    """skip_embeddings drops wte (tied with lm_head) and wpe from the sketch; every other block still equals
    the projected brute-force gradient, and the projections of the kept parameters are the same matrices."""
    model = build_gpt2(seed=1)
    full = Projections.build(model, k_out=5, k_in=7, k_vector=6, seed=3)
    kept = Projections.build(model, k_out=5, k_in=7, k_vector=6, seed=3, skip_embeddings=True)
    assert set(kept.skipped) == {"transformer.wte.weight", "transformer.wpe.weight"}
    assert {s.name for s in kept.slots} == {s.name for s in full.slots} - set(kept.skipped)
    assert all(torch.equal(kept.matrices[k], full.matrices[k]) for k in kept.matrices if k in full.matrices)
    assert kept.fingerprint() != full.fingerprint()
    batch = _batch([20, 32, 11], seed=4)
    expected = [kept.project_full(g) for g in _per_row_grads(model, batch)]
    sketcher = RowSketcher(model, kept)
    with AttributionEngine(model, _optimizer(model), EngineConfig(max_grad_norm=None)) as engine:
        engine.add_observer(sketcher.observe)
        engine.step([batch])
    rows = sketcher.take()
    assert rows.shape == (3, kept.dim)
    assert torch.allclose(rows, torch.stack(expected), rtol=1e-9, atol=1e-12 * float(torch.stack(expected).abs().max()))


def test_two_micro_batches_fill_their_own_rows():
    model = build_gpt2(seed=2)
    projections = Projections.build(model, k_out=4, k_in=4, k_vector=4, seed=0)
    batches = [_batch([16, 9], seed=5), _batch([32], seed=6)]
    # brute force on the concatenated step: the token-mean divides by all tokens of both micro-batches
    total = sum(int(CausalLMTask().row_weights(b).sum()) for b in batches)
    expected = []
    for b in batches:
        sums, _ = CausalLMTask().loss_terms(model, b)
        for i in range(sums.shape[0]):
            grads = torch.autograd.grad(sums[i] / total, list(model.parameters()), retain_graph=True, allow_unused=True)
            named = {n: (torch.zeros_like(p) if g is None else g) for (n, p), g in zip(model.named_parameters(), grads)}
            expected.append(projections.project_full(named))
    sketcher = RowSketcher(model, projections)
    with AttributionEngine(model, _optimizer(model), EngineConfig(max_grad_norm=None)) as engine:
        engine.add_observer(sketcher.observe)
        engine.step(batches)
    rows = sketcher.take()
    assert torch.allclose(rows, torch.stack(expected), rtol=1e-9, atol=1e-14)


def test_full_size_projections_reproduce_the_engines_values(tmp_path):
    model = build_gpt2(seed=0)
    optimizer = _optimizer(model)
    big = 10_000  # >= every dimension: Q = I, so only the algebra is tested
    projections = Projections.build(model, k_out=big, k_in=big, k_vector=big, seed=0)
    assert all(s.k_out == s.out_dim for s in projections.slots)
    settings = {"seed": 0, "k_out": big, "k_in": big, "k_vector": big, "every": 1}
    steps = 3
    writer = SketchWriter(tmp_path / "sketches", model, projections, settings, every=1, last_step=steps)
    t = lm_targets([(3, 10), (0, 16)], torch.Generator().manual_seed(9))
    targets = LMBatch(t["input_ids"], t["attention_mask"], t["labels"])
    sketcher = RowSketcher(model, projections)
    exact = {}
    config = EngineConfig(max_grad_norm=0.05, adam_denominator="previous")  # clipping is active
    with AttributionEngine(model, optimizer, config) as engine:
        engine.add_observer(sketcher.observe)
        engine.set_targets(targets)
        writer.start(1, optimizer)
        for step in range(1, steps + 1):
            batch = _batch([32, 32, 32], seed=100 + step)  # full rows: every position is trained
            result = engine.step([batch])
            assert result.clip_factor < 1.0
            chunk_ids = [10 * step + r for r in range(3)]
            scaled = sketcher.take() * adam_scales(optimizer, model, projections, result.clip_factor)
            writer.add(step, chunk_ids, scaled, optimizer)
            exact.update({c: result.values_first[r] for r, c in enumerate(chunk_ids)})
        writer.finish()
    store = SketchStore.open(tmp_path / "sketches", build_gpt2(seed=0), settings)
    sketches = target_sketches(store, build_gpt2(seed=0), targets)
    chunk_ids, values = chunk_values(store, sketches)
    approx = {int(c): torch.as_tensor(values[i], dtype=torch.float64) for i, c in enumerate(chunk_ids)}
    # step 1 has no Adam state at its anchor (the state before step 1): no value, by design
    for c in (10, 11, 12):
        assert torch.all(approx[c] == 0)
    for c in (20, 21, 22, 30, 31, 32):
        scale = exact[c].abs().max()
        assert scale > 0
        # float32 storage of sketches and target sketches limits the match to ~1e-6 relative
        assert torch.allclose(approx[c], exact[c], rtol=1e-4, atol=1e-5 * float(scale)), (c, approx[c], exact[c])
