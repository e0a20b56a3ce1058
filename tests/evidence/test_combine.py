"""Target-specific values (evidence.specific) and the combined ranking (evidence.combine), by hand-worked
numbers, and `query(order="combined")` on the fixture run."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from provenance.errors import RunDirectoryError, TargetError
from provenance.evidence import query
from provenance.evidence.combine import (
    COPIED, NOT_NOMINATED, RELATED, UNRELATED, CombineSettings, combine_rankings, evidence_tier,
)
from provenance.evidence.labels import THRESHOLDS_PATH
from provenance.evidence.schema import Evidence
from provenance.evidence.specific import (
    ChunkValues,
    chunk_values_from_contributions,
    load_chunk_values,
    specific_chunk_values,
    specific_values,
)
from provenance.store.tables import write_table

from .fixture_run import DOCS, TARGET_ID, VALUES


# -- specific values ------------------------------------------------------------------------------------
def test_chunk_values_sum_steps_per_chunk_and_target():
    contributions = pd.DataFrame({
        "step": [1, 2, 1, 1, 2],
        "doc_id": ["a", "a", "a", "b", "b"],
        "chunk_id": [0, 0, 0, 1, 1],
        "target_id": ["t", "t", "u", "t", "t"],
        "value_first_order": [1.0, 2.0, 0.5, -1.0, 0.25],
    })
    cv = chunk_values_from_contributions(contributions)
    assert cv.target_ids == ("t", "u") and cv.chunk_docs == ("a", "b")
    assert cv.matrix.tolist() == [[3.0, 0.5], [-0.75, 0.0]]  # chunk 1 never seen for u: 0


def test_chunk_values_refuse_a_missing_column():
    with pytest.raises(RunDirectoryError, match="value_first_order"):
        chunk_values_from_contributions(pd.DataFrame({"doc_id": [], "chunk_id": [], "target_id": []}))


def test_specific_value_is_a_z_score_against_the_other_targets():
    cv = ChunkValues(
        target_ids=("t", "r1", "r2", "r3"),
        chunk_docs=("a", "b", "c"),
        matrix=np.array([
            [4.0, 1.0, 2.0, 3.0],  # others: mean 2, std sqrt(2/3)
            [5.0, 5.0, 5.0, 5.0],  # the others do not vary: 0 (not a division by zero)
            [-1.0, 0.0, 1.0, 2.0],  # mean 1, std sqrt(2/3)
        ]),
    )
    z = specific_chunk_values(cv, "t", min_reference=3)
    assert z == pytest.approx([2.0 / math.sqrt(2 / 3), 0.0, -2.0 / math.sqrt(2 / 3)])
    # an explicit reference set: only r1 and r2 (mean 1.5, std 0.5 for chunk a)
    assert specific_chunk_values(cv, "t", reference=["r1", "r2"], min_reference=2)[0] == pytest.approx(5.0)


def test_specific_value_removes_the_generic_part_of_a_long_document():
    """A long document whose many chunks help every target a little outscores the source by raw value
    (the sum); standardised against the other targets, the source comes first."""
    n_targets = 21
    generic = np.full((10, n_targets), 0.3) + 0.01 * np.arange(n_targets)  # 10 chunks, help every target
    source = np.full((1, n_targets), 0.0)
    source[0, 0] = 1.0  # helps target 0 only
    cv = ChunkValues(tuple(f"t{i}" for i in range(n_targets)), ("long",) * 10 + ("source",),
                     np.vstack([generic, source]))
    raw_sum = pd.Series(cv.matrix[:, 0], index=cv.chunk_docs).groupby(level=0).sum()
    assert raw_sum["long"] > raw_sum["source"]
    ranked = specific_values(cv, "t0")
    assert list(ranked.index) == ["source", "long"]
    assert ranked.name == "specific_value"


def test_specific_value_errors_name_the_fix():
    cv = ChunkValues(("t", "u"), ("a",), np.array([[1.0, 2.0]]))
    with pytest.raises(TargetError, match="at least 20 other targets"):
        specific_values(cv, "t")
    with pytest.raises(TargetError, match="attribute it first"):
        specific_values(cv, "missing", min_reference=1)


# -- the combined ranking --------------------------------------------------------------------------------
def _ev(label: str, score: float, coverage: float = 0.0, longest: int = 0, similarity: float = 0.5,
        bm25: float = 0.0) -> Evidence:
    return Evidence(label=label, similarity=similarity, longest_span_tokens=longest, span_coverage=coverage,
                    score=score, bm25=bm25)


PLAIN = dict(copied_min_coverage=0.5, copied_min_span_words=12)  # explicit, so the tests do not read thresholds.json


def _ids(order) -> list[str]:
    return [e.doc_id for e in order]


def test_only_a_largely_copied_output_outranks_everything():
    """One shared 9-word phrase labels a chapter verbatim, but it does not put it above the better-scored
    documents; half the output covered, or one 12-word span, does."""
    evidence = {
        "phrase": _ev("verbatim", 0.10, coverage=0.20, longest=9),  # the label's span rule, nothing more
        "source": _ev("topic", 0.50, coverage=0.20, longest=4),
        "half": _ev("verbatim", 0.05, coverage=0.60, longest=5),  # the label's coverage rule
        "long": _ev("verbatim", 0.02, coverage=0.25, longest=12),
    }
    order = combine_rankings(evidence, {}, CombineSettings(value_weight=0.0, coverage_weight=0.0, **PLAIN))
    assert _ids(order) == ["half", "long", "source", "phrase"]  # copied by score (0.05, 0.02), then the rest
    assert [e.tier for e in order] == [COPIED, COPIED, RELATED, RELATED]
    # a paraphrase score alone, however high, never makes a document copied
    order = combine_rankings({"p": _ev("paraphrase", 0.99, coverage=0.45, longest=11), **evidence}, {},
                             CombineSettings(value_weight=0.0, coverage_weight=0.0, **PLAIN))
    assert order[2].doc_id == "p" and order[2].tier == RELATED


def test_without_coverage_and_value_the_related_tier_keeps_the_evidence_order():
    """The paraphrase label is a threshold on the score, so ordering paraphrase and topic documents by
    score alone is the evidence's order (label, then score)."""
    evidence = {
        "t_low": _ev("topic", 0.30),
        "p_low": _ev("paraphrase", 0.70),
        "t_high": _ev("topic", 0.60),
        "p_high": _ev("paraphrase", 0.90),
        "u": _ev("unrelated", 0.65, similarity=0.1),
    }
    specific = {"t_low": 9.0, "p_low": 0.0, "outside_a": 2.0, "outside_b": 7.0}
    order = combine_rankings(evidence, specific, CombineSettings(value_weight=0.0, coverage_weight=0.0, **PLAIN))
    assert _ids(order) == ["p_high", "p_low", "t_high", "t_low", "u", "outside_b", "outside_a"]
    assert [e.tier for e in order] == [RELATED] * 4 + [UNRELATED] + [NOT_NOMINATED] * 2
    assert order[-1].label is None and order[-1].evidence_score is None


