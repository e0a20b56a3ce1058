"""Ingestion: every input kind, every kind of bad document, stable ids and hashes."""

from __future__ import annotations

import gzip
import hashlib
import json
import lzma
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from provenance.data import load_corpus
from provenance.errors import CorpusError

NON_UTF8 = b"caf\xe9 cr\xe8me, written in Latin-1\n"  # \xe9 alone is not valid UTF-8


def sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def corpus_hash(texts: list[str]) -> str:
    return hashlib.sha256("\n".join(sorted(sha(t) for t in texts)).encode("utf-8")).hexdigest()


@pytest.fixture
def text_folder(tmp_path: Path) -> Path:
    root = tmp_path / "mycorpus"
    (root / "news").mkdir(parents=True)
    (root / ".git").mkdir()
    (root / "b.txt").write_text("Second document.\n", encoding="utf-8")
    (root / "a.md").write_text("# Title\n\nFirst document, in Markdown.\n", encoding="utf-8")
    (root / "news" / "day1.txt").write_text("News of the day: caf\u00e9 opens.\n", encoding="utf-8")
    (root / "news" / "copy.txt").write_text("Second document.\n", encoding="utf-8")  # duplicate of b.txt
    (root / "empty.txt").write_bytes(b"")
    (root / "blank.txt").write_text("  \n\t\n", encoding="utf-8")
    (root / "latin1.txt").write_bytes(NON_UTF8)
    (root / "big.txt").write_text("x" * 500, encoding="utf-8")
    (root / "bom.txt").write_bytes(b"\xef\xbb\xbfStarts with a byte-order mark.")
    (root / "notes.pdf").write_bytes(b"%PDF-1.4")
    (root / ".hidden.txt").write_text("never read", encoding="utf-8")
    (root / ".git" / "config.txt").write_text("never read", encoding="utf-8")
    return root


def test_folder_kinds_and_report(text_folder: Path) -> None:
    corpus = load_corpus(text_folder, max_document_bytes=200)
    assert corpus.doc_ids == ["a.md", "b.txt", "bom.txt", "news/day1.txt"]
    assert corpus["news/day1.txt"].source == "mycorpus/news"
    assert corpus["a.md"].source == "mycorpus"
    assert corpus["a.md"].metadata == {"path": "a.md", "format": "md"}
    assert corpus["bom.txt"].text == "Starts with a byte-order mark."
    for doc in corpus:
        assert doc.sha256 == sha(doc.text)
    assert corpus["b.txt"].sha256 == hashlib.sha256((text_folder / "b.txt").read_bytes()).hexdigest()
    report = corpus.report
    assert report.n_found == 9 and report.n_kept == 4
    assert report.empty == ["blank.txt", "empty.txt"]
    assert report.duplicates == ["news/copy.txt"]
    assert report.duplicate_of == {"news/copy.txt": "b.txt"}
    assert report.non_utf8 == ["latin1.txt"]
    assert report.oversized == ["big.txt"]
    assert report.ignored_files == ["notes.pdf"]
    assert report.n_excluded == 5
    as_json = json.loads(json.dumps(report.to_dict()))
    assert as_json["non_utf8"] == ["latin1.txt"] and as_json["duplicates"] == ["news/copy.txt"]
    assert corpus.sha256 == corpus_hash([d.text for d in corpus])


def test_ids_and_hashes_stable_across_loads(text_folder: Path) -> None:
    first, second = load_corpus(text_folder), load_corpus(text_folder)
    assert [(d.doc_id, d.sha256) for d in first] == [(d.doc_id, d.sha256) for d in second]
    assert first.sha256 == second.sha256


def test_oversized_limit_is_on_utf8_bytes(tmp_path: Path) -> None:
    (tmp_path / "ok.txt").write_text("\u00e9" * 50, encoding="utf-8")  # 100 bytes
    (tmp_path / "over.txt").write_text("\u00e9" * 51, encoding="utf-8")  # 102 bytes
    corpus = load_corpus(tmp_path, max_document_bytes=100)
    assert corpus.doc_ids == ["ok.txt"] and corpus.report.oversized == ["over.txt"]


