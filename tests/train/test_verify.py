"""`verify` passes on a good run and fails, naming the file, when one byte changes."""

from __future__ import annotations

import pandas as pd
import pytest

from provenance.errors import VerificationError
from provenance.store import atomic
from provenance.train.verify import verify_run

def test_verify_passes_on_a_good_run(trained_run):
    report = verify_run(trained_run, sample_steps=0, progress=False)
    assert report.hashes.findings == []
    assert report.hashes.files_checked >= 20 and report.hashes.documents_checked == 16


def test_verify_rederives_sampled_steps(trained_run):
    report = verify_run(trained_run, steps=[1, 4], progress=False)
    assert [c.step for c in report.steps] == [1, 4]
    assert all(c.n_values == 8 for c in report.steps)
    assert report.steps[0].relative_error <= 1e-2  # step 1: Adam's denominator is this batch alone
    assert report.steps[1].relative_error <= 1e-5
    assert "2 values re-derived" not in report.summary() and "step 4: 8 values re-derived" in report.summary()


def test_verify_catches_a_forged_value_with_consistent_hashes(run_copy):
    """Re-sealing the manifest hides a change from the hashes, not from the brute-force re-derivation."""
    from provenance.store.run_dir import STATUS_COMPLETE, RunDirectory
    from provenance.train.trainer import seal

    contrib = pd.read_parquet(run_copy / "contributions.parquet")
    row = contrib.index[(contrib.step == 3)][0]
    contrib.loc[row, "value_first_order"] *= 3.0
    atomic.write_parquet(run_copy / "contributions.parquet", contrib)
    seal(RunDirectory(run_copy), STATUS_COMPLETE)
    with pytest.raises(VerificationError, match="contributions.parquet: the values of step 3"):
        verify_run(run_copy, steps=[3], progress=False)


def _flip_byte(path, offset=None):
    data = bytearray(path.read_bytes())
    index = len(data) // 2 if offset is None else offset
    data[index] ^= 0x01
    path.write_bytes(bytes(data))


def test_verify_names_a_changed_document(run_copy):
    corpus = pd.read_parquet(run_copy / "corpus.parquet")
    text = corpus.loc[3, "text"]
    corpus.loc[3, "text"] = text[:5] + chr(ord(text[5]) ^ 1) + text[6:]
    atomic.write_parquet(run_copy / "corpus.parquet", corpus)
    with pytest.raises(VerificationError) as info:
        verify_run(run_copy, sample_steps=0, progress=False)
    message = str(info.value)
    assert "corpus.parquet: SHA-256 differs" in message
    assert f"document {corpus.loc[3, 'doc_id']!r}: text does not match its SHA-256" in message


@pytest.mark.parametrize(
    "rel", ["model/model.safetensors", "checkpoints/step_000002/model.safetensors", "values.parquet",
            "tokenizer/tokenizer.json"]
)
def test_verify_names_a_changed_file(run_copy, rel):
    _flip_byte(run_copy / rel)
    with pytest.raises(VerificationError) as info:
        verify_run(run_copy, sample_steps=0, progress=False)
    assert f"{rel}: SHA-256 differs from the manifest" in str(info.value)


def test_verify_names_a_missing_and_an_extra_file(run_copy):
    (run_copy / "ledger.parquet").unlink()
    (run_copy / "notes.txt").write_text("added later")
    with pytest.raises(VerificationError) as info:
        verify_run(run_copy, sample_steps=0, progress=False)
    assert "ledger.parquet: is missing" in str(info.value)
    assert "notes.txt: is not recorded in the manifest" in str(info.value)


def test_verify_rederives_under_the_engine_settings_the_run_recorded(tiny_corpus, tmp_path, monkeypatch):
    """A run recorded with Adam's "previous" denominator (e.g. by a version whose default it was) is checked
    against the brute force under that setting, not under this version's default ("current")."""
    import dataclasses
    import json

    from provenance.train import train, trainer

    from .tiny import TARGETS, tiny_config

    original = trainer.engine_config

    def previous_by_default(cfg, recorded=None):
        config = original(cfg, recorded)
        return config if recorded else dataclasses.replace(config, adam_denominator="previous")

    monkeypatch.setattr(trainer, "engine_config", previous_by_default)
    run = tmp_path / "previous"
    train(tiny_corpus, run, tiny_config(), targets=TARGETS, progress=False)
    monkeypatch.undo()
    assert json.loads((run / "manifest.json").read_text())["config"]["engine"]["adam_denominator"] == "previous"
    report = verify_run(run, steps=[4], progress=False)
    assert report.steps[0].relative_error <= 1e-5
