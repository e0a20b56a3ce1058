"""Passages: sentence-aware windows of a document, sized for the embedder, with offsets back into it.

Whole sentences are packed into a window until the next one would pass ``max_tokens`` (counted with the
embedder's tokenizer, so no window is silently cut by the embedder); consecutive windows share
``overlap_sentences`` sentences so that a paraphrase straddling a boundary is still seen whole. A single
sentence longer than the limit is cut at token boundaries.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from provenance.evidence.text import sentences

DEFAULT_MAX_TOKENS = 200


@dataclass(frozen=True)
class PassageParams:
    """How documents are cut into passages (recorded in the index; a change rebuilds it)."""

    max_tokens: int = DEFAULT_MAX_TOKENS
    overlap_sentences: int = 1


def split_passages(
    text: str,
    count_tokens: Callable[[list[str]], list[int]],
    token_offsets: Callable[[str], list[tuple[int, int]]],
    params: PassageParams = PassageParams(),
) -> list[tuple[int, int]]:
    """[start, end) character ranges of the passages of one document, in order."""
    units = _sentence_units(text, count_tokens, token_offsets, params.max_tokens)
    windows: list[tuple[int, int]] = []
    first = 0
    while first < len(units):
        last, total = first, units[first][2]
        while last + 1 < len(units) and total + units[last + 1][2] <= params.max_tokens:
            last += 1
            total += units[last][2]
        windows.append((units[first][0], units[last][1]))
        if last + 1 >= len(units):
            break
        first = max(first + 1, last + 1 - params.overlap_sentences)
    return windows


def _sentence_units(
    text: str,
    count_tokens: Callable[[list[str]], list[int]],
    token_offsets: Callable[[str], list[tuple[int, int]]],
    max_tokens: int,
) -> list[tuple[int, int, int]]:
    """(start, end, n_tokens) per sentence, long sentences cut into pieces of at most max_tokens."""
    ranges = sentences(text)
    if not ranges:
        return []
    counts = count_tokens([text[a:b] for a, b in ranges])
    units: list[tuple[int, int, int]] = []
    for (start, end), count in zip(ranges, counts):
        if count <= max_tokens:
            units.append((start, end, count))
            continue
        offsets = token_offsets(text[start:end])
        for i in range(0, len(offsets), max_tokens):
            piece = offsets[i : i + max_tokens]
            units.append((start + piece[0][0], start + piece[-1][1], len(piece)))
    return units
