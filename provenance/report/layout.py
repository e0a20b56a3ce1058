"""Page setup shared by the per-output reports and the batch summary: styles, number formats, the
deterministic canvas (fixed creation date, invariant PDF id) and the build into bytes.

Number formats are part of the report's contract (docs/reports.md) so that a reader or a test can
compare the printed numbers with the run's files: values ``%+.4e``, shares ``%.2f%%``, similarities
``%.3f``.
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass

from reportlab import rl_config
from reportlab.lib import colors
from reportlab.lib.enums import TA_LEFT
from reportlab.lib.pagesizes import A4, landscape
from reportlab.lib.styles import ParagraphStyle
from reportlab.lib.units import mm
from reportlab.pdfbase.pdfmetrics import stringWidth
from reportlab.pdfgen.canvas import Canvas
from reportlab.platypus import Flowable, Paragraph, SimpleDocTemplate, Table, TableStyle

from provenance.report.fonts import MONO, SANS, SANS_BOLD, FontSet
from provenance.report.markup import MarkupMaker
from provenance.report.settings import epoch_seconds

# Binary (Flate only) streams: ASCII85 encoding of the chart images is slow pure Python and 25% larger.
rl_config.useA85 = 0

MARGIN = 16 * mm
CELL_PADDING = 3
CELL_SIZE = 7.5
CELL_LEADING = 9
MONO_SIZE = 6.6
GRID = colors.HexColor("#c8ccd0")
HEADER_BG = colors.HexColor("#eef1f4")
STRIPE_BG = colors.HexColor("#f8f9fa")


def fmt_value(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.4e}"


def fmt_share(share: float | None) -> str:
    return "n/a" if share is None else f"{100.0 * share:.2f}%"


def fmt_similarity(similarity: float | None) -> str:
    return "n/a" if similarity is None else f"{similarity:.3f}"


@dataclass(frozen=True)
class Styles:
    body: ParagraphStyle
    small: ParagraphStyle
    cell: ParagraphStyle
    cell_head: ParagraphStyle
    mono: ParagraphStyle
    mono_small: ParagraphStyle
    title: ParagraphStyle
    subtitle: ParagraphStyle
    h1: ParagraphStyle
    h2: ParagraphStyle
    note: ParagraphStyle


def make_styles() -> Styles:
    def style(name: str, **kw) -> ParagraphStyle:
        base = dict(fontName=SANS, fontSize=9, leading=12, alignment=TA_LEFT, splitLongWords=1, spaceAfter=0)
        base.update(kw)
        return ParagraphStyle(name, **base)

    return Styles(
        body=style("body", spaceAfter=4),
        small=style("small", fontSize=7.5, leading=9.5),
        cell=style("cell", fontSize=7.5, leading=9),
        cell_head=style("cell_head", fontName=SANS_BOLD, fontSize=7.5, leading=9),
        mono=style("mono", fontName=MONO, fontSize=7.5, leading=9.5),
        mono_small=style("mono_small", fontName=MONO, fontSize=6.6, leading=8.2),
        title=style("title", fontName=SANS_BOLD, fontSize=20, leading=25, spaceAfter=6),
        subtitle=style("subtitle", fontSize=11, leading=14, textColor=colors.HexColor("#4d5656"), spaceAfter=10),
        h1=style("h1", fontName=SANS_BOLD, fontSize=13, leading=16, spaceBefore=8, spaceAfter=5, keepWithNext=1),
        h2=style("h2", fontName=SANS_BOLD, fontSize=10, leading=13, spaceBefore=6, spaceAfter=3, keepWithNext=1),
        note=style("note", fontSize=7.5, leading=9.5, textColor=colors.HexColor("#4d5656")),
    )


class Writer:
    """Paragraph factory: every untrusted string goes through the markup maker (escaping, fonts, bidi)."""

    def __init__(self, fonts: FontSet) -> None:
        self.fonts = fonts
        self.mk = MarkupMaker(fonts)
        self.styles = make_styles()

    def text(self, value: object, style: ParagraphStyle | None = None, **kw) -> Paragraph:
        """A paragraph of literal (untrusted) text."""
        style = style or self.styles.body
        return Paragraph(self.mk(str(value), base_font=style.fontName, **kw), style)

    def markup(self, trusted_markup: str, style: ParagraphStyle | None = None) -> Paragraph:
        """A paragraph of markup written by this package (dynamic parts already passed through ``safe``)."""
        return Paragraph(trusted_markup, style or self.styles.body)

    def safe(self, value: object, base_font: str = SANS) -> str:
        return self.mk(str(value), base_font=base_font)

    def table(self, rows: list[list[object]], widths: list[float], *, header: bool = True, stripes: bool = True,
              mono_columns: tuple[int, ...] = (), bold_columns: tuple[int, ...] = ()) -> Table:
        """A grid table. Cells may be flowables, or values: a value that is short printable ASCII and fits its
        column is drawn as a plain string (no markup parsing, no wrapping: cheap); anything else becomes a
        paragraph through the markup maker (escaped, wrapped, font-covered)."""
        cells = []
        for i, row in enumerate(rows):
            head = header and i == 0
            out: list[object] = []
            for j, value in enumerate(row):
                if isinstance(value, Flowable):
                    out.append(value)
                    continue
                font, size = self._cell_font(head, j in mono_columns, j in bold_columns)
                out.append(self._cell(str(value), font, size, widths[j]))
            cells.append(out)
        table = Table(cells, colWidths=widths, repeatRows=1 if header else 0)
        commands = [
            ("GRID", (0, 0), (-1, -1), 0.4, GRID),
            ("VALIGN", (0, 0), (-1, -1), "TOP"),
            ("LEFTPADDING", (0, 0), (-1, -1), CELL_PADDING),
            ("RIGHTPADDING", (0, 0), (-1, -1), CELL_PADDING),
            ("TOPPADDING", (0, 0), (-1, -1), 2),
            ("BOTTOMPADDING", (0, 0), (-1, -1), 2),
            ("FONTNAME", (0, 0), (-1, -1), SANS),
            ("FONTSIZE", (0, 0), (-1, -1), CELL_SIZE),
            ("LEADING", (0, 0), (-1, -1), CELL_LEADING),
        ]
        first = 1 if header else 0
        for j in mono_columns:
            commands += [("FONTNAME", (j, first), (j, -1), MONO), ("FONTSIZE", (j, first), (j, -1), MONO_SIZE)]
        for j in bold_columns:
            commands.append(("FONTNAME", (j, first), (j, -1), SANS_BOLD))
        if header:
            commands += [("BACKGROUND", (0, 0), (-1, 0), HEADER_BG), ("FONTNAME", (0, 0), (-1, 0), SANS_BOLD),
                         ("FONTSIZE", (0, 0), (-1, 0), CELL_SIZE)]
        if stripes:
            for i in range(first + 1, len(cells), 2):
                commands.append(("BACKGROUND", (0, i), (-1, i), STRIPE_BG))
        table.setStyle(TableStyle(commands))
        return table

    def _cell_font(self, head: bool, mono: bool, bold: bool) -> tuple[str, float]:
        if head or bold:
            return SANS_BOLD, CELL_SIZE
        return (MONO, MONO_SIZE) if mono else (SANS, CELL_SIZE)

    def _cell(self, text: str, font: str, size: float, width: float) -> object:
        if text.isascii() and text.isprintable() and stringWidth(text, font, size) <= width - 2 * CELL_PADDING:
            return text
        style = {SANS: self.styles.cell, SANS_BOLD: self.styles.cell_head, MONO: self.styles.mono_small}[font]
        return Paragraph(self.mk(text, base_font=font, line_breaks=False), style)


def fixed_time_canvas(epoch: int) -> type[Canvas]:
    """A canvas whose PDF creation/modification dates are ``epoch`` and whose id is invariant, so the same
    content gives the same bytes."""

    class _Canvas(Canvas):
        def __init__(self, *args, **kwargs):
            kwargs["invariant"] = 1
            super().__init__(*args, **kwargs)
            stamp = self._doc._timeStamp
            gm = time.gmtime(epoch)
            stamp.t, stamp.lt, stamp.YMDhms = epoch, gm, tuple(gm)[:6]
            stamp.dhh = stamp.dmm = 0
            stamp.tzname = "UTC"

    return _Canvas


def build_pdf(
    story: list[Flowable],
    *,
    title: str,
    subject: str,
    timestamp: str,
    footer: str,
    wide: bool = False,
) -> bytes:
    """Lay out ``story`` on A4 (landscape when ``wide``) and return the PDF bytes."""
    pagesize = landscape(A4) if wide else A4
    buffer = io.BytesIO()
    document = SimpleDocTemplate(
        buffer,
        pagesize=pagesize,
        leftMargin=MARGIN,
        rightMargin=MARGIN,
        topMargin=MARGIN,
        bottomMargin=MARGIN + 4 * mm,
        title=title,
        author="provenance",
        subject=subject,
        creator="provenance report",
        invariant=1,
    )

    def on_page(canvas: Canvas, doc) -> None:
        canvas.saveState()
        canvas.setFont(SANS, 7)
        canvas.setFillColor(colors.HexColor("#6c757d"))
        canvas.drawString(MARGIN, MARGIN * 0.6, footer)
        canvas.drawRightString(pagesize[0] - MARGIN, MARGIN * 0.6, f"page {doc.page}")
        canvas.restoreState()

    document.build(story, onFirstPage=on_page, onLaterPages=on_page,
                   canvasmaker=fixed_time_canvas(epoch_seconds(timestamp)))
    return buffer.getvalue()


def frame_width(wide: bool = False) -> float:
    pagesize = landscape(A4) if wide else A4
    return pagesize[0] - 2 * MARGIN

