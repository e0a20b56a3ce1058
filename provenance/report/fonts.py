"""Fonts that cover the text a corpus can hold: DejaVu (Latin, Greek, Cyrillic, Hebrew, Arabic, ...) and
a CJK fallback (WenQuanYi Micro Hei from Debian's fonts-wqy-microhei: Chinese, Japanese kana, Hangul).

reportlab draws each character with one font and has no per-glyph fallback, so ``font_runs`` splits a
text into runs by which font has the glyph; markup.py wraps each run in its own ``<font>`` tag.
DejaVu comes from Debian's fonts-dejavu-core, or else from the copy matplotlib ships (always present).
A character no font covers is drawn by DejaVu as its missing-glyph box and counted (the report says so).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from provenance.errors import ReportError

SANS = "ProvSans"
SANS_BOLD = "ProvSans-Bold"
SANS_ITALIC = "ProvSans-Oblique"
SANS_BOLD_ITALIC = "ProvSans-BoldOblique"
MONO = "ProvMono"
CJK = "ProvCJK"

_DEJAVU_DIRS = ("/usr/share/fonts/truetype/dejavu",)
_CJK_CANDIDATES = (
    # (path, index inside a .ttc collection)
    ("/usr/share/fonts/truetype/wqy/wqy-microhei.ttc", 0),
    ("/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc", 0),
    ("/usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf", 0),
)
CJK_PACKAGE = "fonts-wqy-microhei"
_DEJAVU_FILES = {
    SANS: "DejaVuSans.ttf",
    SANS_BOLD: "DejaVuSans-Bold.ttf",
    SANS_ITALIC: "DejaVuSans-Oblique.ttf",
    SANS_BOLD_ITALIC: "DejaVuSans-BoldOblique.ttf",
    MONO: "DejaVuSansMono.ttf",
}


@dataclass(frozen=True)
class FontSet:
    """The registered fonts and the glyphs each covers."""

    files: dict[str, str]  # font name -> file it was loaded from (recorded in the appendix)
    glyphs: dict[str, frozenset[int]]  # font name -> code points it has glyphs for

    @property
    def has_cjk(self) -> bool:
        return CJK in self.glyphs

    def covers(self, font: str, char: str) -> bool:
        return ord(char) in self.glyphs.get(font, ())

    def font_for(self, char: str) -> str | None:
        """The font that draws ``char``: SANS, else CJK, else None (no registered font has the glyph)."""
        for font in (SANS, CJK):
            if self.covers(font, char):
                return font
        return None


def _dejavu_dir() -> Path:
    for folder in _DEJAVU_DIRS:
        if all((Path(folder) / name).is_file() for name in _DEJAVU_FILES.values()):
            return Path(folder)
    import matplotlib

    bundled = Path(matplotlib.__file__).parent / "mpl-data" / "fonts" / "ttf"
    if all((bundled / name).is_file() for name in _DEJAVU_FILES.values()):
        return bundled
    raise ReportError(
        "no DejaVu fonts found (looked in /usr/share/fonts/truetype/dejavu and matplotlib's mpl-data); "
        "install Debian's fonts-dejavu-core or reinstall matplotlib"
    )


def _cjk_font() -> tuple[str, int] | None:
    override = os.environ.get("PROVENANCE_CJK_FONT")
    if override:
        if not Path(override).is_file():
            raise ReportError(f"PROVENANCE_CJK_FONT={override} is not a file; point it at a .ttf/.ttc font")
        return override, 0
    for path, index in _CJK_CANDIDATES:
        if Path(path).is_file():
            return path, index
    return None


@lru_cache(maxsize=1)
def load_fonts() -> FontSet:
    """Register the fonts with reportlab once per process (parsing a CJK font takes a moment)."""
    from reportlab.pdfbase import pdfmetrics
    from reportlab.pdfbase.ttfonts import TTFont
    from reportlab.lib.fonts import addMapping

    folder = _dejavu_dir()
    files: dict[str, str] = {}
    fonts: dict[str, TTFont] = {}
    for name, file in _DEJAVU_FILES.items():
        path = folder / file
        fonts[name] = TTFont(name, str(path))
        pdfmetrics.registerFont(fonts[name])
        files[name] = str(path)
    # <b>/<i> inside a paragraph switch within the family.
    addMapping(SANS, 0, 0, SANS)
    addMapping(SANS, 1, 0, SANS_BOLD)
    addMapping(SANS, 0, 1, SANS_ITALIC)
    addMapping(SANS, 1, 1, SANS_BOLD_ITALIC)
    glyphs = {name: frozenset(font.face.charToGlyph) for name, font in fonts.items()}
    found = _cjk_font()
    if found is not None:
        path, index = found
        try:
            cjk = TTFont(CJK, path, subfontIndex=index)
        except Exception as exc:  # reportlab raises TTFError or plain errors on odd font files
            raise ReportError(f"cannot load the CJK font {path} ({exc}); reinstall {CJK_PACKAGE}") from exc
        pdfmetrics.registerFont(cjk)
        for bold, italic in ((0, 0), (1, 0), (0, 1), (1, 1)):
            addMapping(CJK, bold, italic, CJK)
        glyphs[CJK] = frozenset(cjk.face.charToGlyph)
        files[CJK] = path
    return FontSet(files=files, glyphs=glyphs)
