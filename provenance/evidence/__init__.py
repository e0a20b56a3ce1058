"""Evidence: why a document may have shaped an output (verbatim spans, paraphrase, shared topic).

Public API (see docs/evidence.md)::

    build_index(run_dir, embedder=None, approximate=False, batch_size=64, progress=True) -> IndexInfo
    load_index(run_dir) -> EvidenceIndex
    query(run_dir, *, text=None, target_id=None, top_k=20, index=None) -> QueryResult
    evidence_for(text, doc_text, ...) -> Evidence

Heavy modules (FAISS, sentence-transformers) load on first use, so importing the schema stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from provenance.evidence.schema import (
    LABELS,
    Evidence,
    IndexInfo,
    LedgerSummary,
    PassagePair,
    QueryResult,
    RankedDocument,
    VerbatimSpan,
)

if TYPE_CHECKING:
    from provenance.evidence.index import EvidenceIndex, build_index, load_index
    from provenance.evidence.answer import evidence_for, query

_LAZY = {
    "build_index": "provenance.evidence.index",
    "load_index": "provenance.evidence.index",
    "EvidenceIndex": "provenance.evidence.index",
    "query": "provenance.evidence.answer",
    "evidence_for": "provenance.evidence.answer",
}

__all__ = [
    "LABELS", "Evidence", "IndexInfo", "LedgerSummary", "PassagePair", "QueryResult", "RankedDocument",
    "VerbatimSpan", "build_index", "load_index", "EvidenceIndex", "query", "evidence_for",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'provenance.evidence' has no attribute {name!r}")
