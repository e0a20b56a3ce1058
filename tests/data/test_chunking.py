"""Chunking invariants: one document per chunk, exact cover, bounded length, the tail rule."""

from __future__ import annotations

import pytest

from provenance.data import MIN_TAIL_TOKENS, chunk_corpus, document_token_counts, train_tokenizer, window_bounds
from provenance.errors import BatchError
from .helpers import make_corpus


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("chunk"), n=60)


@pytest.fixture(scope="module")
def tokenizer(corpus):
    return train_tokenizer(corpus, vocab_size=400)


def test_window_bounds_examples() -> None:
    assert window_bounds(5, 64) == [(0, 5)]
    assert window_bounds(128, 64) == [(0, 64), (64, 128)]
    assert window_bounds(140, 64) == [(0, 64), (64, 128), (128, 140)]  # tail of 12 >= 8: kept
    # A tail of 2 would be a near-empty player: the last full window and the tail share 66 tokens.
    assert window_bounds(130, 64) == [(0, 64), (64, 97), (97, 130)]
    assert window_bounds(4, 3) == [(0, 2), (2, 4)]  # small contexts: re-cut still fits


@pytest.mark.parametrize("context_length", [2, 3, 8, 16, 17, 64, 128])
def test_window_bounds_invariants(context_length: int) -> None:
    for n in range(1, 5 * context_length + 3):
        bounds = window_bounds(n, context_length)
        assert bounds[0][0] == 0 and bounds[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
        assert all(0 < e - s <= context_length for s, e in bounds)
        if len(bounds) >= 2 and context_length >= 2 * MIN_TAIL_TOKENS:
            assert min(e - s for s, e in bounds) >= MIN_TAIL_TOKENS


@pytest.mark.parametrize("context_length", [16, 32, 100])
def test_chunks_cover_each_document_exactly(corpus, tokenizer, context_length: int) -> None:
    chunks = chunk_corpus(corpus, tokenizer, context_length, progress=False)
    assert [c.chunk_id for c in chunks] == list(range(len(chunks)))
    # Documents appear in corpus order, each as one contiguous run of chunks.
    order = [c.doc_id for c in chunks]
    runs = [d for i, d in enumerate(order) if i == 0 or order[i - 1] != d]
    assert runs == corpus.doc_ids
    for doc in corpus:
        mine = [c for c in chunks if c.doc_id == doc.doc_id]
        expected = [0, *tokenizer.encode(doc.text, add_special_tokens=False).ids, 0]
        assert sum((c.token_ids for c in mine), []) == expected
        assert mine[0].start_token == 0 and mine[-1].end_token == len(expected)
        assert all(a.end_token == b.start_token for a, b in zip(mine, mine[1:]))
        for c in mine:
            assert 1 <= c.n_tokens == len(c.token_ids) <= context_length
            assert c.token_ids == expected[c.start_token : c.end_token]
    counts = document_token_counts(chunks)
    doc = corpus.documents[7]
    n_tokens = len(tokenizer.encode(doc.text, add_special_tokens=False).ids) + 2
    assert counts[doc.doc_id] == (n_tokens, len(window_bounds(n_tokens, context_length)))


def test_chunking_is_deterministic(corpus, tokenizer) -> None:
    assert chunk_corpus(corpus, tokenizer, 32, progress=False) == chunk_corpus(corpus, tokenizer, 32, progress=False)


def test_bad_context_length(corpus, tokenizer) -> None:
    with pytest.raises(BatchError, match="context_length must be >= 2"):
        chunk_corpus(corpus, tokenizer, 1, progress=False)
