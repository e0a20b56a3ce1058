"""Untrusted text -> markup: reportlab must parse it back to exactly the text (no tag acts)."""

from __future__ import annotations

import pytest
from reportlab.lib.styles import ParagraphStyle
from reportlab.platypus import Paragraph

from provenance.errors import ReportError
from provenance.report.bidi import visual_text
from provenance.report.fonts import CJK, SANS, load_fonts
from provenance.report.markup import Highlight, MarkupMaker
from provenance.report.settings import ReportSettings, normalize_timestamp
from provenance.report.sidecar import file_stem

HOSTILE = [
    '<font color="red" size="40">x</font>',
    "<b>bold</b> <i>it</i> <u>u</u> <br/> <para>p</para>",
    "&amp; & &lt; &#60; &nbsp; &unknown;",
    '<img src="/etc/passwd" width="10" height="10"/>',
    "<a href=\"javascript:alert(1)\">link</a> <link href='x'>y</link>",
    "<![CDATA[ raw ]]> <!-- comment --> <?pi x?>",
    'quotes " and \' and backslash \\ and $math^2$',
]


def _drawn_text(markup: str) -> str:
    """The characters reportlab will draw for a paragraph (its parsed fragments), and their fonts."""
    load_fonts()
    paragraph = Paragraph(markup, ParagraphStyle("t", fontName=SANS))
    return "".join(getattr(frag, "text", "") for frag in paragraph.frags)


@pytest.mark.parametrize("text", HOSTILE)
def test_markup_draws_the_literal_text(text):
    mk = MarkupMaker(load_fonts())
    assert _drawn_text(mk(text)) == text


def test_no_fragment_changes_font_size_or_colour_or_loads_an_image():
    mk = MarkupMaker(load_fonts())
    paragraph = Paragraph(mk(" ".join(HOSTILE)), ParagraphStyle("t", fontName=SANS, fontSize=9))
    assert {frag.fontSize for frag in paragraph.frags} == {9}
    assert {frag.fontName for frag in paragraph.frags} <= {SANS, CJK}
    assert not any(getattr(frag, "cbDefn", None) or getattr(frag, "img", None) for frag in paragraph.frags)


def test_highlight_marks_exactly_the_span():
    mk = MarkupMaker(load_fonts())
    text = "one <two> three & four"
    paragraph = Paragraph(mk(text, highlights=[Highlight(4, 9)]), ParagraphStyle("t", fontName=SANS))
    marked = "".join(f.text for f in paragraph.frags if getattr(f, "backColor", None) is not None)
    assert marked == "<two>"
    assert "".join(f.text for f in paragraph.frags) == text


def test_cjk_runs_get_the_cjk_font_and_latin_stays_in_dejavu():
    fonts = load_fonts()
    if not fonts.has_cjk:
        pytest.skip("no CJK font installed (Debian package fonts-wqy-microhei)")
    mk = MarkupMaker(fonts)
    paragraph = Paragraph(mk("abc 中文字符 한국어 def"), ParagraphStyle("t", fontName=SANS))
    by_font = {}
    for frag in paragraph.frags:
        by_font.setdefault(frag.fontName, "")
        by_font[frag.fontName] += frag.text
    assert by_font[CJK].replace(" ", "") == "中文字符한국어"
    assert "abc" in by_font[SANS] and "def" in by_font[SANS]
    assert not mk.missing


def test_controls_and_bidi_overrides_are_shown_not_applied():
    mk = MarkupMaker(load_fonts())
    drawn = _drawn_text(mk("a\u202eb\x00c\x1bd"))
    assert drawn == "a<U+202E>b<U+0000>c<U+001B>d"


def test_line_breaks_become_br_and_spaces_can_be_kept():
    mk = MarkupMaker(load_fonts())
    assert mk("a\nb").count("<br/>") == 1
    assert mk("a\nb", line_breaks=False).count("<br/>") == 0
    assert _drawn_text(mk('{\n  "k": 1\n}', preserve_spaces=True)) == '{\u00a0\u00a0"k": 1}'


# -- right to left ----------------------------------------------------------------------------------------
# Expected visual orders written by hand from the Unicode Bidirectional Algorithm (UAX #9) for a
# left-to-right paragraph: strong R runs reversed, numbers after them keep their digit order, neutrals
# between an R run and L text take the paragraph direction.
@pytest.mark.parametrize(
    ("logical", "visual"),
    [
        ("abc", "abc"),
        ("he: שלום עולם", "he: םלוע םולש"),
        ("שלום 123 def", "123 םולש def"),
        ("a (שלום) b", "a (םולש) b"),
        ("a שלום (עולם) b", "a (םלוע) םולש b"),
        ("x שָׁלוֹם y", "x םוֹלשָׁ y"),
        ("مرحبا 1,000.5 بالعالم", "ملاعلاب 1,000.5 ابحرم"),
        ("line1 שלום\nעולם line2", "line1 םולש\nםלוע line2"),
    ],
)
def test_visual_order(logical, visual):
    assert visual_text(logical) == visual


def test_short_rtl_runs_do_not_wrap():
    mk = MarkupMaker(load_fonts())
    assert "\u00a0" in mk("x שלום עולם y")  # the run's inner space is a no-break space
    long_run = " ".join(["שלום"] * 20)
    assert "\u00a0" not in mk(long_run)  # long runs may wrap (documented limitation)


# -- settings and names ---------------------------------------------------------------------------------------
def test_timestamp_is_normalized_to_utc():
    assert normalize_timestamp("2026-01-31T13:00:00+01:00") == "2026-01-31T12:00:00Z"
    assert normalize_timestamp("2026-01-31T12:00:00Z") == "2026-01-31T12:00:00Z"
    with pytest.raises(ReportError, match="ISO-8601"):
        normalize_timestamp("yesterday")


@pytest.mark.parametrize("bad", [dict(top_k=0), dict(excerpts=-1), dict(timestamp="31/01/2026")])
def test_bad_settings_are_refused(bad):
    with pytest.raises(ReportError):
        ReportSettings(**bad).check()


def test_file_names_are_safe_and_distinct():
    assert file_stem("t-genesis") == "t-genesis"
    odd = [file_stem(t) for t in ("../../etc/passwd", "a/b", "a b", "a_b", "<b>x</b>", ".hidden", "中文")]
    assert all("/" not in s and not s.startswith(".") for s in odd)
    assert len(set(odd)) == len(odd)
