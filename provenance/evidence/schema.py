"""Typed query results shared by the CLI, the app and the PDF reports (one definition, no copies).

Character offsets (``*_start_char`` / ``*_end_char``) on the output side refer to ``QueryResult.text``
(the query text after control characters were removed and, for very long texts, after truncation); on the
document side they refer to the document's ``text`` in corpus.parquet. Spans are counted in words.
"""

from __future__ import annotations

from dataclasses import dataclass, field

LABELS = ("verbatim", "paraphrase", "topic", "unrelated")

SHARE_DEFINITION = (
    "Value share = the document's value divided by the sum of the positive values for this output; "
    "documents with negative values get no share and are listed as 'worked against this output'. "
    "Cumulative share runs down the ranking."
)
VALUE_DEFINITION = (
    "Value = In-Run Data Shapley: the decrease of the output's loss (nats per output token) that training "
    "on the document caused, summed over all training steps. Positive = the document made this output "
    "more likely."
)


@dataclass(frozen=True)
class PassagePair:
    """The best aligned passage of a training document against the output text."""

    output_text: str
    document_text: str
    document_start_char: int
    document_end_char: int
    similarity: float


@dataclass(frozen=True)
class VerbatimSpan:
    """A token span shared word for word by the output and a training document."""

    text: str
    n_tokens: int
    output_start_char: int
    output_end_char: int
    document_start_char: int
    document_end_char: int


@dataclass(frozen=True)
class Evidence:
    """Why a document may have shaped an output, with the scores behind its label."""

    label: str  # one of LABELS
    similarity: float  # best passage cosine similarity (embedding)
    longest_span_tokens: int
    span_coverage: float  # fraction of the output's tokens inside shared spans of >= the minimum length
    best_passage: PassagePair | None = None
    spans: tuple[VerbatimSpan, ...] = ()
    aligned_sentences: tuple[PassagePair, ...] = ()
    score: float = 0.0  # calibrated paraphrase score in [0, 1] (logistic over the features below)
    overlap: float = 0.0  # fraction of the output's distinct content words found in the best passage
    n_output_words: int = 0  # words of the output the spans and coverage are counted against
    bm25: float | None = None  # BM25 score of the document's best passage for the output (None: not computed)


@dataclass(frozen=True)
class RankedDocument:
    """One row of the table a reviewer reads."""

    rank: int
    doc_id: str
    source: str
    value: float | None  # None when the text is not an attributed target
    value_share: float | None
    cumulative_share: float | None
    evidence: Evidence
    specific_value: float | None = None  # combined order only: best chunk's value standardised (evidence.specific)


@dataclass(frozen=True)
class LedgerSummary:
    """How much of the target's measured loss decrease the values explain."""

    initial_loss: float
    final_loss: float
    measured_decrease: float
    attributed_total: float
    history_total: float
    explained_share: float | None  # attributed_total / measured_decrease (None if no decrease)


@dataclass(frozen=True)
class QueryResult:
    """The answer to: which training documents produced this output, and how much each contributed."""

    run_id: str
    text: str
    target_id: str | None
    attributed: bool
    rows: tuple[RankedDocument, ...]
    worked_against: tuple[RankedDocument, ...] = ()
    ledger: LedgerSummary | None = None
    value_order: int | None = None
    attribute_command: str | None = None  # shown when the text is not yet an attributed target
    notes: tuple[str, ...] = field(default_factory=tuple)
    share_definition: str = SHARE_DEFINITION
    value_definition: str = VALUE_DEFINITION
    embedder: str | None = None  # name of the sentence embedder behind the similarities
    latency_seconds: float | None = None  # time of the query itself (index already loaded)
    order: str = "value"  # how the rows are ordered: "value", "combined" (evidence.combine), "evidence" or
    # "approximate" (values estimated from the run's gradient sketches, provenance.sketch; not exact)
    approximate: bool = False  # value / share are sketch estimates for a text not attributed (docs/posthoc.md)


@dataclass(frozen=True)
class IndexInfo:
    """What `provenance index` built (or found up to date) in <run>/evidence/."""

    run_id: str
    path: str  # the evidence folder
    n_documents: int
    n_passages: int
    embedder: str
    embedder_sha256: str
    corpus_sha256: str
    index_type: str  # "flat-ip" (exact) or "hnsw-ip" (approximate)
    recall_at_10: float | None  # approximate index only: recall@10 against the exact search
    seconds: float
    up_to_date: bool = False  # True when an existing index matched and nothing was rebuilt
