"""Verbatim spans: hand-made cases with known longest spans and positions, and a brute-force check."""

from __future__ import annotations

import numpy as np
import pytest

from provenance.evidence.spans import NgramIndex, shared_spans
from provenance.evidence.text import Words, words


def _words_of(ids: list[int]) -> Words:
    hashes = np.array(ids, dtype=np.uint64) * np.uint64(2654435761) + np.uint64(17)
    pos = np.arange(len(ids), dtype=np.int64)
    return Words(hashes, pos, pos + 1)


def test_known_longest_span_and_positions():
    out = "the quick brown fox jumps over the lazy dog"
    doc = "Yesterday I saw the quick brown fox jumps over a fence."
    match = shared_spans(words(out), words(doc), 4)
    assert match.longest == 6
    span = match.spans[0]
    assert (span.out_start, span.doc_start, span.length) == (0, 3, 6)
    ow, dw = words(out), words(doc)
    o_start, o_end = ow.char_range(span.out_start, span.out_start + span.length)
    d_start, d_end = dw.char_range(span.doc_start, span.doc_start + span.length)
    assert out[o_start:o_end] == "the quick brown fox jumps over"
    assert doc[d_start:d_end] == "the quick brown fox jumps over"
    assert (d_start, d_end) == (16, 46)  # "Yesterday I saw " is 16 characters
    assert match.coverage == pytest.approx(6 / 9)


def test_case_and_punctuation_do_not_break_a_span():
    match = shared_spans(words("The Quick, brown -- FOX jumps!"), words("the quick brown fox jumps"), 4)
    assert match.longest == 5
    assert match.coverage == 1.0


def test_spans_shorter_than_the_minimum_are_not_reported():
    match = shared_spans(words("one two three alpha beta gamma delta"), words("one two three x alpha beta y"), 4)
    assert match.longest == 0
    assert match.spans == ()
    assert match.coverage == 0.0


def test_two_spans_coverage_and_order():
    out = "a b c d e X f g h i j k Y"  # 13 words; spans "a b c d e" (5) and "f g h i j k" (6)
    doc = "f g h i j k Z Z a b c d e"
    match = shared_spans(words(out), words(doc), 4)
    assert [(s.out_start, s.doc_start, s.length) for s in match.spans] == [(6, 0, 6), (0, 8, 5)]
    assert match.longest == 6
    assert match.coverage == pytest.approx(11 / 13)


def test_output_shorter_than_minimum_must_occur_whole():
    assert shared_spans(words("Jesus wept."), words("And Jesus wept. Then said the Jews"), 4).longest == 2
    assert shared_spans(words("Jesus laughed."), words("And Jesus wept."), 4).longest == 0


def test_repeated_document_text_reports_one_span_per_output_region():
    match = shared_spans(words("red green blue yellow"), words("red green blue yellow and red green blue yellow"), 4)
    assert match.longest == 4
    assert len(match.spans) == 1  # the second occurrence covers the same output words
    assert match.spans[0].doc_start == 0


def test_empty_inputs():
    assert shared_spans(words(""), words("a b c d"), 4).longest == 0
    assert shared_spans(words("a b c d"), words(""), 4).longest == 0


def _longest_common_run(a: list[int], b: list[int]) -> int:
    """Independent reference: dynamic programming over all position pairs."""
    best = 0
    prev = [0] * (len(b) + 1)
    for i in range(1, len(a) + 1):
        cur = [0] * (len(b) + 1)
        for j in range(1, len(b) + 1):
            if a[i - 1] == b[j - 1]:
                cur[j] = prev[j - 1] + 1
                best = max(best, cur[j])
        prev = cur
    return best


@pytest.mark.parametrize("seed", range(40))
def test_longest_span_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 3, size=int(rng.integers(1, 40))).tolist()  # tiny alphabet: many long runs
    b = rng.integers(0, 3, size=int(rng.integers(1, 60))).tolist()
    n = 3
    reference = _longest_common_run(a, b)
    got = shared_spans(_words_of(a), _words_of(b), n).longest
    expected = reference if reference >= min(n, len(a)) else 0
    assert got == expected
    for span in shared_spans(_words_of(a), _words_of(b), n).spans:
        assert a[span.out_start : span.out_start + span.length] == b[span.doc_start : span.doc_start + span.length]


def test_ngram_index_nominates_documents_with_shared_runs(tmp_path):
    docs = [words("the cat sat on the mat today"), words("a dog sat on the mat"), words("nothing in common here")]
    index = NgramIndex.build(docs, 4)
    assert index.candidates(words("my cat sat on the mat")) == {0: 2, 1: 1}
    path = tmp_path / "ngrams.safetensors"
    index.save(path)
    loaded = NgramIndex.load(path)
    assert loaded.n == 4 and loaded.n_documents == 3
    assert loaded.candidates(words("a dog sat on the sofa")) == {1: 2}
    assert loaded.candidates(words("too short")) == {}
