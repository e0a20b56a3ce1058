"""Query on a fixture run, with and without attribution; bad inputs; evidence for one pair."""

from __future__ import annotations

import pytest

from provenance.errors import EvidenceIndexError, TargetError
from provenance.evidence import evidence_for, query
from provenance.evidence.answer import MAX_QUERY_CHARS

from .fixture_run import DOCS, LEDGER_ATTRIBUTED, LEDGER_HISTORY, LEDGER_LOSSES, TARGET_ID, TARGET_TEXT, VALUES, UNATTRIBUTED_TARGET_ID


def test_attributed_target_rows_follow_values(indexed_run, loaded_index):
    result = query(indexed_run, target_id=TARGET_ID, index=loaded_index)
    assert result.attributed and result.target_id == TARGET_ID
    assert result.attribute_command is None
    positive = sorted((v, d) for d, v in VALUES.items() if v > 0)[::-1]
    assert [r.doc_id for r in result.rows] == [d for _, d in positive]
    assert [r.rank for r in result.rows] == [1, 2, 3]
    total = sum(v for v, _ in positive)
    assert [r.value_share for r in result.rows] == pytest.approx([v / total for v, _ in positive])
    assert [r.cumulative_share for r in result.rows] == pytest.approx([0.6, 0.9, 1.0])
    assert [r.doc_id for r in result.worked_against] == ["sports:football", "tech:databases"]
    assert all(r.value < 0 and r.value_share == 0.0 for r in result.worked_against)
    assert result.value_order == 1


def test_attributed_rows_carry_evidence(indexed_run, loaded_index):
    rows = {r.doc_id: r for r in query(indexed_run, target_id=TARGET_ID, index=loaded_index).rows}
    copied = rows["bible:kjv-genesis"].evidence
    assert copied.label == "verbatim"
    assert copied.longest_span_tokens == len(TARGET_TEXT.split())  # the whole target, word for word
    assert copied.span_coverage == 1.0
    span = copied.spans[0]
    doc_text = DOCS["bible:kjv-genesis"][1]
    assert doc_text[span.document_start_char : span.document_end_char] == TARGET_TEXT.rstrip(".")
    assert TARGET_TEXT[span.output_start_char : span.output_end_char] == span.text
    assert copied.aligned_sentences  # top rows get sentence alignment
    assert copied.aligned_sentences[0].output_text.startswith("In the beginning God created")

    paraphrased = rows["bible:web-genesis"].evidence
    assert paraphrased.label in ("paraphrase", "verbatim")
    assert paraphrased.similarity > 0.8
    assert paraphrased.best_passage.document_text.startswith("In the beginning, God created the heavens")
    assert rows["notes:creation"].evidence.label in ("topic", "unrelated")
    assert rows["notes:creation"].evidence.longest_span_tokens == 0


def test_ledger_summary_from_ledger(indexed_run, loaded_index):
    ledger = query(indexed_run, target_id=TARGET_ID, index=loaded_index).ledger
    assert ledger.initial_loss == LEDGER_LOSSES[0] and ledger.final_loss == LEDGER_LOSSES[-1]
    assert ledger.measured_decrease == pytest.approx(LEDGER_LOSSES[0] - LEDGER_LOSSES[-1])
    assert ledger.attributed_total == pytest.approx(sum(LEDGER_ATTRIBUTED[:-1]))
    assert ledger.history_total == pytest.approx(sum(LEDGER_HISTORY[:-1]))
    assert ledger.explained_share == pytest.approx(1.2 / 1.5)


def test_text_equal_to_a_registered_target_is_attributed(indexed_run, loaded_index):
    result = query(indexed_run, text="  " + TARGET_TEXT + "\n", index=loaded_index)
    assert result.attributed and result.target_id == TARGET_ID


def test_unattributed_text_is_ranked_by_evidence(indexed_run, loaded_index):
    text = "And God said, Let there be light: and there was light."
    result = query(indexed_run, text=text, index=loaded_index)
    assert not result.attributed and result.target_id is None
    assert all(r.value is None and r.value_share is None and r.cumulative_share is None for r in result.rows)
    assert "provenance attribute --run" in result.attribute_command
    top = result.rows[0]
    assert top.doc_id == "bible:kjv-genesis" and top.evidence.label == "verbatim"
    assert top.evidence.longest_span_tokens == 11
    labels = [r.evidence.label for r in result.rows]
    order = {"verbatim": 0, "paraphrase": 1, "topic": 2, "unrelated": 3}
    assert [order[x] for x in labels] == sorted(order[x] for x in labels)  # label first, then score
    assert {r.doc_id for r in result.rows if r.evidence.label == "unrelated"} >= {"sports:football", "tech:databases"}
    assert result.latency_seconds is not None and result.latency_seconds > 0


def test_registered_target_without_values_says_so(indexed_run, loaded_index):
    result = query(indexed_run, target_id=UNATTRIBUTED_TARGET_ID, index=loaded_index)
    assert not result.attributed and result.target_id == UNATTRIBUTED_TARGET_ID
    assert any("no values yet" in note for note in result.notes)
    assert result.rows[0].doc_id == "cooking:bread"


