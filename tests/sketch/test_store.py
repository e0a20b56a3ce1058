"""The sketch store written by the trainer: layout, approximate query, and refusals on any mismatch."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from provenance.config import ConfigError, SketchConfig
from provenance.errors import SketchMismatchError
from provenance.sketch.query import ApproximateQuery, sketch_settings
from provenance.sketch.store import SketchStore
from provenance.store.tables import read_table
from provenance.train import train
from provenance.train.model import build_model
from tests.train.tiny import TARGETS, tiny_config, write_corpus

SKETCH = SketchConfig(enabled=True, every=2, k_out=6, k_in=5, k_vector=4, seed=7)


@pytest.fixture(scope="module")
def sketched_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sketch")
    config = replace(tiny_config(steps=5), sketch=SKETCH).check()
    train(write_corpus(root / "docs"), root / "run", config, targets=TARGETS, threads=1, progress=False)
    return root / "run"


def _model(run: Path, **model_changes):
    manifest = json.loads((run / "manifest.json").read_text())
    cfg = tiny_config().model
    return build_model(replace(cfg, **model_changes), manifest["tokenizer"]["vocab_size"], 0)


def test_trainer_writes_segments_and_anchors(sketched_run):
    folder = sketched_run / "sketches"
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["status"] == "complete" and meta["every"] == 2 and meta["last_step"] == 5
    segments = sorted(p.name for p in (folder / "segments").iterdir())
    assert segments == ["segment_00000.safetensors", "segment_00001.safetensors", "segment_00002.safetensors"]
    # anchors: after step first-1+every//2 of each segment (steps 1, 3, 5)
    assert sorted(p.name for p in (folder / "anchors").iterdir()) == [
        "step_000001.safetensors", "step_000003.safetensors", "step_000005.safetensors"]
    store = SketchStore.open(folder, _model(sketched_run), sketch_settings(SKETCH))
    chunks = read_table(sketched_run / "chunks.parquet", "chunks")
    # every step trains batch_size chunks; a segment stores each of its chunks once
    for segment in store.segments:
        ids, rows = store.rows(segment)
        assert len(set(ids.tolist())) == len(ids) and set(ids.tolist()) <= set(chunks["chunk_id"])
        assert rows.shape == (len(ids), store.projections.dim)


def test_approximate_query_labels_and_covers_every_document(sketched_run):
    frame = ApproximateQuery(sketched_run).values(list(TARGETS))
    corpus = read_table(sketched_run / "corpus.parquet", "corpus")
    assert len(frame) == len(corpus) * len(TARGETS)
    assert frame["approximate"].all()
    assert frame["value"].abs().sum() > 0
    for _, rows in frame.groupby("target_id"):
        assert sorted(rows["rank"]) == list(range(1, len(rows) + 1))
        positive = rows["value"].clip(lower=0)
        assert rows["share"].sum() == pytest.approx(1.0 if positive.sum() > 0 else 0.0)


def test_other_projection_settings_are_refused(sketched_run):
    other = sketch_settings(replace(SKETCH, seed=8))
    with pytest.raises(SketchMismatchError, match="another sketch settings"):
        SketchStore.open(sketched_run / "sketches", _model(sketched_run), other)


def test_other_model_is_refused(sketched_run):
    with pytest.raises(SketchMismatchError, match="another model architecture"):
        SketchStore.open(sketched_run / "sketches", _model(sketched_run, n_embd=16), sketch_settings(SKETCH))


def test_modified_projections_are_refused(sketched_run, tmp_path):
    from provenance.sketch.store import load_projection_matrices
    from provenance.store import atomic

    folder = tmp_path / "sketches"
    shutil.copytree(sketched_run / "sketches", folder)
    matrices = load_projection_matrices(folder / "projections.safetensors")
    key = next(k for k, v in matrices.items() if v.shape[0] < v.shape[1])
    matrices[key] = matrices[key] * 1.5
    atomic.write_safetensors(folder / "projections.safetensors", matrices)
    with pytest.raises(SketchMismatchError, match="projections.safetensors differs"):
        SketchStore.open(folder, _model(sketched_run), sketch_settings(SKETCH))


def test_incomplete_or_missing_store_is_refused(sketched_run, tmp_path):
    folder = tmp_path / "sketches"
    shutil.copytree(sketched_run / "sketches", folder)
    meta = json.loads((folder / "meta.json").read_text())
    (folder / "meta.json").write_text(json.dumps({**meta, "status": "training"}))
    with pytest.raises(SketchMismatchError, match="incomplete"):
        SketchStore.open(folder, _model(sketched_run), sketch_settings(SKETCH))
    (folder / "meta.json").write_text(json.dumps(meta))
    (folder / "segments" / "segment_00001.safetensors").unlink()
    with pytest.raises(SketchMismatchError, match="damaged"):
        SketchStore.open(folder, _model(sketched_run), sketch_settings(SKETCH))
    with pytest.raises(SketchMismatchError, match="holds no sketches"):
        SketchStore.open(tmp_path / "nothing", _model(sketched_run), sketch_settings(SKETCH))


def test_run_without_sketches_is_refused(tmp_path):
    config = tiny_config(steps=2)
    train(write_corpus(tmp_path / "docs", n_docs=6), tmp_path / "run", config, targets=TARGETS[:1], threads=1,
          progress=False)
    with pytest.raises(SketchMismatchError, match="without sketches"):
        ApproximateQuery(tmp_path / "run")


def test_segment_length_must_divide_checkpoints():
    with pytest.raises(ConfigError, match="sketch.every"):
        replace(tiny_config(checkpoint_every=3), sketch=SketchConfig(enabled=True, every=2)).check()
    with pytest.raises(ConfigError, match="sketch.k_in"):
        replace(tiny_config(), sketch=SketchConfig(enabled=True, every=1, k_in=0)).check()


def test_cli_approximate_is_labelled(sketched_run):
    from typer.testing import CliRunner

    from provenance.cli import app

    runner = CliRunner()
    table = runner.invoke(app, ["approximate", "--run", str(sketched_run), "--text", "ship sea wind", "--top", "3"])
    assert table.exit_code == 0, table.output
    assert "APPROXIMATE values" in table.output and table.output.count("value ~") == 3
    as_json = runner.invoke(app, ["approximate", "--run", str(sketched_run), "--text", "ship sea wind",
                                  "--format", "json", "--top", "0"])
    payload = json.loads(as_json.output)
    assert payload["label"].startswith("approximate") and all(r["approximate"] for r in payload["rows"])
    corpus = read_table(sketched_run / "corpus.parquet", "corpus")
    assert len(payload["rows"]) == len(corpus)
    missing = runner.invoke(app, ["approximate", "--run", str(sketched_run.parent / "nope"), "--text", "x"])
    assert missing.exit_code == 1


def test_interrupted_then_resumed_run_has_the_same_sketches(sketched_run, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from provenance.sketch import training
    from provenance.train import resume

    original = training.SketchSession.after_step

    def crash_at_step_5(self, step, chunk_ids, result):
        if step == 5:
            raise KeyboardInterrupt("simulated kill after the step-4 checkpoint")
        original(self, step, chunk_ids, result)

    config = replace(tiny_config(steps=5), sketch=SKETCH).check()
    monkeypatch.setattr(training.SketchSession, "after_step", crash_at_step_5)
    with pytest.raises(KeyboardInterrupt):
        train(write_corpus(tmp_path / "docs"), tmp_path / "run", config, targets=TARGETS, threads=1, progress=False)
    monkeypatch.setattr(training.SketchSession, "after_step", original)
    assert json.loads((tmp_path / "run" / "sketches" / "meta.json").read_text())["status"] == "training"
    resume(tmp_path / "run", progress=False)
    ours, theirs = tmp_path / "run" / "sketches", sketched_run / "sketches"
    names = sorted(p.relative_to(theirs).as_posix() for p in theirs.rglob("*.safetensors"))
    assert names == sorted(p.relative_to(ours).as_posix() for p in ours.rglob("*.safetensors"))
    for name in names:
        a, b = load_file(str(ours / name)), load_file(str(theirs / name))
        assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a), name
