"""Untrusted text -> reportlab paragraph markup that draws exactly that text.

Document texts, ids, sources and outputs come from the corpus, so they may hold ``<font>``, ``<b>``,
``&amp;`` or ``<img src=...>``. reportlab parses paragraph text as markup: passed through unescaped, such
text would change fonts, load files or break the build (markup injection). Here every character is
escaped; line breaks become ``<br/>``; control and bidi-override characters are shown as visible
``<U+XXXX>`` code points (an auditor should see them, not have them act); right-to-left runs are put in
visual order (bidi.py); each run of characters is drawn with a font that has its glyphs (fonts.py); and
highlighted ranges (verbatim spans) get a background colour. The only tags in the output are the ones
written here.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field
from xml.sax.saxutils import escape

from provenance.report.bidi import mirrored, visual_permutation
from provenance.report.fonts import SANS, FontSet

HIGHLIGHT = "#ffd966"  # verbatim spans
CODE_COLOR = "#8a8a8a"  # visible control characters
RTL_KEEP_TOGETHER = 40  # right-to-left runs up to this many characters are kept on one line
_PLAIN = re.compile(r"[\x20-\x7e\n\t\r\u00a0]*")  # printable ASCII (every base font has it)
_BIDI_CONTROLS = set(range(0x202A, 0x202F)) | set(range(0x2066, 0x206A)) | {0x200E, 0x200F, 0x061C}


@dataclass(frozen=True)
class Highlight:
    """A range of the logical text (character offsets, end exclusive) drawn with a background colour."""

    start: int
    end: int
    color: str = HIGHLIGHT


@dataclass(frozen=True)
class _Cell:
    char: str
    highlight: str | None
    code: bool  # part of a visible <U+XXXX> marker


def _visible(ch: str) -> str | None:
    """A visible stand-in for a character that would act instead of show (None: draw it as is)."""
    code = ord(ch)
    if ch in "\n\t":
        return None
    if code < 0x20 or 0x7F <= code < 0xA0 or code in _BIDI_CONTROLS or 0xD800 <= code < 0xE000:
        return f"<U+{code:04X}>"
    if unicodedata.category(ch) == "Cn" and code > 0xFFFF and (code & 0xFFFE) == 0xFFFE:
        return f"<U+{code:04X}>"  # noncharacters
    return None


@dataclass
class MarkupMaker:
    """Makes safe markup; remembers characters that no installed font could draw (reported once)."""

    fonts: FontSet
    missing: set[str] = field(default_factory=set)

    def __call__(
        self,
        text: str,
        *,
        base_font: str = SANS,
        highlights: Iterable[Highlight] = (),
        line_breaks: bool = True,
        preserve_spaces: bool = False,
    ) -> str:
        """Markup that draws ``text`` literally. ``preserve_spaces`` keeps indentation and runs of spaces
        (reportlab collapses ordinary spaces) by drawing them as no-break spaces."""
        if preserve_spaces:
            text = _hard_spaces(text)
        highlights = tuple(highlights)
        if not highlights and _PLAIN.fullmatch(text):  # the common case: nothing to reorder or replace
            body = escape(text.replace("\t", " ").replace("\r", ""))
            return body.replace("\n", "<br/>" if line_breaks else " ")
        cells = self._cells(text, highlights, line_breaks)
        order = visual_permutation("".join(c.char for c in cells))
        run_length: dict[int, int] = {}
        for _, _, run in order:
            run_length[run] = run_length.get(run, 0) + 1
        drawn = []
        for i, flip, run in order:
            cell = cells[i]
            if flip:
                cell = _Cell(mirrored(cell.char), cell.highlight, cell.code)
            if run and cell.char == " " and run_length[run] <= RTL_KEEP_TOGETHER:
                cell = _Cell("\u00a0", cell.highlight, cell.code)  # a short right-to-left run never wraps
            drawn.append(cell)
        return self._runs(drawn, base_font)

    def _cells(self, text: str, highlights: tuple[Highlight, ...], line_breaks: bool) -> list[_Cell]:
        colors: list[str | None] = [None] * len(text)
        for h in highlights:
            for k in range(max(h.start, 0), min(h.end, len(text))):
                colors[k] = h.color
        cells: list[_Cell] = []
        for ch, color in zip(text, colors):
            if ch == "\r":
                continue
            if ch == "\t" or (ch == "\n" and not line_breaks):
                ch = " "
            stand_in = _visible(ch)
            if stand_in is None:
                cells.append(_Cell(ch, color, False))
            else:
                cells.extend(_Cell(c, color, True) for c in stand_in)
        return cells

    def _font(self, ch: str, base_font: str) -> str:
        if ch in " \n" or self.fonts.covers(base_font, ch):
            return base_font
        found = self.fonts.font_for(ch)
        if found is None:
            self.missing.add(ch)
            return base_font
        return found

    def _runs(self, cells: list[_Cell], base_font: str) -> str:
        parts: list[str] = []
        run: list[str] = []
        key: tuple[str, str | None, bool] | None = None

        def flush() -> None:
            if not run:
                return
            font, color, code = key  # type: ignore[misc]
            body = escape("".join(run))
            attrs = []
            if font != base_font:
                attrs.append(f'name="{font}"')
            if color is not None:
                attrs.append(f'backColor="{color}"')
            if code:
                attrs.append(f'color="{CODE_COLOR}"')
            parts.append(f"<font {' '.join(attrs)}>{body}</font>" if attrs else body)
            run.clear()

        for cell in cells:
            if cell.char == "\n":
                flush()
                key = None
                parts.append("<br/>")
                continue
            cell_key = (self._font(cell.char, base_font), cell.highlight, cell.code)
            if cell_key != key:
                flush()
                key = cell_key
            run.append(cell.char)
        flush()
        return "".join(parts)


def _hard_spaces(text: str) -> str:
    """Spaces at a line start, and every space after another one, become no-break spaces."""
    out = []
    previous = "\n"
    for ch in text:
        out.append("\u00a0" if ch == " " and previous in (" ", "\u00a0", "\n") else ch)
        previous = out[-1]
    return "".join(out)


def clip(text: str, limit: int) -> tuple[str, bool]:
    """The first ``limit`` characters (cut at a space when one is near), and whether it was cut."""
    if len(text) <= limit:
        return text, False
    cut = text.rfind(" ", int(limit * 0.8), limit)
    return text[: cut if cut > 0 else limit], True
