"""The combined ranking: copied sources first, then text match and evidence, the value deciding close calls.

Order, key by key:

1. the tier: ``copied`` (the evidence is ``verbatim`` *and* the output is largely copied: shared spans
   cover at least the calibrated ``verbatim_min_coverage`` of it, or one shared span is at least
   ``copied_min_span_words`` long), then ``related`` (every other nominated document labelled
   verbatim, paraphrase or topic), then ``unrelated`` (labelled unrelated), then documents the evidence
   did not nominate;
2. within a tier, ``evidence score + coverage_weight * span coverage + text_weight * relative BM25 +
   value_weight * relative specific value``. Relative BM25 is the document's BM25 score for the output
   (its best passage's, provenance.evidence.answer.document_bm25_scores) divided by the largest among the
   nominated documents; the relative specific value is the document's specific value
   (provenance.evidence.specific: its best chunk's value for this output, standardised against the run's
   other targets) divided by the largest among the nominated documents, negative values counted as 0;
   documents not nominated follow by specific value;
3. then, as in the evidence ranking, similarity, longest shared span, and doc id.

Why not the evidence label first (the first design): the label is a per-pair decision calibrated on
verses, and ranking by it lets one shared sentence decide. A single 9-word phrase labels a chapter
``verbatim`` although it covers a fifth of the output, and the opening sentence of a same-topic chapter
labels it ``paraphrase``; both then sat above the true source of a same-event rewrite whatever the value
said (docs/recovery.md). Now only a copied output outranks everything.

Why BM25 in the key (session 7): without it the order (evidence score + 3 x coverage + 0.5 x value) was,
on 60 same-topic targets it was never designed on, below plain BM25 (recall@1 0.817 against 0.833). The
evidence score is a per-pair paraphrase score calibrated on verses; BM25's corpus-wide term weighting
tells a chapter that shares the event's rare names and words from one that shares its style.

Where the numbers come from: ``copied`` uses the calibrated verbatim coverage threshold
(thresholds.json). ``copied_min_span_words`` (20), ``coverage_weight`` (0) and ``text_weight`` (20) were
fitted on *other* queries than the recovery benchmark's targets: the Matthew text of each hand-listed
gospel pericope that Mark tells too, queried for Mark's parallel chapter, and the other way round, own
chapter removed, evidence only (bench/recovery.py, ``evidence_order_fit`` in its JSON): recall@1 62/67
for every text weight from 0.5 up (61/67 without BM25), the lowest mean rank (1.72) at 20; the fit
chooses by recall@1, then mean rank. At that weight BM25 leads the order inside a tier: the evidence
score and the value reorder documents whose BM25 scores are close. ``value_weight`` (2.0) is the weight
the harder benchmark (4,444 documents) fits on all its targets given the rest; cross-fitted over two
folds there: same-topic recall@1 0.906 (BM25 0.906), paraphrase 0.967 (BM25 0.967). Judged, with these
defaults, on the 60 same-topic targets of ``bench/recovery.py --fresh``, which no weight was fitted on
(they showed, with the previous defaults, that BM25 was missing): same-topic recall@1 0.850 against
BM25's 0.833, mean rank 8.1 (BM25 3.0); paraphrase 0.983 (BM25 0.967). For same-topic outputs it is
about as good as plain text retrieval, not clearly better.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from provenance.errors import TargetError
from provenance.evidence.labels import load_thresholds
from provenance.evidence.schema import Evidence

TIERS = ("copied", "related", "unrelated", "not nominated")
COPIED, RELATED, UNRELATED, NOT_NOMINATED = range(len(TIERS))


def _calibrated_min_coverage() -> float:
    return load_thresholds().verbatim_min_coverage


@dataclass(frozen=True)
class CombineSettings:
    """How the evidence score, the BM25 score, the span coverage and the value make one order (see the module)."""

    value_weight: float = 2.0  # key margin the strongest value can overturn (0 = no value)
    coverage_weight: float = 0.0  # weight of the fraction of the output inside shared spans
    text_weight: float = 20.0  # weight of the BM25 score relative to the best nominated document's
    copied_min_span_words: int = 20  # one shared span this long puts a verbatim document in the copied tier
    copied_min_coverage: float = field(default_factory=_calibrated_min_coverage)  # thresholds.json verbatim

    def __post_init__(self) -> None:
        for name in ("value_weight", "coverage_weight", "text_weight"):
            weight = getattr(self, name)
            if not weight >= 0:  # also refuses NaN
                raise TargetError(f"CombineSettings.{name} must be >= 0 (got {weight})")
        if not self.copied_min_span_words >= 1:
            raise TargetError(
                f"CombineSettings.copied_min_span_words must be >= 1 (got {self.copied_min_span_words})"
            )
        if not 0 < self.copied_min_coverage <= 1:
            raise TargetError(
                f"CombineSettings.copied_min_coverage must be in (0, 1] (got {self.copied_min_coverage})"
            )


@dataclass(frozen=True)
class CombinedEntry:
    """One document's place in the combined ranking and the scores that put it there."""

    doc_id: str
    tier: int  # index into TIERS: COPIED, RELATED, UNRELATED or NOT_NOMINATED
    label: str | None  # the evidence label (None when not nominated)
    evidence_score: float | None  # calibrated paraphrase score of the evidence (None when not nominated)
    specific_value: float | None  # None when the document has no value for this output
    relative_value: float  # specific value / largest among the nominated documents, clipped to >= 0
    key: float  # the within-tier score (larger first)
    relative_bm25: float = 0.0  # BM25 score / largest among the nominated documents (0 when not nominated)


