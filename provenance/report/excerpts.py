"""Evidence excerpts: which part of the output and of each top document to print, and what to highlight.

The offsets come from the evidence layer (VerbatimSpan, PassagePair); this module only chooses windows
short enough to print and moves the span offsets into them.
"""

from __future__ import annotations

from provenance.evidence.schema import Evidence
from provenance.report.model import AlignedPair, Excerpt, ReportRow, TextPiece

EXCERPT_LIMIT = 900  # characters of each side of an excerpt
ALIGNED_PAIRS = 4  # aligned sentence pairs shown under each excerpt


def excerpts_for(rows: tuple[ReportRow, ...], output_text: str, documents: dict[str, str], count: int) -> tuple[Excerpt, ...]:
    """Excerpts of the first ``count`` rows that have evidence."""
    chosen = [r for r in rows if r.evidence is not None][:count]
    return tuple(_excerpt(r, output_text, documents.get(r.doc_id)) for r in chosen)


def _excerpt(row: ReportRow, output_text: str, doc_text: str | None) -> Excerpt:
    e: Evidence = row.evidence  # type: ignore[assignment]
    out_spans = [(sp.output_start_char, sp.output_end_char) for sp in e.spans]
    doc_spans = [(sp.document_start_char, sp.document_end_char) for sp in e.spans]
    longest = max(e.spans, key=lambda sp: sp.n_tokens) if e.spans else None
    output = piece(output_text, out_spans, (longest.output_start_char, longest.output_end_char) if longest else None)
    document = None
    if doc_text is not None:
        passage = None if e.best_passage is None else (e.best_passage.document_start_char, e.best_passage.document_end_char)
        focus = (longest.document_start_char, longest.document_end_char) if longest else passage
        document = piece(doc_text, doc_spans, focus, passage)
    aligned = []
    for pair in e.aligned_sentences[:ALIGNED_PAIRS]:
        start = output_text.find(pair.output_text)
        if start < 0:  # the aligned sentence is not found verbatim in the output: print it without highlights
            out_piece = TextPiece(pair.output_text[:EXCERPT_LIMIT], 0, min(len(pair.output_text), EXCERPT_LIMIT))
        else:
            out_piece = _cut(output_text, start, start + len(pair.output_text), out_spans)
        if doc_text is not None:
            doc_piece = _cut(doc_text, pair.document_start_char, pair.document_end_char, doc_spans)
        else:
            doc_piece = TextPiece(pair.document_text[:EXCERPT_LIMIT], pair.document_start_char,
                                  pair.document_start_char + min(len(pair.document_text), EXCERPT_LIMIT))
        aligned.append(AlignedPair(out_piece, doc_piece, float(pair.similarity)))
    return Excerpt(row.rank, row.doc_id, output, len(output_text), document,
                   None if doc_text is None else len(doc_text), tuple(aligned))


def window(length: int, focus: tuple[int, int] | None, passage: tuple[int, int] | None,
           limit: int = EXCERPT_LIMIT) -> tuple[int, int]:
    """The part of a text to print: the passage when it holds the focus and fits, else ``limit``
    characters centred on the focus (or the start of the text)."""
    if passage is not None and passage[1] - passage[0] <= limit and (
        focus is None or (passage[0] <= focus[0] and focus[1] <= passage[1])
    ):
        return passage
    if focus is None:
        return 0, min(length, limit)
    centre = (focus[0] + focus[1]) // 2
    start = max(0, min(centre - limit // 2, length - limit))
    return start, min(length, start + limit)


def piece(text: str, spans: list[tuple[int, int]], focus: tuple[int, int] | None,
          passage: tuple[int, int] | None = None) -> TextPiece:
    start, end = window(len(text), focus, passage)
    return _cut(text, start, end, spans)


def _cut(text: str, start: int, end: int, spans: list[tuple[int, int]]) -> TextPiece:
    end = min(end, start + EXCERPT_LIMIT, len(text))
    inside = tuple(
        (max(a, start) - start, min(b, end) - start) for a, b in sorted(spans) if a < end and b > start
    )
    return TextPiece(text[start:end], start, end, inside)
