"""Data-dependent ("pca") projections: the eigen-solver, the covariance observer against brute force
(forward/backward hooks on the same step), and sketch stores written by replay (same bytes as training
for the Gaussian settings; a calibrated store with its checks)."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import pytest
import torch

from provenance.config import ConfigError, SketchConfig
from provenance.engine import AttributionEngine, CausalLMTask, EngineConfig, LMBatch
from provenance.errors import SketchMismatchError
from provenance.sketch.observer import CovarianceSketch
from provenance.sketch.projection import Projections, top_eigenvectors
from provenance.sketch.query import ApproximateQuery, sketch_settings
from provenance.sketch.training import sketch_by_replay
from provenance.store.tables import read_table
from provenance.train import train
from tests.engine.tiny_models import build_gpt2, lm_batch
from tests.train.tiny import TARGETS, tiny_config, write_corpus

SKETCH = SketchConfig(enabled=True, every=2, k_out=6, k_in=5, k_vector=4, seed=7)
PCA = {**sketch_settings(SKETCH), "projection": "pca", "calibration_steps": 2}
NOEMB = {**PCA, "skip_embeddings": True}


def _projector(rows: torch.Tensor) -> torch.Tensor:
    return rows.T @ rows


def test_nystrom_top_eigenvectors_match_eigh_for_a_low_rank_matrix():
    g = torch.Generator().manual_seed(0)
    basis, _ = torch.linalg.qr(torch.randn(300, 12, generator=g, dtype=torch.float64))
    spectrum = torch.tensor([2.0**-i for i in range(12)], dtype=torch.float64) * 100
    c = basis @ torch.diag(spectrum) @ basis.T  # rank 12, distinct eigenvalues
    omega = torch.randn(300, 24, generator=g, dtype=torch.float64)
    q = top_eigenvectors(c @ omega, omega, 5)
    assert q.shape == (5, 300)
    assert torch.allclose(q @ q.T, torch.eye(5, dtype=torch.float64), atol=1e-10)
    expected = basis[:, :5].T  # eigenvalues sorted descending
    assert torch.allclose(_projector(q), _projector(expected), atol=1e-8)
    dense = top_eigenvectors(c, None, 5)
    assert torch.allclose(_projector(dense), _projector(expected), atol=1e-8)
    with pytest.raises(ValueError, match="zero"):
        top_eigenvectors(torch.zeros(300, 24, dtype=torch.float64), omega, 5)


def test_covariance_sketch_equals_brute_force_from_hooks():
    """C_in = sum_t |b_t|^2 a_t a_t^T and C_out = sum_t |a_t|^2 b_t b_t^T of one Conv1D, from hooks on a
    plain backward of the step's token-mean loss; the embedding's one-hot side from its ids."""
    model = build_gpt2(seed=3).double()
    projections = Projections.build(model, k_out=3, k_in=3, k_vector=4, seed=0)
    sketch = CovarianceSketch(model, projections, oversample=1000, max_tokens=10**6)  # Omega None: C kept
    b = lm_batch([20, 32, 11], torch.Generator().manual_seed(4))
    batch = LMBatch(b["input_ids"], b["attention_mask"], b["labels"])

    module = model.transformer.h[0].mlp.c_fc
    seen: dict[str, torch.Tensor] = {}
    handles = [module.register_forward_hook(lambda m, args, out: seen.__setitem__("a", args[0].detach())),
               module.register_full_backward_hook(lambda m, gin, gout: seen.__setitem__("b", gout[0].detach()))]
    task = CausalLMTask()
    sums, weights = task.loss_terms(model, batch)
    (sums.sum() / weights.sum()).backward()
    for h in handles:
        h.remove()
    model.zero_grad()
    a = seen["a"].reshape(-1, seen["a"].shape[-1])
    g = seen["b"].reshape(-1, seen["b"].shape[-1])
    c_in = a.T @ (a * (g * g).sum(1, keepdim=True))
    c_out = g.T @ (g * (a * a).sum(1, keepdim=True))

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    with AttributionEngine(model, optimizer, EngineConfig(max_grad_norm=None)) as engine:
        engine.add_observer(sketch.observe)
        engine.step([batch])
    name = "transformer.h.0.mlp.c_fc.weight"
    assert torch.allclose(sketch.y[f"{name}.in"], c_in, rtol=1e-9, atol=1e-14 * float(c_in.abs().max()))
    assert torch.allclose(sketch.y[f"{name}.out"], c_out, rtol=1e-9, atol=1e-14 * float(c_out.abs().max()))
    # the tied wte/lm_head out side (vocabulary) has the embedding's one-hot part on its diagonal and the
    # lm_head's dense part: both present, symmetric
    y = sketch.y["transformer.wte.weight.out"]
    assert torch.allclose(y, y.T, atol=1e-12 * float(y.abs().max()))
    pca = sketch.projections_pca()
    for key in sketch.y:
        q = pca.matrices[key]
        assert torch.allclose(q @ q.T, torch.eye(q.shape[0], dtype=torch.float64), atol=1e-10), key
    assert pca.dim == projections.dim and pca.fingerprint() != projections.fingerprint()


@pytest.fixture(scope="module")
def run_and_stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("pca")
    config = replace(tiny_config(steps=5), sketch=SKETCH).check()
    train(write_corpus(root / "docs"), root / "run", config, targets=TARGETS, threads=1, progress=False)
    sketch_by_replay(root / "run", {root / "gaussian": SKETCH, root / "pca": PCA, root / "noemb": NOEMB},
                     progress=False)
    return root


def test_replayed_gaussian_store_is_the_trained_one(run_and_stores):
    from safetensors.torch import load_file

    ours, theirs = run_and_stores / "gaussian", run_and_stores / "run" / "sketches"
    names = sorted(p.relative_to(theirs).as_posix() for p in theirs.rglob("*.safetensors"))
    assert names and names == sorted(p.relative_to(ours).as_posix() for p in ours.rglob("*.safetensors"))
    for name in names:
        a, b = load_file(str(ours / name)), load_file(str(theirs / name))
        assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a), name


def test_calibrated_store_marks_segments_and_answers(run_and_stores):
    folder = run_and_stores / "pca"
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["status"] == "complete" and meta["settings"]["projection"] == "pca" and "pca_sha256" in meta
    query = ApproximateQuery(run_and_stores / "run", sketches=folder)
    assert [s.projection for s in query.store.segments] == ["gaussian", "pca", "pca"]
    # segment 0 is identical to the Gaussian store's (sketched before calibration), later ones differ
    from safetensors.torch import load_file

    g0 = load_file(str(run_and_stores / "gaussian" / "segments" / "segment_00000.safetensors"))["sketch"]
    p0 = load_file(str(folder / "segments" / "segment_00000.safetensors"))["sketch"]
    g1 = load_file(str(run_and_stores / "gaussian" / "segments" / "segment_00001.safetensors"))["sketch"]
    p1 = load_file(str(folder / "segments" / "segment_00001.safetensors"))["sketch"]
    assert g0.equal(p0) and not g1.equal(p1)
    frame = query.values(list(TARGETS))
    corpus = read_table(run_and_stores / "run" / "corpus.parquet", "corpus")
    assert len(frame) == len(corpus) * len(TARGETS) and frame["approximate"].all()
    assert frame["value"].abs().sum() > 0


def test_modified_or_missing_calibrated_projections_are_refused(run_and_stores, tmp_path):
    from safetensors.torch import load_file, save_file

    copy = tmp_path / "pca"
    shutil.copytree(run_and_stores / "pca", copy)
    path = copy / "projections_pca.safetensors"
    tensors = load_file(str(path))
    key = sorted(tensors)[0]
    tensors[key] = tensors[key] * 1.0001
    save_file(tensors, str(path))
    with pytest.raises(SketchMismatchError, match="differs from the calibrated"):
        ApproximateQuery(run_and_stores / "run", sketches=copy)
    path.unlink()
    with pytest.raises(SketchMismatchError, match="missing"):
        ApproximateQuery(run_and_stores / "run", sketches=copy)


def test_bad_calibration_settings_are_refused(run_and_stores, tmp_path):
    with pytest.raises(ConfigError, match="multiple of every"):
        sketch_settings({**PCA, "calibration_steps": 3})
    with pytest.raises(ConfigError, match="not one of"):
        sketch_settings({**PCA, "projection": "sparse"})
    with pytest.raises(SketchMismatchError, match="exists"):
        sketch_by_replay(run_and_stores / "run", {run_and_stores / "pca": PCA}, progress=False)
    with pytest.raises(ConfigError, match="below the run"):
        sketch_by_replay(run_and_stores / "run", {tmp_path / "late": {**PCA, "calibration_steps": 6}},
                         progress=False)


def test_resume_inside_the_calibration_window_is_refused(tmp_path):
    from provenance.sketch.training import SketchSession

    model = build_gpt2(seed=0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    with AttributionEngine(model, optimizer, EngineConfig()) as engine:
        session = SketchSession(tmp_path / "s", model, optimizer, engine, {**PCA, "calibration_steps": 4}, 10)
        session.start(1)
        session.close()
        again = SketchSession(tmp_path / "s", model, optimizer, engine, {**PCA, "calibration_steps": 4}, 10)
        with pytest.raises(SketchMismatchError, match="calibration window"):
            again.start(3)
        again.close()


def test_batched_target_gradients_equal_one_pass_per_anchor(run_and_stores):
    from provenance.sketch.query import target_sketches

    query = ApproximateQuery(run_and_stores / "run", sketches=run_and_stores / "pca")
    batch = query.encode(list(TARGETS))
    looped = target_sketches(query.store, query.model, batch, anchors=query.anchors, batched=False)
    batched = target_sketches(query.store, query.model, batch, anchors=query.anchors, anchors_per_pass=2)
    assert looped.abs().max() > 0
    assert torch.allclose(batched, looped, rtol=1e-4, atol=1e-6 * float(looped.abs().max()))


def test_training_with_pca_config_writes_the_replayed_store(run_and_stores, tmp_path):
    """`provenance train` with SketchConfig(projection="pca") stores, bit for bit, what the replay built."""
    from safetensors.torch import load_file

    pca_config = replace(SKETCH, projection="pca", calibration_steps=2)
    assert sketch_settings(pca_config) == PCA
    config = replace(tiny_config(steps=5), sketch=pca_config).check()
    train(write_corpus(tmp_path / "docs"), tmp_path / "run", config, targets=TARGETS, threads=1, progress=False)
    ours, theirs = tmp_path / "run" / "sketches", run_and_stores / "pca"
    names = sorted(p.relative_to(theirs).as_posix() for p in theirs.rglob("*.safetensors"))
    assert names and names == sorted(p.relative_to(ours).as_posix() for p in ours.rglob("*.safetensors"))
    for name in names:
        a, b = load_file(str(ours / name)), load_file(str(theirs / name))
        assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a), name


@pytest.mark.parametrize(
    ("changes", "message"),
    [({"projection": "sparse"}, "gaussian' or 'pca"), ({"projection": "pca", "calibration_steps": 3}, "multiple")],
)
def test_bad_sketch_config_is_refused(changes, message):
    with pytest.raises(ConfigError, match=message):
        replace(tiny_config(steps=5), sketch=replace(SKETCH, **changes)).check()


def test_store_without_embeddings_answers_and_matches_the_full_stores_other_blocks(run_and_stores):
    """A calibrated store with skip_embeddings: smaller rows; segment 0 (Gaussian, before calibration) equals
    the full store's rows without the embedding blocks; the target sketches likewise (gradients taken only
    for the sketched parameters); opening it with other settings is refused."""
    from safetensors.torch import load_file

    from provenance.sketch.query import target_sketches

    full = ApproximateQuery(run_and_stores / "run", sketches=run_and_stores / "pca")
    noemb = ApproximateQuery(run_and_stores / "run", sketches=run_and_stores / "noemb")
    assert noemb.store.meta["settings"]["skip_embeddings"] is True
    kept = [s for s in full.store.projections.slots if s.name not in noemb.store.projections.skipped]
    assert noemb.store.projections.dim == sum(s.size for s in kept) < full.store.projections.dim
    columns = torch.cat([torch.arange(s.offset, s.offset + s.size) for s in kept])
    g0 = load_file(str(run_and_stores / "gaussian" / "segments" / "segment_00000.safetensors"))["sketch"]
    n0 = load_file(str(run_and_stores / "noemb" / "segments" / "segment_00000.safetensors"))["sketch"]
    assert torch.equal(n0, g0[:, columns])
    batch = full.encode(list(TARGETS))
    z_full = target_sketches(full.store, full.model, batch, anchors=full.anchors)
    z_noemb = target_sketches(noemb.store, noemb.model, batch, anchors=noemb.anchors)
    first = z_full[0][:, columns]  # segment 0: Gaussian projections in both stores
    assert torch.allclose(z_noemb[0], first, rtol=1e-5, atol=1e-6 * float(first.abs().max()))
    frame = noemb.values(list(TARGETS))
    assert frame["approximate"].all() and frame["value"].abs().sum() > 0
    from provenance.sketch.store import SketchStore

    with pytest.raises(SketchMismatchError):
        SketchStore.open(run_and_stores / "noemb", noemb.model, PCA)
