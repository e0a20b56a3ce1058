"""Documents and the corpus: what every run trains on and every value is attributed to.

A document is identified by a stable ``doc_id`` and fingerprinted by the SHA-256 of its UTF-8 text.
Bad inputs (empty, duplicate, non-UTF-8, oversized, malformed) are never dropped silently: they are
excluded from training and listed, by id, in ``Corpus.report``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from provenance.errors import CorpusError
from provenance.store.hashing import combined_sha256, sha256_text

# Why a raw record was refused (set by the readers before any text check).
NON_UTF8 = "non_utf8"
MALFORMED = "malformed"
OVERSIZED = "oversized"


@dataclass(frozen=True)
class Document:
    """One training document. ``sha256`` is the hex digest of ``text.encode("utf-8")``."""

    doc_id: str
    source: str
    metadata: dict[str, Any]
    text: str
    sha256: str

    @classmethod
    def from_text(cls, doc_id: str, source: str, text: str, metadata: dict[str, Any] | None = None) -> Document:
        return cls(doc_id=doc_id, source=source, metadata=dict(metadata or {}), text=text, sha256=sha256_text(text))

    @property
    def n_bytes(self) -> int:
        return len(self.text.encode("utf-8"))


@dataclass(frozen=True)
class RawRecord:
    """What a reader found at one place of the input, before the corpus checks.

    ``text`` is None when the reader could not produce one; ``problem`` then says why
    (``NON_UTF8``, ``MALFORMED`` or ``OVERSIZED``).
    """

    doc_id: str
    source: str
    metadata: dict[str, Any]
    text: str | None
    problem: str | None = None


@dataclass
class CorpusReport:
    """What ingestion found and what it left out (every list holds doc ids, in input order)."""

    path: str
    n_found: int = 0  # records read (kept + every excluded one)
    n_kept: int = 0
    empty: list[str] = field(default_factory=list)  # no text, or only whitespace
    duplicates: list[str] = field(default_factory=list)  # same text (hash) as an earlier document
    duplicate_of: dict[str, str] = field(default_factory=dict)  # duplicate id -> id of the kept one
    duplicate_ids: list[str] = field(default_factory=list)  # an id already used by an earlier document
    non_utf8: list[str] = field(default_factory=list)
    oversized: list[str] = field(default_factory=list)  # more than max_document_bytes of UTF-8
    malformed: list[str] = field(default_factory=list)  # e.g. a JSONL line that is not an object with "text"
    ignored_files: list[str] = field(default_factory=list)  # files of a folder that are not .txt/.md

    EXCLUSIONS = ("empty", "duplicates", "duplicate_ids", "non_utf8", "oversized", "malformed")

    @property
    def n_excluded(self) -> int:
        return sum(len(getattr(self, name)) for name in self.EXCLUSIONS)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (manifest.json["corpus"]["report"])."""
        out: dict[str, Any] = {"path": self.path, "n_found": self.n_found, "n_kept": self.n_kept}
        for name in self.EXCLUSIONS:
            out[name] = list(getattr(self, name))
        out["duplicate_of"] = dict(self.duplicate_of)
        out["ignored_files"] = list(self.ignored_files)
        return out

    def summary(self) -> str:
        parts = [f"{self.n_found} found", f"{self.n_kept} kept"]
        parts += [f"{len(getattr(self, n))} {n.replace('_', ' ')}" for n in self.EXCLUSIONS if getattr(self, n)]
        if self.ignored_files:
            parts.append(f"{len(self.ignored_files)} other files ignored")
        return ", ".join(parts)


@dataclass(frozen=True)
class Corpus:
    """The kept documents in input order, the ingestion report and one fingerprint for the whole.

    ``sha256`` = SHA-256 of the sorted per-document hashes joined by newlines
    (``provenance.store.hashing.combined_sha256``): independent of document order.
    """

    documents: list[Document]
    report: CorpusReport
    sha256: str = field(init=False)
    _by_id: dict[str, Document] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha256", combined_sha256(d.sha256 for d in self.documents))
        object.__setattr__(self, "_by_id", {d.doc_id: d for d in self.documents})

    def __len__(self) -> int:
        return len(self.documents)

    def __iter__(self) -> Iterator[Document]:
        return iter(self.documents)

    def __contains__(self, doc_id: object) -> bool:
        return doc_id in self._by_id

    def __getitem__(self, doc_id: str) -> Document:
        try:
            return self._by_id[doc_id]
        except KeyError:
            raise KeyError(f"no document {doc_id!r} in this corpus ({self.report.path})") from None

    @property
    def doc_ids(self) -> list[str]:
        return [d.doc_id for d in self.documents]

    @property
    def n_bytes(self) -> int:
        return sum(d.n_bytes for d in self.documents)

    def texts(self) -> Iterator[str]:
        return (d.text for d in self.documents)


def build_corpus(
    records: Iterable[RawRecord],
    path: str,
    *,
    max_document_bytes: int,
    ignored_files: Iterable[str] = (),
) -> Corpus:
    """Apply the checks in input order; the first of two identical texts is the one kept."""
    report = CorpusReport(path=path, ignored_files=list(ignored_files))
    kept: list[Document] = []
    seen_ids: set[str] = set()
    first_with_hash: dict[str, str] = {}
    for record in records:
        report.n_found += 1
        if record.problem is not None or record.text is None:
            getattr(report, record.problem or MALFORMED).append(record.doc_id)
            continue
        if record.doc_id in seen_ids:
            report.duplicate_ids.append(record.doc_id)
            continue
        seen_ids.add(record.doc_id)
        doc = Document.from_text(record.doc_id, record.source, record.text, record.metadata)
        if doc.n_bytes > max_document_bytes:
            report.oversized.append(doc.doc_id)
        elif not doc.text.strip():
            report.empty.append(doc.doc_id)
        elif doc.sha256 in first_with_hash:
            report.duplicates.append(doc.doc_id)
            report.duplicate_of[doc.doc_id] = first_with_hash[doc.sha256]
        else:
            first_with_hash[doc.sha256] = doc.doc_id
            kept.append(doc)
    report.n_kept = len(kept)
    if report.n_found == 0:
        found = f"; other files: {report.ignored_files[:5]}" if report.ignored_files else ""
        raise CorpusError(f"corpus {path} has no documents{found}; give a folder of .txt/.md files, "
                          "a .jsonl file with a 'text' field, a .parquet file or a saved HF dataset")
    if not kept:
        raise CorpusError(
            f"corpus {path}: no usable document remains ({report.summary()}); "
            f"see the lists in the report: {_short(report.to_dict())}"
        )
    return Corpus(documents=kept, report=report)


def _short(report: dict[str, Any], limit: int = 3) -> str:
    parts = []
    for name in CorpusReport.EXCLUSIONS:
        ids = report[name]
        if ids:
            more = f" (+{len(ids) - limit} more)" if len(ids) > limit else ""
            parts.append(f"{name}: {ids[:limit]}{more}")
    return "; ".join(parts) or "nothing excluded"