def test_top_k_limits_rows(indexed_run, loaded_index):
    assert len(query(indexed_run, text="bread dough yeast", top_k=2, index=loaded_index).rows) == 2


@pytest.mark.parametrize("bad", ["", "   \n\t  ", "\x00\x01\x02\x1b\x7f", "\u200b\u200b", "... --- !!!"])
def test_texts_without_words_are_refused(indexed_run, loaded_index, bad):
    with pytest.raises(TargetError, match="empty or holds no words"):
        query(indexed_run, text=bad, index=loaded_index)


def test_one_megabyte_text_is_truncated_not_crashed(indexed_run, loaded_index):
    text = ("In the beginning God created the heaven and the earth. " * 20_000)[: 1 << 20]
    result = query(indexed_run, text=text, index=loaded_index, align_top=1)
    assert len(result.text) <= MAX_QUERY_CHARS
    assert any("truncated" in note for note in result.notes)
    assert result.rows[0].doc_id == "bible:kjv-genesis"


def test_control_characters_are_removed_and_noted(indexed_run, loaded_index):
    result = query(indexed_run, text="Knead\x00 the dough\x1b for ten minutes", index=loaded_index)
    assert result.text == "Knead the dough for ten minutes"
    assert any("control" in note for note in result.notes)


def test_unknown_target_and_argument_errors(indexed_run, loaded_index):
    with pytest.raises(TargetError, match="not registered"):
        query(indexed_run, target_id="no-such-target", index=loaded_index)
    with pytest.raises(TargetError, match="exactly one"):
        query(indexed_run, text="a", target_id=TARGET_ID, index=loaded_index)
    with pytest.raises(TargetError, match="exactly one"):
        query(indexed_run, index=loaded_index)
    with pytest.raises(TargetError, match="top_k"):
        query(indexed_run, text="bread", top_k=0, index=loaded_index)


def test_index_of_another_run_is_refused(tmp_path, loaded_index):
    with pytest.raises(EvidenceIndexError, match="belongs to run"):
        query(tmp_path / "other-run", text="bread", index=loaded_index)


def test_query_without_index_names_the_fix(tmp_path):
    from .fixture_run import write_run

    run = write_run(tmp_path / "no-index")
    with pytest.raises(EvidenceIndexError, match="provenance index --run"):
        query(run, text="bread")


def test_evidence_for_one_pair(encoder):
    doc = "Notes. The quick brown fox jumps over the lazy dog near the river bank. Other things follow here."
    evidence = evidence_for("A quick brown fox jumps over the lazy dog.", doc, encoder=encoder)
    assert evidence.label == "verbatim"
    assert evidence.longest_span_tokens == 8
    span = evidence.spans[0]
    assert doc[span.document_start_char : span.document_end_char] == "quick brown fox jumps over the lazy dog"
    assert evidence.aligned_sentences[0].document_text.startswith("The quick brown fox")
    unrelated = evidence_for("Quarterly revenue grew by four percent.", doc, encoder=encoder)
    assert unrelated.label == "unrelated" and unrelated.longest_span_tokens == 0


def test_evidence_for_reuses_index_passages(loaded_index):
    evidence = evidence_for(TARGET_TEXT, "", index=loaded_index, doc_id="bible:web-genesis")
    assert evidence.best_passage.document_text.startswith("In the beginning, God created")
    with pytest.raises(TargetError, match="not in run"):
        evidence_for(TARGET_TEXT, "", index=loaded_index, doc_id="missing:doc")
    with pytest.raises(TargetError, match="empty"):
        evidence_for(" \x00 ", "text", index=loaded_index, doc_id="bible:web-genesis")


def test_document_bm25_scores_are_the_best_passage_lucene_bm25(loaded_index):
    """Against BM25 written out by hand (Lucene's variant, without the (k1 + 1) factor; bm25s' defaults
    k1 = 1.5, b = 0.75) over the index's passages, a document's score = its best passage's."""
    import math

    import bm25s
    import numpy as np

    from provenance.evidence.answer import document_bm25_scores

    text = "God created the heaven and the earth, and the match was won in the last minute"
    ix = loaded_index
    passage_docs = ix.passage_doc.tolist()
    texts = [ix.texts[d][a:b] for d, a, b in zip(passage_docs, ix.passage_start, ix.passage_end)]
    docs_tokens = bm25s.tokenize(texts, stopwords="en", show_progress=False, return_ids=False)
    query_tokens = bm25s.tokenize([text], stopwords="en", show_progress=False, return_ids=False)[0]
    n = len(docs_tokens)
    avgdl = sum(len(t) for t in docs_tokens) / n
    expected = np.zeros(len(loaded_index.doc_ids))
    for tokens, d in zip(docs_tokens, passage_docs):
        score = 0.0
        for term in set(query_tokens):
            df = sum(term in t for t in docs_tokens)
            tf = tokens.count(term)
            if df and tf:
                idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
                score += idf * tf / (tf + 1.5 * (1 - 0.75 + 0.75 * len(tokens) / avgdl))
        expected[d] = max(expected[d], score)
    got = document_bm25_scores(loaded_index, text)
    assert expected.max() > 0 and (expected == 0).any()  # the check covers scored and unscored documents
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    assert not document_bm25_scores(loaded_index, "zzzz qqqq").any()  # no indexed word: all zero