def test_single_text_file(tmp_path: Path) -> None:
    path = tmp_path / "one.txt"
    path.write_text("Just one.", encoding="utf-8")
    corpus = load_corpus(path)
    assert corpus.doc_ids == ["one.txt"] and corpus.documents[0].text == "Just one."


def jsonl_lines() -> list[bytes]:
    rows = [
        {"id": "first", "text": "Alpha text.", "source": "wiki", "lang": "en"},
        {"text": "No id here.", "metadata": {"year": 1999}, "lang": "en"},
        {"id": 7, "text": "Integer id."},
        {"id": "dup-text", "text": "Alpha text."},
        {"id": "first", "text": "Same id, other text."},
        {"id": "nulltext", "text": None},
        {"id": "numtext", "text": 42},
        {"id": ["bad"], "text": "A list is not an id."},
    ]
    lines = [json.dumps(r).encode("utf-8") for r in rows]
    lines.insert(2, b"")  # a blank line is not a record
    lines.append(b"{not json")
    lines.append(b'{"id": "latin", "text": "' + b"caf\xe9" + b'"}')
    lines.append(json.dumps({"id": "big", "text": "y" * 300}).encode("utf-8"))
    return lines


def test_jsonl(tmp_path: Path) -> None:
    path = tmp_path / "docs.jsonl"
    path.write_bytes(b"\n".join(jsonl_lines()) + b"\n")
    corpus = load_corpus(path, max_document_bytes=200)
    assert corpus.doc_ids == ["first", "docs:2", "7"]
    assert corpus["first"].source == "wiki" and corpus["first"].metadata == {"lang": "en"}
    assert corpus["docs:2"].source == "docs.jsonl"
    assert corpus["docs:2"].metadata == {"year": 1999, "lang": "en"}
    r = corpus.report
    assert r.duplicates == ["dup-text"] and r.duplicate_of == {"dup-text": "first"}
    assert r.duplicate_ids == ["first"]
    assert r.empty == ["nulltext"]
    assert r.malformed == ["numtext", "docs:9", "docs:10"]  # list id (line 9), bad JSON (line 10)
    assert r.non_utf8 == ["latin"]  # named by its readable id
    assert r.oversized == ["big"]
    assert r.n_found == 11 and r.n_kept == 3  # 12 lines, one blank


@pytest.mark.parametrize("suffix,opener", [(".jsonl.gz", gzip.open), (".jsonl.xz", lzma.open)])
def test_compressed_jsonl_equals_plain(tmp_path: Path, suffix: str, opener) -> None:
    data = b"\n".join(jsonl_lines()) + b"\n"
    (tmp_path / "docs.jsonl").write_bytes(data)
    with opener(tmp_path / f"docs{suffix}", "wb") as handle:
        handle.write(data)
    plain = load_corpus(tmp_path / "docs.jsonl", max_document_bytes=200)
    packed = load_corpus(tmp_path / f"docs{suffix}", max_document_bytes=200)
    assert packed.doc_ids == plain.doc_ids and packed.sha256 == plain.sha256
    assert packed.report.to_dict() | {"path": ""} == plain.report.to_dict() | {"path": ""}


def test_parquet(tmp_path: Path) -> None:
    table = pa.table(
        {
            "id": ["p1", "p2", "p3", "p4"],
            "text": ["Parquet one.", "Parquet two.", None, "Parquet one."],
            "year": [2001, 2002, 2003, 2004],
            "score": [0.5, float("nan"), 1.0, 2.0],
        }
    )
    path = tmp_path / "table.parquet"
    pq.write_table(table, path)
    corpus = load_corpus(path)
    assert corpus.doc_ids == ["p1", "p2"]
    assert corpus["p1"].metadata == {"year": 2001, "score": 0.5}
    assert corpus["p2"].metadata["score"] == "nan"  # NaN is not JSON: kept as text
    assert corpus["p1"].source == "table.parquet"
    assert corpus.report.empty == ["p3"] and corpus.report.duplicates == ["p4"]


