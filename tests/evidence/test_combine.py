"""Target-specific values (evidence.specific) and the combined ranking (evidence.combine), by hand-worked
numbers, and `query(order="combined")` on the fixture run."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from provenance.errors import RunDirectoryError, TargetError
from provenance.evidence import query
from provenance.evidence.combine import NOT_NOMINATED, CombineSettings, combine_rankings
from provenance.evidence.labels import LABEL_ORDER
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


def _evidence(label: str, score: float, similarity: float = 0.5, longest: int = 0) -> Evidence:
    return Evidence(label=label, similarity=similarity, longest_span_tokens=longest, span_coverage=0.0, score=score)


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
def test_weight_zero_is_the_evidence_order_then_the_rest_by_value():
    evidence = {
        "p_low": _evidence("paraphrase", 0.70),
        "v": _evidence("verbatim", 0.99),
        "p_high": _evidence("paraphrase", 0.90),
        "topic": _evidence("topic", 0.30),
    }
    specific = {"p_low": 9.0, "v": 0.0, "p_high": 1.0, "topic": 5.0, "outside_a": 2.0, "outside_b": 7.0}
    order = combine_rankings(evidence, specific, CombineSettings(value_weight=0.0))
    assert [e.doc_id for e in order] == ["v", "p_high", "p_low", "topic", "outside_b", "outside_a"]
    assert order[-1].tier == NOT_NOMINATED and order[-1].label is None and order[-1].evidence_score is None
    assert order[0].tier == LABEL_ORDER["verbatim"]


def test_value_reorders_near_ties_inside_a_label_only():
    evidence = {
        "v": _evidence("verbatim", 0.95),
        "p_a": _evidence("paraphrase", 0.90),
        "p_b": _evidence("paraphrase", 0.85),
        "p_far": _evidence("paraphrase", 0.40),
    }
    specific = {"v": 0.0, "p_a": 1.0, "p_b": 4.0, "p_far": 4.0}  # largest nominated: 4 -> relative 1
    order = combine_rankings(evidence, specific, CombineSettings(value_weight=0.1))
    # p_b: 0.85 + 0.1 * 1 = 0.95 beats p_a: 0.90 + 0.1 * 0.25 = 0.925; p_far (0.50) stays behind
    assert [e.doc_id for e in order] == ["v", "p_b", "p_a", "p_far"]
    assert order[1].relative_value == 1.0 and order[2].relative_value == 0.25
    assert order[1].key == pytest.approx(0.95)
    # however large the weight, no document passes one with a better label
    huge = combine_rankings(evidence, specific, CombineSettings(value_weight=100.0))
    assert huge[0].doc_id == "v"


def test_negative_values_count_as_zero_and_missing_values_too():
    evidence = {"a": _evidence("topic", 0.50), "b": _evidence("topic", 0.49), "c": _evidence("topic", 0.48)}
    order = combine_rankings(evidence, {"a": -3.0, "b": 2.0}, CombineSettings(value_weight=0.05))
    assert [e.doc_id for e in order] == ["b", "a", "c"]  # b: 0.49 + 0.05; a and c: + 0
    assert order[1].relative_value == 0.0 and order[2].specific_value is None


def test_settings_refuse_a_negative_or_nan_weight():
    for bad in (-0.1, float("nan")):
        with pytest.raises(TargetError, match="value_weight"):
            CombineSettings(value_weight=bad)


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
    tiers = [LABEL_ORDER[r.evidence.label] for r in result.rows]
    assert tiers == sorted(tiers)  # the evidence label stays the first key
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
