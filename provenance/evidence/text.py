"""Words and sentences with character offsets: the units spans, overlaps and passages are counted in.

Verbatim spans are counted in *words* (runs of letters/digits, case-folded), not in the run's BPE tokens:
an auditor reads words, and the calibrated thresholds then hold for any run's tokenizer. Every unit keeps
its character offsets into the original text, so a span can be shown in place.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

_WORD = re.compile(r"\w+")
# A sentence ends at . ! ? (with closing quotes/brackets) followed by space, or at a line break.
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"'\u201d\u2019)\]]*\s+|\n\s*")
# Characters that carry no text: C0/C1 controls except ordinary whitespace, format characters.
_NON_TEXT = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b-\u200f\u2028\u2029\ufeff]")


@lru_cache(maxsize=1 << 20)
def word_hash(word: str) -> int:
    """Stable 64-bit hash of a case-folded word (Python's hash() changes between processes)."""
    return int.from_bytes(hashlib.blake2b(word.encode("utf-8"), digest_size=8).digest(), "little")


@dataclass(frozen=True)
class Words:
    """The words of a text: hashes (uint64) and [start, end) character offsets (int64)."""

    hashes: np.ndarray
    starts: np.ndarray
    ends: np.ndarray

    def __len__(self) -> int:
        return int(self.hashes.shape[0])

    def char_range(self, first: int, stop: int) -> tuple[int, int]:
        """Character range covering words [first, stop)."""
        return int(self.starts[first]), int(self.ends[stop - 1])

    def in_chars(self, start: int, end: int) -> slice:
        """The words lying inside the character range [start, end)."""
        first = int(np.searchsorted(self.starts, start, side="left"))
        stop = int(np.searchsorted(self.ends, end, side="right"))
        return slice(first, max(first, stop))


def words(text: str) -> Words:
    """Tokenize into case-folded words with their character offsets."""
    found = [(m.group().casefold(), m.start(), m.end()) for m in _WORD.finditer(text)]
    hashes = np.fromiter((word_hash(w) for w, _, _ in found), dtype=np.uint64, count=len(found))
    starts = np.fromiter((s for _, s, _ in found), dtype=np.int64, count=len(found))
    ends = np.fromiter((e for _, _, e in found), dtype=np.int64, count=len(found))
    return Words(hashes, starts, ends)


def has_text(text: str) -> bool:
    """True when the text holds at least one word (not only whitespace, punctuation or control bytes)."""
    return _WORD.search(_NON_TEXT.sub("", text)) is not None


def strip_non_text(text: str) -> str:
    """Remove control and zero-width characters (offsets of the result are what the query reports)."""
    return _NON_TEXT.sub("", text)


def sentences(text: str, start: int = 0, end: int | None = None) -> list[tuple[int, int]]:
    """Sentence [start, end) character ranges inside text[start:end], trimmed of surrounding space."""
    end = len(text) if end is None else end
    out: list[tuple[int, int]] = []
    cursor = start
    for match in _SENTENCE_END.finditer(text, start, end):
        _append_trimmed(text, cursor, match.start() + len(match.group().rstrip()), out)
        cursor = match.end()
    _append_trimmed(text, cursor, end, out)
    return out


def _append_trimmed(text: str, start: int, end: int, out: list[tuple[int, int]]) -> None:
    piece = text[start:end]
    stripped = piece.strip()
    if stripped and has_text(stripped):
        lead = len(piece) - len(piece.lstrip())
        out.append((start + lead, start + lead + len(stripped)))


def truncate(text: str, max_chars: int) -> tuple[str, bool]:
    """Cut a text to at most max_chars, at the last whitespace before the limit when there is one."""
    if len(text) <= max_chars:
        return text, False
    cut = text.rfind(" ", 0, max_chars)
    return text[: cut if cut > max_chars // 2 else max_chars], True
