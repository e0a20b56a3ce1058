"""Right-to-left runs in visual order, for reportlab without its optional bidi package (rlbidi).

reportlab draws characters in the order it is given them, left to right. Hebrew or Arabic given in
logical order would appear mirrored (and pdftotext would read it back reversed). This module applies the
part of the Unicode Bidirectional Algorithm that a left-to-right page needs: each maximal run of
right-to-left text (strong R/AL characters, with the neutrals and numbers between them, and numbers that
follow them) is reversed, digits inside keep their left-to-right order, combining marks stay on their
base character, and paired brackets are mirrored.

Not done (documented in docs/reports.md): Arabic letters are not joined into their contextual forms
(they are drawn in their isolated forms); explicit embedding/override/isolate controls are shown as
visible code points instead of being applied; and the reversal happens before line wrapping. markup.py
keeps short runs on one line (no-break spaces), but a long right-to-left run that wraps onto several
lines has its lines in bottom-to-top order.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence

_RTL = {"R", "AL"}
_NUMBER = {"EN", "AN"}
_NUMBER_JOINERS = {"CS", "ES", "ET"}  # 1,000.5  +3  12%: keep inside a number
_BREAKS = {"B", "S"}  # paragraph and segment separators end a run
_PAIRS = {"(": ")", "[": "]", "{": "}", "\u00ab": "\u00bb"}
_CLOSERS = {close: open_ for open_, close in _PAIRS.items()}
_MIRROR = {"(": ")", ")": "(", "[": "]", "]": "[", "{": "}", "}": "{", "<": ">", ">": "<",
           "\u00ab": "\u00bb", "\u00bb": "\u00ab", "\u2039": "\u203a", "\u203a": "\u2039"}


def has_rtl(text: str) -> bool:
    return any(unicodedata.bidirectional(c) in _RTL for c in text)


def _units(chars: Sequence[str] | str) -> list[tuple[int, int]]:
    """Index ranges of base characters with their combining marks (reversed as one piece)."""
    units: list[tuple[int, int]] = []
    for i, ch in enumerate(chars):
        if units and (unicodedata.combining(ch) or unicodedata.category(ch) in ("Mn", "Me")) and chars[i - 1] != "\n":
            start, _ = units[-1]
            units[-1] = (start, i + 1)
        else:
            units.append((i, i + 1))
    return units


def _kind(ch: str) -> str:
    cls = unicodedata.bidirectional(ch)
    if cls in _RTL:
        return "R"
    if cls in _NUMBER:
        return "N"
    if cls in _NUMBER_JOINERS:
        return "J"
    if cls == "L":
        return "L"
    if cls in _BREAKS:
        return "B"
    return "W"  # whitespace and other neutrals


def visual_permutation(text: str) -> list[tuple[int, bool, int]]:
    """For each position of the drawn (visual) text: the index of the logical character drawn there,
    whether it is drawn mirrored, and the number of the right-to-left run it belongs to (0 = none).
    Callers keep per-character attributes (highlight, font) by index."""
    identity = [(i, False, 0) for i in range(len(text))]
    if not has_rtl(text):
        return identity
    units = _units(text)
    kinds = [_kind(text[a]) for a, _ in units]
    out: list[tuple[int, bool, int]] = []
    runs = 0
    i = 0
    while i < len(units):
        if kinds[i] != "R":
            a, b = units[i]
            out.extend((k, False, 0) for k in range(a, b))
            i += 1
            continue
        # A run starts at a strong right-to-left unit and reaches the last R or number before an L or a break.
        end = i
        j = i + 1
        while j < len(units) and kinds[j] not in ("L", "B"):
            if kinds[j] in ("R", "N"):
                end = j
            j += 1
        end = _close_brackets(text, units, i, end, j)
        runs += 1
        out.extend((k, flip, runs) for k, flip in _reverse_run(text, units[i : end + 1], kinds[i : end + 1]))
        i = end + 1
    return out


def _close_brackets(text: str, units: list[tuple[int, int]], start: int, end: int, limit: int) -> int:
    """Extend a run over the closing brackets of pairs it opened (UAX #9 rule N0, simplified): in
    "a שלום (עולם) b" the parentheses belong to the right-to-left run."""
    open_count = {opener: 0 for opener in _PAIRS}
    for a, _ in units[start : end + 1]:
        ch = text[a]
        if ch in _PAIRS:
            open_count[ch] += 1
        elif ch in _CLOSERS and open_count[_CLOSERS[ch]] > 0:
            open_count[_CLOSERS[ch]] -= 1
    k = end + 1
    while k < limit and any(open_count.values()):
        ch = text[units[k][0]]
        if ch in _CLOSERS and open_count[_CLOSERS[ch]] > 0:
            open_count[_CLOSERS[ch]] -= 1
            end = k
        k += 1
    return end


def visual_text(text: str) -> str:
    """The text in the order a left-to-right page draws it."""
    return "".join(mirrored(text[i]) if flip else text[i] for i, flip, _ in visual_permutation(text))


def _reverse_run(text: str, units: list[tuple[int, int]], kinds: list[str]) -> list[tuple[int, bool]]:
    """Reverse a run unit by unit; digit groups (with separators between digits) keep their order."""
    groups: list[list[tuple[int, int]]] = []
    k = 0
    while k < len(units):
        if kinds[k] == "N":
            group = [units[k]]
            m = k + 1
            while m < len(units) and (
                kinds[m] == "N" or (kinds[m] == "J" and m + 1 < len(units) and kinds[m + 1] == "N")
            ):
                group.append(units[m])
                m += 1
            groups.append(group)
            k = m
        else:
            groups.append([units[k]])
            k += 1
    out: list[tuple[int, bool]] = []
    for group in reversed(groups):
        numeric = _kind(text[group[0][0]]) == "N"
        for a, b in group:
            out.extend((idx, not numeric and idx == a and text[a] in _MIRROR) for idx in range(a, b))
    return out


def mirrored(ch: str) -> str:
    """The mirror image of a bracket drawn inside a right-to-left run."""
    return _MIRROR.get(ch, ch)
