"""The combined ranking: the evidence finds and labels the candidates, the value confirms or reorders them.

Order, key by key:

1. the evidence label: verbatim, paraphrase, topic, unrelated; documents the evidence did not nominate
   come after all nominated ones;
2. within a label, ``evidence score + value_weight * relative specific value``, where the relative
   specific value is the document's specific value (provenance.evidence.specific: its best chunk's value
   for this output, standardised against the run's other targets) divided by the largest among the
   nominated documents, negative values counted as 0; documents not nominated follow by specific value;
3. then, as in the evidence ranking, similarity, longest shared span, and doc id.

``value_weight`` is the evidence-score margin the strongest value can overturn; with 0 this is exactly
the evidence ranking. A weighted sum of value and evidence ranks (reciprocal-rank fusion) was measured to
dilute the evidence (docs/recovery.md: paraphrase recall@1 1.0 -> 0.63); keeping the label first and
letting the value act only inside a label, by a bounded amount, cannot move a document past a
better-labelled one. The default weight was fitted on the recovery benchmark's targets (held-out figures
in docs/recovery.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from provenance.errors import TargetError
from provenance.evidence.labels import LABEL_ORDER
from provenance.evidence.schema import Evidence

NOT_NOMINATED = len(LABEL_ORDER)  # the tier of documents the evidence did not nominate


@dataclass(frozen=True)
class CombineSettings:
    """How much the value may reorder documents of the same evidence label (0 = the evidence ranking)."""

    value_weight: float = 0.1

    def __post_init__(self) -> None:
        if not self.value_weight >= 0:  # also refuses NaN
            raise TargetError(f"CombineSettings.value_weight must be >= 0 (got {self.value_weight})")


@dataclass(frozen=True)
class CombinedEntry:
    """One document's place in the combined ranking and the scores that put it there."""

    doc_id: str
    tier: int  # LABEL_ORDER of the evidence label; NOT_NOMINATED when the evidence did not assess it
    label: str | None  # the evidence label (None when not nominated)
    evidence_score: float | None  # calibrated paraphrase score of the evidence (None when not nominated)
    specific_value: float | None  # None when the document has no value for this output
    relative_value: float  # specific value / largest among the nominated documents, clipped to >= 0
    key: float  # the within-tier score (larger first)


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

    entries: list[tuple[tuple, CombinedEntry]] = []
    for doc_id, e in evidence.items():
        rel = relative(doc_id)
        key = e.score + settings.value_weight * rel
        entry = CombinedEntry(doc_id, LABEL_ORDER[e.label], e.label, e.score,
                              float(specific[doc_id]) if doc_id in specific else None, rel, key)
        entries.append(((entry.tier, -key, -e.similarity, -e.longest_span_tokens, doc_id), entry))
    for doc_id, value in specific.items():
        if doc_id in evidence:
            continue
        entry = CombinedEntry(doc_id, NOT_NOMINATED, None, None, float(value), relative(doc_id), float(value))
        entries.append(((NOT_NOMINATED, -float(value), 0.0, 0, doc_id), entry))
    entries.sort(key=lambda pair: pair[0])
    return [entry for _, entry in entries]
