"""Bad input gets a clear typed error, and nothing is half-written."""

from __future__ import annotations

import json
import shutil

import pytest

from provenance.config import ConfigError
from provenance.errors import CorpusError, RunDirectoryError, TargetError
from provenance.store.run_dir import RunDirectory
from provenance.train import TargetSpec, attribute, read_targets_jsonl, train

from .tiny import tiny_config, write_corpus


def _nothing_written(runs):
    return not runs.exists() or not any(runs.iterdir())


def test_empty_corpus(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("")
    (tmp_path / "docs" / "b.txt").write_text("  \n")
    with pytest.raises(CorpusError, match="no usable document"):
        train(tmp_path / "docs", tmp_path / "runs" / "r", tiny_config(), progress=False)
    assert _nothing_written(tmp_path / "runs")


def test_all_duplicate_corpus(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(5):
        (docs / f"copy{i}.txt").write_text("the same text in every file. " * 10)
    with pytest.raises(CorpusError, match=r"1 usable document \(4 duplicates"):
        train(docs, tmp_path / "runs" / "r", tiny_config(), progress=False)
    assert _nothing_written(tmp_path / "runs")


def test_non_utf8_file_only(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "latin1.txt").write_bytes("caf\xe9 cr\xe8me".encode("latin-1"))
    with pytest.raises(CorpusError, match="non_utf8"):
        train(docs, tmp_path / "runs" / "r", tiny_config(), progress=False)
    assert _nothing_written(tmp_path / "runs")


def test_non_utf8_file_among_good_ones_is_reported_in_the_manifest(tmp_path):
    docs = write_corpus(tmp_path / "docs")
    (docs / "latin1.txt").write_bytes("caf\xe9 cr\xe8me".encode("latin-1"))
    (docs / "empty.txt").write_text("")
    run = train(docs, tmp_path / "runs" / "r", tiny_config(steps=1), progress=False)
    report = run.read_manifest()["corpus"]["report"]
    assert report["non_utf8"] == ["latin1.txt"] and report["empty"] == ["empty.txt"]
    assert run.read_manifest()["corpus"]["n_documents"] == 16


def test_target_with_empty_text(tmp_path, tiny_corpus):
    targets = tmp_path / "targets.jsonl"
    targets.write_text(json.dumps({"id": "ok", "prompt": "", "text": "sea"}) + "\n"
                       + json.dumps({"id": "blank", "prompt": "a prompt", "text": ""}) + "\n")
    with pytest.raises(TargetError, match="'blank' has an empty 'text'"):
        read_targets_jsonl(targets)
    with pytest.raises(TargetError, match="'blank'"):
        train(tiny_corpus, tmp_path / "runs" / "r", tiny_config(),
              targets=[TargetSpec("blank", "p", "")], progress=False)
    assert _nothing_written(tmp_path / "runs")


def test_target_longer_than_the_context(tmp_path, tiny_corpus):
    long = TargetSpec("long", "", "sea " * 100)
    with pytest.raises(TargetError, match="context"):
        train(tiny_corpus, tmp_path / "runs" / "r", tiny_config(), targets=[long], progress=False)
    assert _nothing_written(tmp_path / "runs")


def test_batch_larger_than_the_corpus(tmp_path, tiny_corpus):
    with pytest.raises(ConfigError, match="batch-size"):
        train(tiny_corpus, tmp_path / "runs" / "r", tiny_config(batch_size=400, micro_batch_size=4),
              progress=False)
    assert _nothing_written(tmp_path / "runs")


def test_existing_run_is_not_overwritten(run_copy, tiny_corpus):
    before = (run_copy / "manifest.json").read_bytes()
    with pytest.raises(RunDirectoryError, match="already exists"):
        train(tiny_corpus, run_copy, tiny_config(), progress=False)
    assert (run_copy / "manifest.json").read_bytes() == before


def test_run_directory_from_a_newer_format(run_copy):
    manifest = json.loads((run_copy / "manifest.json").read_text())
    manifest["format_version"] = 99
    (run_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(RunDirectoryError, match="format version 99.*upgrade provenance"):
        RunDirectory.open(run_copy)
    with pytest.raises(RunDirectoryError, match="format version 99"):
        attribute(run_copy, [TargetSpec("x", "", "sea")], progress=False)


def test_replay_with_the_initial_checkpoint_missing(run_copy):
    before = (run_copy / "values.parquet").read_bytes()
    shutil.rmtree(run_copy / "checkpoints" / "step_000000")
    with pytest.raises(RunDirectoryError, match="step_000000 is missing"):
        attribute(run_copy, [TargetSpec("x", "", "sea")], progress=False)
    assert (run_copy / "values.parquet").read_bytes() == before


def test_not_a_run_directory(tmp_path):
    with pytest.raises(RunDirectoryError, match="does not exist"):
        RunDirectory.open(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunDirectoryError, match="no manifest.json"):
        RunDirectory.open(tmp_path / "empty")
