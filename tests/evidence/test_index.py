"""Evidence index: build, load, up to date, stale, missing, resumable, approximate."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from provenance.errors import EvidenceIndexError, RunDirectoryError
from provenance.evidence import index as index_module
from provenance.evidence.index import build_index, load_index
from provenance.store.hashing import sha256_text
from provenance.store.tables import read_table, write_table
from .fixture_run import DOCS, write_run


def test_build_writes_the_contracted_files(indexed_run, encoder):
    folder = indexed_run / "evidence"
    for name in ("passages.parquet", "embeddings.npy", "passages.faiss", "ngrams.safetensors", "index.json"):
        assert (folder / name).is_file(), name
    assert (folder / "bm25").is_dir()
    assert not (folder / "shards").exists()  # removed once the build completed
    info = json.loads((folder / "index.json").read_text())
    assert info["embedder"]["name"] == "all-MiniLM-L6-v2"
    assert info["embedder"]["sha256"] == encoder.sha256 and len(encoder.sha256) == 64
    corpus = read_table(indexed_run / "corpus.parquet", "corpus")
    manifest = json.loads((indexed_run / "manifest.json").read_text())
    assert info["corpus"]["sha256"] == manifest["corpus"]["sha256"]
    assert info["index_type"] == "flat-ip" and info["recall_at_10"] is None

    passages = pd.read_parquet(folder / "passages.parquet")
    assert list(passages.columns) == ["doc_id", "passage_id", "start_char", "end_char", "text"]
    texts = dict(zip(corpus["doc_id"], corpus["text"]))
    for row in passages.itertuples():
        assert texts[row.doc_id][row.start_char : row.end_char] == row.text  # offsets point into the document
    assert set(passages["doc_id"]) == set(DOCS)
    vectors = np.load(folder / "embeddings.npy")
    assert vectors.shape == (len(passages), encoder.dim)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)


def test_second_build_is_up_to_date(indexed_run):
    info = build_index(indexed_run, progress=False)
    assert info.up_to_date
    assert info.n_documents == len(DOCS)


def test_load_missing_index_names_the_fix(tmp_path):
    run = write_run(tmp_path / "fresh-run")
    with pytest.raises(EvidenceIndexError, match=r"provenance index --run"):
        load_index(run)


def test_missing_run_directory_is_a_clear_error(tmp_path):
    with pytest.raises(RunDirectoryError, match="does not exist"):
        load_index(tmp_path / "nope")


def test_stale_index_after_corpus_change(run_copy):
    corpus = read_table(run_copy / "corpus.parquet", "corpus")
    corpus.loc[0, "text"] = corpus.loc[0, "text"] + " An added sentence."
    corpus.loc[0, "sha256"] = sha256_text(corpus.loc[0, "text"])
    write_table(run_copy / "corpus.parquet", corpus, "corpus")
    with pytest.raises(EvidenceIndexError, match=r"stale.*provenance index --run"):
        load_index(run_copy)


def test_stale_index_when_manifest_corpus_hash_changes(run_copy):
    manifest = json.loads((run_copy / "manifest.json").read_text())
    manifest["corpus"]["sha256"] = "0" * 64
    (run_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(EvidenceIndexError, match="stale"):
        load_index(run_copy)


def test_corrupt_index_file_is_reported(run_copy):
    (run_copy / "evidence" / "passages.faiss").write_bytes(b"not a faiss index")
    with pytest.raises(EvidenceIndexError, match="unreadable"):
        load_index(run_copy)


def test_edited_corpus_text_is_refused_at_build(tmp_path):
    run = write_run(tmp_path / "edited")
    corpus = read_table(run / "corpus.parquet", "corpus")
    corpus.loc[1, "text"] = "changed without updating the hash"
    write_table(run / "corpus.parquet", corpus, "corpus")
    with pytest.raises(RunDirectoryError, match="does not match its sha256"):
        build_index(run, progress=False)


def test_interrupted_build_resumes_from_finished_shards(tmp_path, encoder, monkeypatch):
    run = write_run(tmp_path / "resume-run")
    monkeypatch.setattr(index_module, "SHARD_SIZE", 2)  # 6 passages -> 3 shards
    calls = {"n": 0}
    real_encode = type(encoder).encode

    def failing_encode(self, texts, batch_size=64, progress=False):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("simulated crash in the second shard")
        return real_encode(self, texts, batch_size, progress)

    monkeypatch.setattr(type(encoder), "encode", failing_encode)
    with pytest.raises(KeyboardInterrupt):
        build_index(run, progress=False)
    assert not (run / "evidence" / "index.json").exists()  # no half index is ever presented as complete
    shard_files = list((run / "evidence" / "shards").rglob("*.npy"))
    assert len(shard_files) == 1

    calls["n"] = 10  # no more failures
    encoded = []

    def counting_encode(self, texts, batch_size=64, progress=False):
        encoded.append(len(texts))
        return real_encode(self, texts, batch_size, progress)

    monkeypatch.setattr(type(encoder), "encode", counting_encode)
    info = build_index(run, progress=False)
    assert encoded == [2, 2]  # the first shard was reused, only the other two were embedded
    assert not info.up_to_date
    resumed = np.load(run / "evidence" / "embeddings.npy")
    monkeypatch.undo()
    fresh_run = write_run(tmp_path / "fresh")
    build_index(fresh_run, progress=False)
    assert np.allclose(resumed, np.load(fresh_run / "evidence" / "embeddings.npy"), atol=1e-5)


def test_approximate_index_reports_recall(tmp_path):
    run = write_run(tmp_path / "approx-run")
    lines = []
    info = build_index(run, approximate=True, progress=False, echo=lines.append)
    assert info.index_type == "hnsw-ip"
    assert info.recall_at_10 == pytest.approx(1.0)  # six passages: HNSW finds them all
    assert any("recall@10" in line for line in lines)
    loaded = load_index(run)
    assert loaded.faiss.ntotal == info.n_passages


def test_bad_embedder_path_is_a_clear_error(tmp_path):
    run = write_run(tmp_path / "emb-run")
    with pytest.raises(EvidenceIndexError, match="sentence-transformers model folder"):
        build_index(run, embedder=tmp_path / "no-model", progress=False)


def test_empty_corpus_is_refused(tmp_path):
    run = write_run(tmp_path / "blank-run", docs={"a:0": ("a.txt", "   \n\t  ")})
    with pytest.raises(EvidenceIndexError, match="no document holds any words"):
        build_index(run, progress=False)