def test_value_crosses_the_paraphrase_topic_boundary_by_at_most_its_weight():
    specific = {"para": 1.0, "topic": 4.0, "far": 4.0}  # largest nominated 4: relative 0.25, 1, 1
    evidence = {"para": _ev("paraphrase", 0.90), "topic": _ev("topic", 0.55), "far": _ev("topic", 0.30)}
    order = combine_rankings(evidence, specific, CombineSettings(value_weight=0.5, coverage_weight=0.0, **PLAIN))
    # topic 0.55 + 0.5 = 1.05 passes para 0.90 + 0.125 = 1.025; far 0.30 + 0.5 = 0.80 does not
    assert _ids(order) == ["topic", "para", "far"]
    assert order[0].key == pytest.approx(1.05) and order[1].relative_value == 0.25
    # a margin larger than the weight stands: 0.99 + 0 against 0.45 + 0.5
    settings = CombineSettings(value_weight=0.5, coverage_weight=0.0, **PLAIN)
    order = combine_rankings({"para": _ev("paraphrase", 0.99), "topic": _ev("topic", 0.45)},
                             {"para": -1.0, "topic": 2.0}, settings)
    assert _ids(order) == ["para", "topic"]


def test_shared_span_coverage_counts_with_its_weight():
    evidence = {"similar": _ev("paraphrase", 0.70), "spans": _ev("topic", 0.40, coverage=0.20, longest=8)}
    no_value = dict(value_weight=0.0, **PLAIN)
    order = combine_rankings(evidence, {}, CombineSettings(coverage_weight=1.0, **no_value))
    assert _ids(order) == ["similar", "spans"]  # 0.40 + 0.20 < 0.70
    # 0.40 + 3 x 0.20 = 1.00 > 0.70
    order = combine_rankings(evidence, {}, CombineSettings(coverage_weight=3.0, **no_value))
    assert _ids(order) == ["spans", "similar"] and order[0].key == pytest.approx(1.0)


