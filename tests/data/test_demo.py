"""The shipped demo corpus (data/demo/): loads, has the documented counts, targets point into the subset."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from provenance.data import demo as demo_module
from provenance.data import encode_target, load_demo_corpus, load_demo_targets, train_tokenizer
from provenance.errors import CorpusError

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "data" / "demo"

# The numbers data/demo/SOURCE.md documents (scripts/build_demo_corpus.py prints them).
FULL_DOCS, FULL_WEB, FULL_FORTUNES = 4711, 1388, 3323
DEMO_DOCS, DEMO_WEB, DEMO_FORTUNES = 1008, 177, 831


@pytest.fixture(scope="module")
def demo():
    return load_demo_corpus("demo")


@pytest.fixture(scope="module")
def full():
    return load_demo_corpus("full")


def test_counts_and_report(demo, full) -> None:
    assert len(full) == FULL_DOCS
    assert sum(d.doc_id.startswith("web:") for d in full) == FULL_WEB
    assert sum(d.doc_id.startswith("fortune:") for d in full) == FULL_FORTUNES
    assert len(demo) == DEMO_DOCS
    assert sum(d.doc_id.startswith("web:") for d in demo) == DEMO_WEB
    assert sum(d.doc_id.startswith("fortune:") for d in demo) == DEMO_FORTUNES
    for corpus in (demo, full):
        assert corpus.report.n_excluded == 0, corpus.report.summary()
    assert set(demo.doc_ids) <= set(full.doc_ids)
    assert 0.4e6 < demo.n_bytes < 1.0e6  # small enough to train on a CPU in minutes
    assert (DEMO / "corpus.jsonl.xz").stat().st_size < 3e6


def test_documents_look_right(full) -> None:
    genesis = full["web:Genesis.1"]
    assert genesis.source == "World English Bible"
    assert genesis.text.startswith("In the beginning, God created the heavens and the earth.")
    assert genesis.metadata["book"] == "Genesis" and genesis.metadata["chapter"] == 1
    assert genesis.metadata["licence"] == "public domain"
    psalm = full["web:Psalms.23"].text
    assert psalm.startswith("A Psalm by David.\nYahweh is my shepherd; I shall lack nothing.")  # heading line
    fortune = next(d for d in full if d.doc_id.startswith("fortune:"))
    file, item = fortune.doc_id.split(":")[1:]
    assert fortune.source == f"fortunes/{file}" and fortune.metadata["item"] == int(item)
    for doc in full:
        assert "<" not in doc.text or doc.doc_id.startswith("fortune:")  # no OSIS markup left
        assert "\x08" not in doc.text  # no terminal overstriking left


def test_verse_spans(full) -> None:
    """metadata.verses = [verse, start, end] cut the chapter text into its verses, in order."""
    for doc in (d for d in full if d.doc_id.startswith("web:")):
        spans = doc.metadata["verses"]
        assert spans, doc.doc_id
        for (_, s1, e1), (_, s2, _) in zip(spans, spans[1:]):
            assert 0 <= s1 < e1 < s2  # separated by a space or a heading line
        assert spans[-1][2] == len(doc.text)
        assert all(doc.text[s:e].strip() == doc.text[s:e] for _, s, e in spans)
    mark4 = full["web:Mark.4"]
    v3 = next(s for s in mark4.metadata["verses"] if s[0] == 3)
    assert mark4.text[v3[1] : v3[2]] == "\u201cListen! Behold, the farmer went out to sow."


def test_targets(demo, full) -> None:
    targets = load_demo_targets()
    kinds = [t["kind"] for t in targets]
    assert {k: kinds.count(k) for k in set(kinds)} == {"paraphrase": 3, "topic": 3, "unrelated": 3}
    assert len({t["id"] for t in targets}) == len(targets)
    assert {"paraphrase-1", "topic-1", "unrelated-1"} <= {t["id"] for t in targets}
    full_texts = [d.text for d in full]
    for t in targets:
        assert set(t) >= {"id", "prompt", "text", "source_doc_id", "kind"}
        assert t["text"].strip() and t["prompt"].strip()
        if t["kind"] == "unrelated":
            assert t["source_doc_id"] is None
            assert not any(t["text"] in text for text in full_texts)  # in no training set at all
        else:
            assert t["source_doc_id"] in demo, t["id"]
            assert t["text"] not in demo[t["source_doc_id"]].text  # a rewrite, not a copy
    paraphrase = next(t for t in targets if t["id"] == "paraphrase-1")
    assert paraphrase["text"].startswith("In the beginning God created the heaven and the earth.")  # KJV
    topic = next(t for t in targets if t["id"] == "topic-1")
    assert topic["source_doc_id"] == "web:Mark.4" and "Luke" in topic["text_source"]
    assert not any(d.metadata.get("book") == "Luke" for d in demo)


def test_targets_fit_the_default_context(demo) -> None:
    tokenizer = train_tokenizer(demo, vocab_size=4096)
    for t in load_demo_targets():
        input_ids, attention_mask, labels = encode_target(tokenizer, t["prompt"], t["text"], 128, target_id=t["id"])
        assert attention_mask.sum() <= 120  # some room for another tokenizer


def test_missing_demo_files(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setattr(demo_module, "DEMO_DIR", tmp_path / "nothing")
    with pytest.raises(CorpusError, match="ships with the source repository"):
        load_demo_corpus()
    with pytest.raises(CorpusError, match="ships with the source repository"):
        load_demo_targets()
    with pytest.raises(CorpusError, match="unknown demo subset"):
        load_demo_corpus("tiny")


def test_subset_out_of_step(monkeypatch, tmp_path: Path) -> None:
    for name in ("corpus.jsonl.xz", "targets.jsonl"):
        shutil.copy(DEMO / name, tmp_path / name)
    (tmp_path / "demo_subset.txt").write_text("web:Genesis.1\nweb:Nowhere.9\n")
    monkeypatch.setattr(demo_module, "DEMO_DIR", tmp_path)
    with pytest.raises(CorpusError, match="out of step"):
        load_demo_corpus("demo")


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("diatheke") is None, reason="needs diatheke, sword-text-*, fortunes (Debian)")
def test_build_is_reproducible() -> None:
    """Rebuilding from the Debian packages gives the committed bytes (about 30 s)."""
    out = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "build_demo_corpus.py"), "--check"], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-2000:]


def test_targets_file_is_plain_jsonl() -> None:
    lines = (DEMO / "targets.jsonl").read_text(encoding="utf-8").splitlines()
    assert all(isinstance(json.loads(line), dict) for line in lines)
