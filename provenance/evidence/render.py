"""A QueryResult as records, a text table, CSV or JSON (the CLI prints these; the app and reports can
reuse ``to_records`` / ``to_dict`` instead of re-deriving columns)."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict

from provenance.evidence.schema import QueryResult, RankedDocument

COLUMNS = (
    "rank", "doc_id", "source", "value", "value_share", "cumulative_share", "label", "similarity",
    "score", "longest_span_words", "span_coverage", "overlap", "verbatim_span", "output_passage",
    "document_passage", "document_start_char", "document_end_char",
)


def to_dict(result: QueryResult) -> dict:
    """Everything in the result as plain JSON-able data."""
    return asdict(result)


def record(row: RankedDocument, group: str = "rows") -> dict:
    e = row.evidence
    best = e.best_passage
    return {
        "rank": row.rank,
        "doc_id": row.doc_id,
        "source": row.source,
        "value": row.value,
        "value_share": row.value_share,
        "cumulative_share": row.cumulative_share,
        "label": e.label,
        "similarity": round(e.similarity, 4),
        "score": round(e.score, 4),
        "longest_span_words": e.longest_span_tokens,
        "span_coverage": round(e.span_coverage, 4),
        "overlap": round(e.overlap, 4),
        "verbatim_span": e.spans[0].text if e.spans else "",
        "output_passage": best.output_text if best else "",
        "document_passage": best.document_text if best else "",
        "document_start_char": best.document_start_char if best else None,
        "document_end_char": best.document_end_char if best else None,
        "group": group,
    }


def to_records(result: QueryResult) -> list[dict]:
    """One flat record per row (worked-against rows carry group = 'worked_against')."""
    records = [record(r) for r in result.rows] + [record(r, "worked_against") for r in result.worked_against]
    return [{**r, "value_is_approximate": result.approximate} for r in records]


def to_json(result: QueryResult) -> str:
    return json.dumps(to_dict(result), ensure_ascii=False, indent=2)


def to_csv(result: QueryResult) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(COLUMNS) + ["group", "value_is_approximate"], lineterminator="\n")
    writer.writeheader()
    for rec in to_records(result):
        writer.writerow(rec)
    return buffer.getvalue()


def _clip(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "\u2026"


def to_table(result: QueryResult, passage_width: int = 60) -> str:
    lines = []
    head = f"run {result.run_id}"
    if result.attributed:
        head += f" | target {result.target_id} (attributed, value order {result.value_order})"
    elif result.approximate:
        head += " | text not attributed: APPROXIMATE values from gradient sketches (confirm with replay)"
    else:
        head += " | text not attributed yet: ranked by evidence only"
    lines.append(head)
    lines.append(f"output: {_clip(result.text, 100)}")
    header = (
        f"{'rank':>4}  {'doc_id':<28} {'source':<16} {'value':>11} {'share':>6} {'cum':>6}  "
        f"{'label':<10} {'sim':>5} {'span':>4}  best matching passage (document side)"
    )
    lines.append(header)
    lines.append("-" * len(header))

    def fmt(row: RankedDocument) -> str:
        e = row.evidence
        value = "" if row.value is None else f"{'~' if result.approximate else ''}{row.value:+.3e}"
        share = "" if row.value_share is None else f"{row.value_share:6.1%}"
        cum = "" if row.cumulative_share is None else f"{row.cumulative_share:6.1%}"
        passage = _clip(e.best_passage.document_text, passage_width) if e.best_passage else ""
        return (
            f"{row.rank:>4}  {_clip(row.doc_id, 28):<28} {_clip(row.source, 16):<16} {value:>11} {share:>6} "
            f"{cum:>6}  {e.label:<10} {e.similarity:5.2f} {e.longest_span_tokens:>4}  {passage}"
        )

    lines.extend(fmt(r) for r in result.rows)
    if not result.rows:
        lines.append("  (no documents)")
    if result.worked_against:
        lines.append("worked against this output (negative values, no share):")
        lines.extend(fmt(r) for r in result.worked_against)
    if result.ledger is not None:
        led = result.ledger
        explained = "n/a" if led.explained_share is None else f"{led.explained_share:.1%}"
        lines.append(
            f"ledger: loss {led.initial_loss:.4f} -> {led.final_loss:.4f} (decrease {led.measured_decrease:+.4f}); "
            f"attributed {led.attributed_total:+.4f}, history {led.history_total:+.4f}; explained {explained}"
        )
    top = result.rows[0].evidence if result.rows else None
    if top is not None and top.spans:
        span = top.spans[0]
        lines.append(
            f"longest verbatim span of rank {result.rows[0].rank} ({span.n_tokens} words, output chars "
            f"{span.output_start_char}-{span.output_end_char}, document chars {span.document_start_char}-"
            f"{span.document_end_char}): \"{_clip(span.text, 120)}\""
        )
    if result.attributed:
        lines.append(result.share_definition)
    if result.attribute_command:
        lines.append(f"to attribute this text: {result.attribute_command}")
    for note in result.notes:
        lines.append(f"note: {note}")
    if result.latency_seconds is not None:
        lines.append(f"query time {result.latency_seconds * 1000:.0f} ms (index loaded; embedder {result.embedder})")
    return "\n".join(lines)
