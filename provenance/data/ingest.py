"""Read a corpus from disk: a folder of text files, JSONL, parquet, or a saved HF dataset.

Every reader yields ``RawRecord``s in a fixed order, so doc ids and the corpus hash are the same on
every run. Ids:

- folder: the file's path relative to the folder (posix, e.g. ``news/2024-01.txt``); files are read
  recursively in sorted order, only ``.txt`` and ``.md``; hidden files and folders (``.name``) are
  skipped; a leading UTF-8 byte-order mark is dropped. Source = the file's folder, relative to the
  corpus folder's parent (``mycorpus`` or ``mycorpus/news``).
- JSONL (``.jsonl``, ``.jsonl.gz``, ``.jsonl.xz``): the record's ``id`` when present, else
  ``<file-stem>:<line>`` (1-based line number). Source = the record's ``source`` string, else the file
  name. Metadata = the record's ``metadata`` object, plus every other field except id/text/source.
  Blank lines are not records.
- parquet / saved HF dataset: the ``id`` column when present, else ``<file-stem>:<row>`` (0-based row;
  for a dataset folder ``<folder>:<row>`` or ``<split>:<row>`` for a DatasetDict). Source = the
  ``source`` column when present, else the file or dataset name. Other columns = metadata.

The HF ``datasets`` package is not needed: ``save_to_disk`` writes Arrow IPC files, read with pyarrow.
"""

from __future__ import annotations

import gzip
import json
import lzma
import math
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pyarrow as pa
import pyarrow.parquet as pq

from provenance.data.corpus import MALFORMED, NON_UTF8, OVERSIZED, Corpus, RawRecord, build_corpus
from provenance.errors import CorpusError

TEXT_SUFFIXES = (".txt", ".md")
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.xz")
_BATCH_ROWS = 2048


def load_corpus(path: str | Path, *, max_document_bytes: int = 1_000_000) -> Corpus:
    """Ingest ``path`` (folder / .jsonl[.gz|.xz] / .parquet / HF dataset folder) into a Corpus.

    Raises CorpusError when the path is missing or of an unknown kind, holds no documents, or when
    nothing usable remains; excluded documents are listed in ``corpus.report``.
    """
    path = Path(path)
    if max_document_bytes < 1:
        raise CorpusError(f"max_document_bytes must be >= 1 (got {max_document_bytes})")
    if not path.exists():
        raise CorpusError(
            f"corpus path {path} does not exist; give a folder, a .jsonl, a .parquet or a saved HF dataset"
        )
    name = path.name.lower()
    if path.is_dir():
        if _is_hf_dataset(path):
            return build_corpus(_hf_records(path), str(path), max_document_bytes=max_document_bytes)
        files, ignored = _scan_folder(path)
        if not files:
            more = " ..." if len(ignored) > 5 else ""
            found = f"found other files: {ignored[:5]}{more}" if ignored else "it is empty"
            raise CorpusError(
                f"corpus folder {path} has no .txt or .md files ({found}); put one document per "
                ".txt/.md file, or pass a .jsonl/.parquet file instead"
            )
        records = _folder_records(path, files, max_document_bytes)
        return build_corpus(records, str(path), max_document_bytes=max_document_bytes, ignored_files=ignored)
    if name.endswith(JSONL_SUFFIXES):
        return build_corpus(jsonl_records(path), str(path), max_document_bytes=max_document_bytes)
    if name.endswith(".parquet"):
        return build_corpus(_parquet_records(path), str(path), max_document_bytes=max_document_bytes)
    if name.endswith(TEXT_SUFFIXES):
        records = _folder_records(path.parent, [path], max_document_bytes)
        return build_corpus(records, str(path), max_document_bytes=max_document_bytes)
    raise CorpusError(
        f"corpus path {path}: unknown kind; supported: a folder of .txt/.md files, "
        f"{', '.join(JSONL_SUFFIXES)}, .parquet, or a folder written by datasets' save_to_disk"
    )


