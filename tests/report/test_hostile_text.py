"""Bar 2: a document (and a target) with <font>/<b> markup, &, right-to-left and CJK text renders as the
literal text, read back with pdftotext from the reports the pipeline's real run produced."""

from __future__ import annotations

import json
import subprocess

import pytest

from provenance.report.fonts import load_fonts

from .conftest import pdftotext
from .fixture_runs import HOSTILE_ID, HOSTILE_PHRASE, HOSTILE_SOURCE, HOSTILE_TEXT

# pdftotext wraps text it reorders as right-to-left in embedding marks, and may move the space at the
# edge of a right-to-left run to its other side when it rebuilds the logical order; no-break spaces keep
# short right-to-left runs on one line. None of that is part of the text, so the checks compare (a) all
# characters but whitespace, in order, and (b) the left-to-right parts with their spaces.
_INVISIBLE = dict.fromkeys(map(ord, "\u202a\u202b\u202c\u202d\u202e\u200e\u200f"), None)


def _normalize(text: str) -> str:
    return " ".join(text.translate(_INVISIBLE).replace("\u00a0", " ").split())


def _compact(text: str) -> str:
    return "".join(_normalize(text).split())


def _assert_literal(expected: str, extracted: str) -> None:
    assert _compact(expected) in _compact(extracted)
    for part in ('<b>bold</b> & <font size="30">big</font> &amp;', "中文字符 한국어", "שלום עולם"):
        if part in expected:
            assert part in _normalize(extracted)


@pytest.fixture(scope="module")
def hostile_pdf(batch):
    return next(p for p in batch.reports if p.stem == "t-hostile")


def test_the_target_text_prints_literally(hostile_pdf):
    first_page = subprocess.run(["pdftotext", "-enc", "UTF-8", "-f", "1", "-l", "1", str(hostile_pdf), "-"],
                                check=True, capture_output=True, text=True).stdout
    _assert_literal(HOSTILE_PHRASE, first_page)


def test_the_document_id_source_and_text_print_literally(hostile_pdf):
    text = _normalize(pdftotext(hostile_pdf, layout=False))
    assert _normalize(HOSTILE_ID) in text
    assert _normalize(HOSTILE_SOURCE) in text
    # the excerpt prints the whole (short) document, highlighted span and all
    _assert_literal(HOSTILE_TEXT, text)


def test_every_script_is_drawn_with_a_real_glyph(hostile_pdf):
    fonts = subprocess.run(["pdffonts", str(hostile_pdf)], check=True, capture_output=True, text=True).stdout
    assert "DejaVuSans" in fonts
    assert load_fonts().has_cjk, "no CJK font installed: install Debian's fonts-wqy-microhei (scripts/install.sh)"
    assert "WenQuanYi" in fonts or "Droid" in fonts
    # no character fell back to a missing-glyph box
    side = json.loads(hostile_pdf.with_suffix(".json").read_text(encoding="utf-8"))
    assert not any("no glyph" in note for note in side["report"]["notes"])
    assert "no glyph" not in pdftotext(hostile_pdf)


def test_markup_in_the_text_did_not_act(hostile_pdf):
    """The size="30" font tag and the <img> in the document are text, not layout: no image other than the
    two charts, and the literal tags are on the page."""
    listing = subprocess.run(["pdfimages", "-list", str(hostile_pdf)], check=True, capture_output=True,
                             text=True).stdout.strip().splitlines()[2:]
    assert len(listing) == 2
    text = pdftotext(hostile_pdf, layout=False)
    assert '<font size="30">big</font>' in text
    assert '<img src="/etc/passwd"/>' in _normalize(text)


def test_summary_prints_the_hostile_row_literally(batch):
    _assert_literal(HOSTILE_PHRASE, pdftotext(batch.summary_pdf, layout=False))