def evidence_tier(e: Evidence, settings: CombineSettings) -> int:
    """COPIED when the output is largely copied from the document, else RELATED or UNRELATED by label."""
    if e.label == "verbatim" and (
        e.span_coverage >= settings.copied_min_coverage or e.longest_span_tokens >= settings.copied_min_span_words
    ):
        return COPIED
    return UNRELATED if e.label == "unrelated" else RELATED


def combine_rankings(
    evidence: Mapping[str, Evidence],
    specific: Mapping[str, float],
    settings: CombineSettings = CombineSettings(),
) -> list[CombinedEntry]:
    """All documents of ``evidence`` (the nominated ones) and ``specific`` (doc id -> specific value), in
    combined order (best first)."""
    nominated_values = [max(float(specific[d]), 0.0) for d in evidence if d in specific]
    scale = max(nominated_values, default=0.0)
    if scale <= 0:  # no nominated document has a positive specific value: the value cannot reorder them
        scale = 1.0

    def relative(doc_id: str) -> float:
        return max(float(specific[doc_id]), 0.0) / scale if doc_id in specific else 0.0

    def text_score(e: Evidence) -> float:
        if e.bm25 is None and settings.text_weight > 0:
            raise TargetError("combine_rankings: evidence without a BM25 score (Evidence.bm25 is None); build it "
                              "with provenance.evidence.answer.candidate_evidence, or pass text_weight=0")
        return max(e.bm25 or 0.0, 0.0)

    text_scale = max((text_score(e) for e in evidence.values()), default=0.0) or 1.0
    entries: list[tuple[tuple, CombinedEntry]] = []
    for doc_id, e in evidence.items():
        rel = relative(doc_id)
        rel_text = text_score(e) / text_scale
        key = (e.score + settings.coverage_weight * e.span_coverage + settings.value_weight * rel
               + settings.text_weight * rel_text)
        entry = CombinedEntry(doc_id, evidence_tier(e, settings), e.label, e.score,
                              float(specific[doc_id]) if doc_id in specific else None, rel, key, rel_text)
        entries.append(((entry.tier, -key, -e.similarity, -e.longest_span_tokens, doc_id), entry))
    for doc_id, value in specific.items():
        if doc_id in evidence:
            continue
        entry = CombinedEntry(doc_id, NOT_NOMINATED, None, None, float(value), relative(doc_id), float(value))
        entries.append(((NOT_NOMINATED, -float(value), 0.0, 0, doc_id), entry))
    entries.sort(key=lambda pair: pair[0])
    return [entry for _, entry in entries]
