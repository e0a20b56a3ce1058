"""Words, sentences and passage windows keep exact character offsets into the original text."""

from __future__ import annotations

from provenance.evidence.passages import PassageParams, split_passages
from provenance.evidence.text import has_text, sentences, strip_non_text, truncate, words


def _count(texts: list[str]) -> list[int]:
    return [len(t.split()) for t in texts]


def _offsets(text: str) -> list[tuple[int, int]]:
    out, pos = [], 0
    for token in text.split():
        start = text.index(token, pos)
        out.append((start, start + len(token)))
        pos = start + len(token)
    return out


def test_words_are_case_folded_with_offsets():
    text = "Hello, WORLD! hello world"
    found = words(text)
    assert len(found) == 4
    assert found.hashes[0] == found.hashes[2] and found.hashes[1] == found.hashes[3]
    assert [text[s:e] for s, e in zip(found.starts, found.ends)] == ["Hello", "WORLD", "hello", "world"]


def test_sentences_split_on_end_marks_and_line_breaks():
    text = 'He said, "Go." Then they went!  Did they?\nA heading\n\nLast one'
    spans = sentences(text)
    assert [text[a:b] for a, b in spans] == ['He said, "Go."', "Then they went!", "Did they?", "A heading", "Last one"]


def test_has_text_and_strip_non_text():
    assert not has_text("")
    assert not has_text(" \t\n\r ")
    assert not has_text("\x00\x01\x02\x7f\u200b")
    assert not has_text("... !!! ---")
    assert has_text("\x00ok")
    assert strip_non_text("a\x00b\u200bc") == "abc"


def test_truncate_at_a_word_boundary():
    text = "word " * 100
    cut, was_cut = truncate(text, 52)
    assert was_cut and len(cut) <= 52 and cut.endswith("word")
    assert truncate("short", 52) == ("short", False)


def test_passages_pack_sentences_under_the_limit_with_one_sentence_overlap():
    sents = [f"Sentence number {i} has exactly seven words." for i in range(10)]  # 7 words each
    text = " ".join(sents)
    windows = split_passages(text, _count, _offsets, PassageParams(max_tokens=21, overlap_sentences=1))
    pieces = [text[a:b] for a, b in windows]
    assert pieces[0] == " ".join(sents[0:3])
    assert pieces[1] == " ".join(sents[2:5])  # starts with the last sentence of the previous window
    assert pieces[-1].endswith(sents[-1])
    assert all(len(p.split()) <= 21 for p in pieces)


def test_passages_without_overlap_tile_the_text():
    sents = [f"Short sentence {i}." for i in range(7)]
    text = " ".join(sents)
    windows = split_passages(text, _count, _offsets, PassageParams(max_tokens=6, overlap_sentences=0))
    assert [text[a:b] for a, b in windows] == [" ".join(sents[i : i + 2]) for i in range(0, 6, 2)] + [sents[6]]


def test_an_overlong_sentence_is_cut_at_token_boundaries():
    text = " ".join(f"w{i}" for i in range(25)) + "."
    windows = split_passages(text, _count, _offsets, PassageParams(max_tokens=10, overlap_sentences=1))
    pieces = [text[a:b] for a, b in windows]
    assert pieces[0] == " ".join(f"w{i}" for i in range(10))
    assert all(len(p.split()) <= 10 for p in pieces)
    assert pieces[-1].endswith("w24.")


def test_empty_or_blank_documents_have_no_passages():
    assert split_passages("", _count, _offsets) == []
    assert split_passages(" \n\n \t", _count, _offsets) == []
