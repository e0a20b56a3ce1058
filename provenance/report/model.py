"""The content of one report as typed data: the PDF draws it, the JSON sidecar serializes it.

Both are made from the same ``ReportData``, so the sidecar's numbers are the PDF's numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from provenance.evidence.schema import Evidence, LedgerSummary
from provenance.report.settings import ReportSettings


@dataclass(frozen=True)
class RunSummary:
    """What the title page and the appendix say about the run (from manifest.json and the tables)."""

    run_id: str
    path: str  # as given to the report (appears in the commands to re-run)
    status: str
    created: str | None
    format_version: int
    architecture: str | None
    model_shape: dict[str, Any]  # n_layer, n_head, n_embd, context_length (from the run's config)
    n_parameters: int | None  # elements of the stored weight tensors (tied weights counted once)
    model_sha256: dict[str, str]  # recorded weight/config hashes
    n_documents: int
    n_chunks: int | None
    corpus_sha256: str | None  # recorded in the manifest
    corpus_sha256_now: str  # recomputed from corpus.parquet's per-document hashes
    tokenizer_sha256: str | None
    vocab_size: int | None
    value_order: int | None
    value_sign: str | None
    value_unit: str | None
    seed: int | None
    versions: dict[str, str]
    config: dict[str, Any]


@dataclass(frozen=True)
class TargetInfo:
    """The output being explained."""

    target_id: str | None  # None for a free text that is not a registered target
    prompt: str
    text: str
    sha256: str | None  # recorded in targets.parquet
    sha256_now: str  # recomputed: sha256(prompt + NUL + text)
    registered: str | None


@dataclass(frozen=True)
class ReportRow:
    """One row of the ranked table (or of the worked-against table)."""

    rank: int
    doc_id: str
    source: str
    value: float | None
    share: float | None
    cumulative_share: float | None
    doc_sha256: str | None
    evidence: Evidence | None  # None when the run has no usable evidence index

    @property
    def label(self) -> str | None:
        return None if self.evidence is None else self.evidence.label

    @property
    def similarity(self) -> float | None:
        return None if self.evidence is None else self.evidence.similarity


@dataclass(frozen=True)
class Trajectory:
    """A document's value summed over the training steps up to each step (the recorded order)."""

    rank: int
    doc_id: str
    steps: tuple[int, ...]
    cumulative_value: tuple[float, ...]


@dataclass(frozen=True)
class FileHash:
    """One file of the chain of custody: the hash the manifest recorded and the hash it has now."""

    path: str
    recorded: str | None
    actual: str | None

    @property
    def status(self) -> str:
        if self.actual is None:
            return "missing"
        if self.recorded is None:
            return "not recorded"
        return "matches" if self.recorded == self.actual else "DIFFERS"


@dataclass(frozen=True)
class EvidenceStatus:
    """Whether the evidence columns are filled, and from which index."""

    available: bool
    message: str  # what the report says about it (why missing, how to build it)
    embedder: str | None = None
    embedder_sha256: str | None = None
    index_corpus_sha256: str | None = None
    thresholds_sha256: str | None = None
    index_type: str | None = None


@dataclass(frozen=True)
class TextPiece:
    """A window of a text as printed, with the highlighted (verbatim) ranges relative to the window."""

    text: str
    start: int  # character offset of the window in the full text
    end: int
    highlights: tuple[tuple[int, int], ...] = ()


@dataclass(frozen=True)
class AlignedPair:
    """An output sentence and the most similar sentence of the document's best passage."""

    output: TextPiece
    document: TextPiece
    similarity: float


@dataclass(frozen=True)
class Excerpt:
    """The evidence of one top document, side by side: the output and the document's best passage."""

    rank: int
    doc_id: str
    output: TextPiece
    output_length: int  # characters of the whole output (the window may be shorter)
    document: TextPiece | None  # None when the document's text is not in corpus.parquet
    document_length: int | None
    aligned: tuple[AlignedPair, ...] = ()


@dataclass(frozen=True)
class ReportData:
    """Everything one report shows."""

    settings: ReportSettings  # resolved: the timestamp is fixed
    tool_version: str
    run: RunSummary
    target: TargetInfo
    query_text: str  # the output text the evidence offsets refer to (QueryResult.text)
    attributed: bool
    rows: tuple[ReportRow, ...]
    worked_against: tuple[ReportRow, ...]
    n_positive: int
    n_negative: int
    n_zero: int
    ledger: LedgerSummary | None
    trajectories: tuple[Trajectory, ...]
    step_range: tuple[int, int] | None  # first and last training step recorded for this output (ledger)
    excerpts: tuple[Excerpt, ...]
    evidence: EvidenceStatus
    custody: tuple[FileHash, ...]
    manifest_sha256: str
    reproduce_command: str
    verify_command: str
    attribute_command: str | None
    notes: tuple[str, ...] = field(default_factory=tuple)
    share_definition: str = ""
    value_definition: str = ""
    fonts: dict[str, str] = field(default_factory=dict)

    @property
    def generated(self) -> str:
        return self.settings.timestamp or ""