def test_bm25_counts_relative_to_the_best_nominated_document():
    evidence = {"similar": _ev("paraphrase", 0.70, bm25=4.0), "words": _ev("topic", 0.50, bm25=16.0),
                "none": _ev("topic", 0.65)}
    no_value = dict(value_weight=0.0, coverage_weight=0.0, **PLAIN)
    assert _ids(combine_rankings(evidence, {}, CombineSettings(text_weight=0.0, **no_value))) == [
        "similar", "none", "words"]
    # relative BM25: 4/16 = 0.25 and 16/16 = 1; with weight 0.3: 0.70 + 0.075 = 0.775 < 0.50 + 0.3 = 0.80
    order = combine_rankings(evidence, {}, CombineSettings(text_weight=0.3, **no_value))
    assert _ids(order) == ["words", "similar", "none"]
    assert order[0].key == pytest.approx(0.80) and order[1].relative_bm25 == pytest.approx(0.25)
    assert order[2].relative_bm25 == 0.0
    # the scale is the nominated documents' largest score: doubling every score changes nothing
    doubled = {d: _ev(e.label, e.score, bm25=2 * e.bm25) for d, e in evidence.items()}
    assert _ids(combine_rankings(doubled, {}, CombineSettings(text_weight=0.3, **no_value))) == _ids(order)


def test_evidence_without_a_bm25_score_is_refused_when_the_text_term_counts():
    evidence = {"a": Evidence(label="topic", similarity=0.5, longest_span_tokens=0, span_coverage=0.0, score=0.5)}
    with pytest.raises(TargetError, match="Evidence.bm25 is None"):
        combine_rankings(evidence, {}, CombineSettings(text_weight=1.0, **PLAIN))
    assert _ids(combine_rankings(evidence, {}, CombineSettings(text_weight=0.0, **PLAIN))) == ["a"]


def test_no_weight_moves_a_document_out_of_its_tier():
    evidence = {"copy": _ev("verbatim", 0.30, coverage=0.9, longest=30), "rel": _ev("topic", 0.6, coverage=0.3),
                "unrel": _ev("unrelated", 0.2, similarity=0.1)}
    specific = {"copy": 0.0, "rel": 0.0, "unrel": 5.0, "outside": 100.0}
    order = combine_rankings(evidence, specific, CombineSettings(value_weight=100.0, coverage_weight=100.0,
                                                                 text_weight=100.0, **PLAIN))
    assert _ids(order) == ["copy", "rel", "unrel", "outside"]


def test_negative_values_count_as_zero_and_missing_values_too():
    evidence = {"a": _ev("topic", 0.50), "b": _ev("topic", 0.49), "c": _ev("topic", 0.48)}
    order = combine_rankings(evidence, {"a": -3.0, "b": 2.0}, CombineSettings(value_weight=0.05, **PLAIN))
    assert _ids(order) == ["b", "a", "c"]  # b: 0.49 + 0.05; a and c: + 0
    assert order[1].relative_value == 0.0 and order[2].specific_value is None