def file_stem(path: Path) -> str:
    """``corpus.jsonl.xz`` -> ``corpus``."""
    name = path.name
    for suffix in (*JSONL_SUFFIXES, ".parquet", ".arrow", *TEXT_SUFFIXES):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


# -- folder of text files ----------------------------------------------------------------------------


def _scan_folder(root: Path) -> tuple[list[Path], list[str]]:
    files, ignored = [], []
    for p in sorted(root.rglob("*"), key=lambda q: q.relative_to(root).as_posix()):
        rel = p.relative_to(root)
        if any(part.startswith(".") for part in rel.parts) or not p.is_file():
            continue
        (files if p.name.lower().endswith(TEXT_SUFFIXES) else ignored).append(p)
    return files, [p.relative_to(root).as_posix() for p in ignored]


def _folder_records(root: Path, files: list[Path], max_bytes: int) -> Iterator[RawRecord]:
    for p in files:
        rel = p.relative_to(root)
        doc_id = rel.as_posix()
        source = (Path(root.name) / rel.parent).as_posix()
        meta = {"path": doc_id, "format": p.suffix.lower().lstrip(".")}
        if p.stat().st_size > max_bytes + 3:  # + a possible byte-order mark; exact check after decoding
            yield RawRecord(doc_id, source, meta, None, OVERSIZED)
            continue
        raw = p.read_bytes()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            yield RawRecord(doc_id, source, meta, None, NON_UTF8)
            continue
        yield RawRecord(doc_id, source, meta, text.removeprefix("\ufeff"))


# -- JSONL -------------------------------------------------------------------------------------------


def _open_binary(path: Path) -> IO[bytes]:
    name = path.name.lower()
    if name.endswith(".gz"):
        return gzip.open(path, "rb")
    if name.endswith(".xz"):
        return lzma.open(path, "rb")
    return open(path, "rb")


def jsonl_records(path: Path) -> Iterator[RawRecord]:
    stem = file_stem(path)
    try:
        with _open_binary(path) as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                yield _jsonl_record(line, f"{stem}:{number}", path.name)
    except (OSError, EOFError, lzma.LZMAError) as exc:
        raise CorpusError(f"cannot read {path}: {exc}; is the file complete and of the kind its name says?") from exc


def _jsonl_record(line: bytes, fallback_id: str, file_name: str) -> RawRecord:
    try:
        decoded = line.decode("utf-8")
    except UnicodeDecodeError:
        # Name the record by its id when the id itself is readable.
        return RawRecord(_peek_id(line.decode("utf-8", errors="replace")) or fallback_id, file_name, {}, None, NON_UTF8)
    try:
        row = json.loads(decoded)
    except json.JSONDecodeError:
        return RawRecord(fallback_id, file_name, {}, None, MALFORMED)
    if not isinstance(row, dict):
        return RawRecord(fallback_id, file_name, {}, None, MALFORMED)
    doc_id = _as_id(row.get("id"), fallback_id)
    source = row["source"] if isinstance(row.get("source"), str) else file_name
    if doc_id is None:
        return RawRecord(fallback_id, source, {}, None, MALFORMED)
    text = row.get("text")
    meta = dict(row["metadata"]) if isinstance(row.get("metadata"), dict) else {}
    meta.update({k: v for k, v in row.items() if k not in ("id", "text", "source", "metadata")})
    if text is None:
        return RawRecord(doc_id, source, meta, "")  # reported as empty
    if not isinstance(text, str):
        return RawRecord(doc_id, source, meta, None, MALFORMED)
    return RawRecord(doc_id, source, meta, text)


def _peek_id(line: str) -> str | None:
    try:
        row = json.loads(line)
    except json.JSONDecodeError:
        return None
    return _as_id(row.get("id"), None) if isinstance(row, dict) else None


def _as_id(value: Any, fallback: str | None) -> str | None:
    """Ids may be strings or integers; anything else (list, float, bool) is not an id."""
    if value is None:
        return fallback
    if isinstance(value, str) and value.strip():
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


# -- parquet and Arrow (HF datasets save_to_disk) ------------------------------------------------------


