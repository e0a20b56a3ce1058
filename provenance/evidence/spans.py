"""Verbatim spans: the longest runs of words an output shares with a document, with positions in both.

Seed and merge, exact for every shared run of at least ``min_words`` words: hash every n-gram of both
texts (n = min_words), find the equal n-grams, and merge the hits that lie on one diagonal (same offset
between the two texts) and follow each other into one maximal span. A run of L shared words yields L-n+1
consecutive hits, so nothing longer than n is missed and nothing shorter is reported. Hash collisions are
ruled out by comparing the words of every span.

``NgramIndex`` is the corpus side for candidate search: every n-gram hash of the corpus with the document
it occurs in (sorted, so a lookup is a binary search), saved as safetensors.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

from provenance.evidence.text import Words

_PRIME = np.uint64(1099511628211)  # FNV prime: a polynomial hash over word hashes (wraps mod 2**64)
MAX_HITS = 200_000  # cap on n-gram hits per pair (only reached by degenerate, self-repeating texts)


@dataclass(frozen=True)
class Span:
    """Words [out_start, out_start + length) of the output equal words [doc_start, ...) of the document."""

    out_start: int
    doc_start: int
    length: int


@dataclass(frozen=True)
class SpanMatch:
    """All maximal shared spans of one (output, document) pair and the scores built from them."""

    spans: tuple[Span, ...]  # longest first; output ranges do not overlap (greedy by length)
    longest: int  # words in the longest shared span (0 when none reaches the minimum)
    coverage: float  # fraction of the output's words inside a shared span
    truncated: bool = False  # MAX_HITS was reached: spans may be incomplete


def ngram_hashes(hashes: np.ndarray, n: int) -> np.ndarray:
    """Hash of every run of n consecutive words (len(hashes) - n + 1 values; empty if too short)."""
    count = hashes.shape[0] - n + 1
    if count <= 0 or n <= 0:
        return np.empty(0, dtype=np.uint64)
    out = hashes[:count].copy()
    with np.errstate(over="ignore"):
        for k in range(1, n):
            out = out * _PRIME + hashes[k : k + count]
    return out


def shared_spans(output: Words, document: Words, min_words: int) -> SpanMatch:
    """Maximal runs of >= min_words equal words between output and document (fewer if the output is
    shorter: then the whole output must occur)."""
    m = len(output)
    n = min(min_words, m)
    if n == 0 or len(document) < n:
        return SpanMatch((), 0, 0.0)
    out_grams = ngram_hashes(output.hashes, n)
    doc_grams = ngram_hashes(document.hashes, n)
    order = np.argsort(doc_grams, kind="stable")
    sorted_grams = doc_grams[order]
    lo = np.searchsorted(sorted_grams, out_grams, side="left")
    hi = np.searchsorted(sorted_grams, out_grams, side="right")
    counts = hi - lo
    total = int(counts.sum())
    if total == 0:
        return SpanMatch((), 0, 0.0)
    truncated = total > MAX_HITS
    if truncated:  # keep the first occurrences of each output n-gram, evenly, within the cap
        per = max(1, MAX_HITS // max(1, int((counts > 0).sum())))
        counts = np.minimum(counts, per)
        total = int(counts.sum())
    out_pos = np.repeat(np.arange(out_grams.shape[0]), counts)
    starts = np.repeat(lo, counts)
    within = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
    doc_pos = order[starts + within]
    diagonal = doc_pos - out_pos
    sort = np.lexsort((out_pos, diagonal))
    out_pos, diagonal = out_pos[sort], diagonal[sort]
    breaks = np.flatnonzero((np.diff(diagonal) != 0) | (np.diff(out_pos) != 1)) + 1
    run_first = np.concatenate(([0], breaks))
    run_last = np.concatenate((breaks - 1, [total - 1]))
    span_out = out_pos[run_first]
    span_len = out_pos[run_last] - span_out + n
    span_doc = span_out + diagonal[run_first]

    spans = []
    covered = np.zeros(m, dtype=bool)
    for o, d, length in zip(span_out.tolist(), span_doc.tolist(), span_len.tolist()):
        if np.array_equal(output.hashes[o : o + length], document.hashes[d : d + length]):
            spans.append(Span(o, d, length))
            covered[o : o + length] = True
    if not spans:
        return SpanMatch((), 0, 0.0, truncated)
    spans.sort(key=lambda s: (-s.length, s.out_start, s.doc_start))
    return SpanMatch(_non_overlapping(spans, m), spans[0].length, float(covered.mean()), truncated)


def _non_overlapping(spans: list[Span], m: int) -> tuple[Span, ...]:
    """Longest first, skipping spans whose output words were already shown (first document occurrence)."""
    taken = np.zeros(m, dtype=bool)
    kept = []
    for span in spans:
        if not taken[span.out_start : span.out_start + span.length].any():
            kept.append(span)
            taken[span.out_start : span.out_start + span.length] = True
    return tuple(kept)


class NgramIndex:
    """Which documents contain each n-gram of the corpus: sorted (hash, document) arrays."""

    def __init__(self, grams: np.ndarray, docs: np.ndarray, n: int, n_documents: int) -> None:
        self.grams = grams
        self.docs = docs
        self.n = n
        self.n_documents = n_documents

    @classmethod
    def build(cls, documents: Iterable[Words], n: int) -> NgramIndex:
        gram_parts, doc_parts = [], []
        i = -1
        for i, doc in enumerate(documents):
            grams = np.unique(ngram_hashes(doc.hashes, n))
            gram_parts.append(grams)
            doc_parts.append(np.full(grams.shape[0], i, dtype=np.int32))
        grams = np.concatenate(gram_parts) if gram_parts else np.empty(0, dtype=np.uint64)
        docs = np.concatenate(doc_parts) if doc_parts else np.empty(0, dtype=np.int32)
        order = np.lexsort((docs, grams))
        return cls(grams[order], docs[order], n, i + 1)

    def save(self, path: Path) -> None:
        save_file(
            {"grams": self.grams, "docs": self.docs},
            str(path),
            metadata={"n": str(self.n), "n_documents": str(self.n_documents)},
        )

    @classmethod
    def load(cls, path: Path) -> NgramIndex:
        from safetensors import safe_open

        with safe_open(str(path), framework="numpy") as handle:
            meta = handle.metadata() or {}
        arrays = load_file(str(path))
        return cls(arrays["grams"], arrays["docs"], int(meta["n"]), int(meta["n_documents"]))

    def candidates(self, output: Words, max_docs_per_gram: int = 1000) -> dict[int, int]:
        """Document index -> number of the output's n-grams it contains (n-grams found in more than
        max_docs_per_gram documents are common phrases and do not nominate candidates)."""
        out_grams = np.unique(ngram_hashes(output.hashes, self.n))
        if out_grams.size == 0 or self.grams.size == 0:
            return {}
        lo = np.searchsorted(self.grams, out_grams, side="left")
        hi = np.searchsorted(self.grams, out_grams, side="right")
        keep = (hi > lo) & (hi - lo <= max_docs_per_gram)
        if not keep.any():
            return {}
        hits = np.concatenate([self.docs[a:b] for a, b in zip(lo[keep], hi[keep])])
        docs, counts = np.unique(hits, return_counts=True)
        return dict(zip(docs.tolist(), counts.tolist()))