def test_settings_refuse_bad_values():
    for bad in (-0.1, float("nan")):
        with pytest.raises(TargetError, match="value_weight"):
            CombineSettings(value_weight=bad)
        with pytest.raises(TargetError, match="coverage_weight"):
            CombineSettings(coverage_weight=bad)
        with pytest.raises(TargetError, match="text_weight"):
            CombineSettings(text_weight=bad)
    with pytest.raises(TargetError, match="copied_min_span_words"):
        CombineSettings(copied_min_span_words=0)
    for bad in (0.0, 1.5, float("nan")):
        with pytest.raises(TargetError, match="copied_min_coverage"):
            CombineSettings(copied_min_coverage=bad)


def test_copied_tier_uses_the_calibrated_verbatim_coverage():
    shipped = json.loads(THRESHOLDS_PATH.read_text(encoding="utf-8"))["verbatim"]["min_coverage"]
    assert CombineSettings().copied_min_coverage == shipped


# -- query(order="combined") -----------------------------------------------------------------------------
def _fixture_chunk_values(n_targets: int = 21) -> ChunkValues:
    """One chunk per fixture document; the WEB paraphrase helps the target more than the others."""
    docs = list(DOCS)
    rng = np.random.default_rng(0)
    matrix = rng.normal(0.0, 0.01, size=(len(docs), n_targets))
    matrix[docs.index("bible:web-genesis"), 0] = 1.0
    return ChunkValues((TARGET_ID, *(f"other-{i}" for i in range(1, n_targets))), tuple(docs), matrix)


def test_query_in_combined_order(indexed_run, loaded_index):
    cv = _fixture_chunk_values()
    result = query(indexed_run, target_id=TARGET_ID, index=loaded_index, order="combined", chunk_values=cv,
                   align_top=0)
    assert result.order == "combined" and result.attributed
    assert any("combined order" in note for note in result.notes)
    tiers = [evidence_tier(r.evidence, CombineSettings()) for r in result.rows]
    assert tiers == sorted(tiers)  # the tier (copied, related, unrelated) stays the first key
    assert result.rows[0].doc_id == "bible:kjv-genesis"  # contains the target word for word
    specific = specific_values(cv, TARGET_ID)
    positive = sum(v for v in VALUES.values() if v > 0)
    cumulative = 0.0
    for position, row in enumerate(result.rows, start=1):
        assert row.rank == position
        assert row.specific_value == pytest.approx(specific[row.doc_id])
        assert row.value == pytest.approx(VALUES[row.doc_id])  # the raw value, not the specific one
        cumulative += max(VALUES[row.doc_id], 0.0) / positive
        assert row.cumulative_share == pytest.approx(cumulative)
    assert {r.doc_id for r in result.worked_against} == {"sports:football", "tech:databases"}
    assert query(indexed_run, target_id=TARGET_ID, index=loaded_index).order == "value"


def test_query_combined_needs_contributions_and_a_known_order(indexed_run, loaded_index):
    with pytest.raises(RunDirectoryError, match="contributions.parquet is missing"):
        query(indexed_run, target_id=TARGET_ID, index=loaded_index, order="combined")
    with pytest.raises(TargetError, match="order must be one of"):
        query(indexed_run, target_id=TARGET_ID, index=loaded_index, order="shapley")


def test_chunk_values_load_from_the_run(run_copy):
    rows = [
        {"step": step, "doc_id": doc, "chunk_id": chunk, "target_id": target, "value_first_order": value,
         "value_second_order": None}
        for step in (1, 2)
        for chunk, doc in enumerate(DOCS)
        for target, value in ((TARGET_ID, 0.5 * chunk), ("other", 1.0))
    ]
    write_table(run_copy / "contributions.parquet", pd.DataFrame(rows), "contributions")
    cv = load_chunk_values(run_copy)
    assert cv.chunk_docs == tuple(DOCS)
    assert cv.matrix[:, cv.column(TARGET_ID)].tolist() == [1.0 * c for c in range(len(DOCS))]
    assert cv.matrix[:, cv.column("other")].tolist() == [2.0] * len(DOCS)