def test_parquet_without_id_and_binary_text(tmp_path: Path) -> None:
    table = pa.table({"text": pa.array([b"bytes ok", NON_UTF8, b"more"], type=pa.binary())})
    path = tmp_path / "raw.parquet"
    pq.write_table(table, path)
    corpus = load_corpus(path)
    assert corpus.doc_ids == ["raw:0", "raw:2"]  # 0-based row numbers
    assert corpus.report.non_utf8 == ["raw:1"]


def test_parquet_without_text_column(tmp_path: Path) -> None:
    path = tmp_path / "wrong.parquet"
    pq.write_table(pa.table({"content": ["x"]}), path)
    with pytest.raises(CorpusError, match=r"no 'text' column.*content"):
        load_corpus(path)


def write_hf_split(folder: Path, texts: list[str], shards: int = 1) -> None:
    """The layout datasets' save_to_disk writes: Arrow IPC stream shards + state.json."""
    folder.mkdir(parents=True)
    per = -(-len(texts) // shards)
    names = []
    for i in range(shards):
        part = texts[i * per : (i + 1) * per]
        table = pa.table({"text": part, "label": list(range(i * per, i * per + len(part)))})
        name = f"data-{i:05d}-of-{shards:05d}.arrow"
        with pa.OSFile(str(folder / name), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        names.append({"filename": name})
    (folder / "state.json").write_text(json.dumps({"_data_files": names, "_split": None}))
    (folder / "dataset_info.json").write_text(json.dumps({"features": {}}))


def test_hf_dataset_folder(tmp_path: Path) -> None:
    folder = tmp_path / "my_dataset"
    write_hf_split(folder, ["One.", "Two.", "Three.", "Four.", ""], shards=2)
    corpus = load_corpus(folder)
    assert corpus.doc_ids == ["my_dataset:0", "my_dataset:1", "my_dataset:2", "my_dataset:3"]
    assert [d.text for d in corpus] == ["One.", "Two.", "Three.", "Four."]
    assert corpus["my_dataset:3"].metadata == {"label": 3}
    assert corpus.report.empty == ["my_dataset:4"]


def test_hf_dataset_dict(tmp_path: Path) -> None:
    folder = tmp_path / "dd"
    folder.mkdir()
    (folder / "dataset_dict.json").write_text(json.dumps({"splits": ["train", "test"]}))
    write_hf_split(folder / "train", ["Train a.", "Train b."])
    write_hf_split(folder / "test", ["Test a."])
    corpus = load_corpus(folder)
    assert corpus.doc_ids == ["train:0", "train:1", "test:0"]
    assert corpus["test:0"].source == "dd/test"


def test_hf_dataset_missing_shard(tmp_path: Path) -> None:
    folder = tmp_path / "broken"
    write_hf_split(folder, ["a", "b"])
    next(folder.glob("*.arrow")).unlink()
    with pytest.raises(CorpusError, match="data files missing"):
        load_corpus(folder)


def test_errors_name_the_path(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match="does not exist"):
        load_corpus(tmp_path / "nowhere")
    (tmp_path / "x.csv").write_text("a,b")
    with pytest.raises(CorpusError, match="unknown kind"):
        load_corpus(tmp_path / "x.csv")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CorpusError, match="no .txt or .md files.*empty"):
        load_corpus(empty)
    other = tmp_path / "other"
    other.mkdir()
    (other / "a.pdf").write_bytes(b"%PDF")
    with pytest.raises(CorpusError, match=r"a\.pdf"):
        load_corpus(other)


def test_nothing_remains(tmp_path: Path) -> None:
    (tmp_path / "e.txt").write_text("")
    (tmp_path / "l.txt").write_bytes(NON_UTF8)
    with pytest.raises(CorpusError) as info:
        load_corpus(tmp_path)
    message = str(info.value)
    assert str(tmp_path) in message and "2 found" in message and "1 empty" in message and "l.txt" in message
    blank = tmp_path / "blank.jsonl"
    blank.write_text("\n\n")
    with pytest.raises(CorpusError, match="no documents"):
        load_corpus(blank)