def _parquet_records(path: Path) -> Iterator[RawRecord]:
    try:
        parquet = pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as exc:
        raise CorpusError(f"cannot read parquet file {path}: {exc}") from exc
    _require_text_column(parquet.schema_arrow, path)
    batches = parquet.iter_batches(batch_size=_BATCH_ROWS)
    yield from _table_records(batches, file_stem(path), path.name)


def _is_hf_dataset(folder: Path) -> bool:
    return (folder / "dataset_dict.json").is_file() or (folder / "state.json").is_file()


def _hf_records(folder: Path) -> Iterator[RawRecord]:
    if (folder / "dataset_dict.json").is_file():
        splits = _read_json(folder / "dataset_dict.json").get("splits") or []
        if not splits:
            raise CorpusError(f"{folder}/dataset_dict.json lists no splits")
        for split in splits:
            yield from _hf_split(folder / split, split, f"{folder.name}/{split}")
    else:
        yield from _hf_split(folder, folder.name, folder.name)


def _hf_split(folder: Path, id_prefix: str, source: str) -> Iterator[RawRecord]:
    state = _read_json(folder / "state.json") if (folder / "state.json").is_file() else {}
    names = [f["filename"] for f in state.get("_data_files", []) if "filename" in f]
    files = [folder / n for n in names] if names else sorted(folder.glob("*.arrow"))
    missing = [str(f) for f in files if not f.is_file()]
    if missing or not files:
        raise CorpusError(
            f"saved dataset {folder}: data files missing ({missing or 'no .arrow files'}); "
            "was save_to_disk interrupted? save it again"
        )
    offset = 0
    for arrow_file in files:
        table = _read_arrow(arrow_file)
        _require_text_column(table.schema, arrow_file)
        for record in _table_records(table.to_batches(max_chunksize=_BATCH_ROWS), id_prefix, source, offset):
            yield record
        offset += table.num_rows


def _read_arrow(path: Path) -> pa.Table:
    """HF datasets writes the Arrow IPC *stream* format; plain Arrow files are accepted too."""
    try:
        with pa.memory_map(str(path)) as source:
            return pa.ipc.open_stream(source).read_all()
    except pa.ArrowInvalid:
        pass
    try:
        with pa.memory_map(str(path)) as source:
            return pa.ipc.open_file(source).read_all()
    except pa.ArrowInvalid as exc:
        raise CorpusError(f"{path} is not an Arrow IPC file ({exc})") from exc


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorpusError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise CorpusError(f"{path} is not a JSON object")
    return data


def _require_text_column(schema: pa.Schema, path: Path) -> None:
    if "text" not in schema.names:
        raise CorpusError(
            f"{path} has no 'text' column (columns: {schema.names}); rename the column holding the documents to 'text'"
        )


def _table_records(batches: Any, id_prefix: str, source_name: str, offset: int = 0) -> Iterator[RawRecord]:
    row_number = offset
    for batch in batches:
        for row in batch.to_pylist():
            fallback = f"{id_prefix}:{row_number}"
            row_number += 1
            doc_id = _as_id(row.get("id"), fallback)
            source = row["source"] if isinstance(row.get("source"), str) else source_name
            meta = {k: _json_value(v) for k, v in row.items() if k not in ("id", "text", "source")}
            if doc_id is None:
                yield RawRecord(fallback, source, meta, None, MALFORMED)
                continue
            text = row.get("text")
            if isinstance(text, bytes):  # a binary column: decode strictly
                try:
                    text = text.decode("utf-8")
                except UnicodeDecodeError:
                    yield RawRecord(doc_id, source, meta, None, NON_UTF8)
                    continue
            if text is None:
                text = ""  # reported as empty
            if not isinstance(text, str):
                yield RawRecord(doc_id, source, meta, None, MALFORMED)
                continue
            yield RawRecord(doc_id, source, meta, text)


def _json_value(value: Any) -> Any:
    """Metadata must survive json.dumps: keep JSON types, turn the rest (dates, bytes, NaN) into text."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, dict):
        return {str(k): _json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_value(v) for v in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)
