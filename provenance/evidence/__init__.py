"""Evidence: why a document may have shaped an output (verbatim spans, paraphrase, shared topic).

Public API (see docs/evidence.md)::

    build_index(run_dir, embedder=None, approximate=False, batch_size=64, progress=True) -> IndexInfo
    load_index(run_dir) -> EvidenceIndex
    query(run_dir, *, text=None, target_id=None, top_k=20, index=None) -> QueryResult
    evidence_for(text, doc_text, ...) -> Evidence
    load_chunk_values(run_dir) -> ChunkValues             # per-chunk values (contributions summed over steps)
    specific_values(chunk_values, target_id, *, reference=None) -> pd.Series   # doc_id -> best chunk's z
    combine_rankings(evidence, specific, settings=CombineSettings()) -> list[CombinedEntry]
    query(..., order="combined") uses the last two (copied documents first, then score + BM25 + coverage + bounded value)

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
    from provenance.evidence.combine import CombinedEntry, CombineSettings, combine_rankings
    from provenance.evidence.specific import ChunkValues, load_chunk_values, specific_values
    from provenance.evidence.index import EvidenceIndex, build_index, load_index
    from provenance.evidence.answer import evidence_for, query

_LAZY = {
    "build_index": "provenance.evidence.index",
    "load_index": "provenance.evidence.index",
    "EvidenceIndex": "provenance.evidence.index",
    "query": "provenance.evidence.answer",
    "evidence_for": "provenance.evidence.answer",
    "CombineSettings": "provenance.evidence.combine",
    "CombinedEntry": "provenance.evidence.combine",
    "combine_rankings": "provenance.evidence.combine",
    "ChunkValues": "provenance.evidence.specific",
    "load_chunk_values": "provenance.evidence.specific",
    "specific_values": "provenance.evidence.specific",
}

__all__ = [
    "LABELS", "Evidence", "IndexInfo", "LedgerSummary", "PassagePair", "QueryResult", "RankedDocument",
    "VerbatimSpan", "build_index", "load_index", "EvidenceIndex", "query", "evidence_for",
    "CombineSettings", "CombinedEntry", "combine_rankings", "ChunkValues", "load_chunk_values", "specific_values",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'provenance.evidence' has no attribute {name!r}")
