"""The batch summary: one row per output with its top sources and their evidence labels (PDF + JSON)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from reportlab.lib.units import mm
from reportlab.platypus import Spacer

from provenance import __version__
from provenance.report.fonts import FontSet
from provenance.report.layout import Writer, build_pdf, fmt_share, frame_width
from provenance.report.markup import clip
from provenance.report.model import ReportData

TOP_SOURCES = 3
OUTPUT_PREVIEW = 160


@dataclass(frozen=True)
class SummaryEntry:
    """One report of the batch as the summary lists it."""

    data: ReportData
    pdf_file: str
    pdf_sha256: str
    json_file: str


def summary_json(entries: list[SummaryEntry], run_id: str, run_path: str, generated: str,
                 manifest_sha256: str, settings: dict[str, Any]) -> dict[str, Any]:
    return {
        "format": 1,
        "kind": "provenance attribution report batch summary",
        "run_id": run_id,
        "run_path": run_path,
        "manifest_sha256": manifest_sha256,
        "generated": generated,
        "tool_version": __version__,
        "settings": settings,
        "reports": [
            {
                "target_id": e.data.target.target_id,
                "target_sha256": e.data.target.sha256_now,
                "attributed": e.data.attributed,
                "explained_share": None if e.data.ledger is None else e.data.ledger.explained_share,
                "pdf": e.pdf_file,
                "pdf_sha256": e.pdf_sha256,
                "json": e.json_file,
                "top": [
                    {"rank": r.rank, "doc_id": r.doc_id, "source": r.source, "value": r.value, "share": r.share,
                     "label": r.label}
                    for r in e.data.rows[:TOP_SOURCES]
                ],
            }
            for e in entries
        ],
    }


def render_summary(entries: list[SummaryEntry], fonts: FontSet, *, run_id: str, run_path: str, generated: str,
                   manifest_sha256: str) -> bytes:
    w = Writer(fonts)
    s = w.styles
    story: list = [
        w.markup("Attribution reports: batch summary", s.title),
        w.markup(f"Run {w.safe(run_id)} &nbsp;|&nbsp; {len(entries)} outputs &nbsp;|&nbsp; generated {generated} "
                 f"&nbsp;|&nbsp; provenance {__version__}", s.subtitle),
        w.text(f"Run directory: {run_path}", s.small),
        w.text(f"manifest.json SHA-256: {manifest_sha256}", s.small),
        Spacer(1, 3 * mm),
        w.markup(
            "One row per output: its top sources by value (value share, evidence label) and the share of its "
            "measured loss decrease that the values explain. Each output has its own report (PDF and JSON) with "
            "the full table, charts, evidence excerpts and chain of custody.", s.body),
    ]
    width = frame_width(wide=True)
    widths = [9 * mm, 38 * mm, 70 * mm, 0, 20 * mm, 38 * mm]
    widths[3] = width - sum(widths)
    rows: list[list[object]] = [["#", "Target", "Output", f"Top {TOP_SOURCES} sources (share, evidence)",
                                 "Explained", "Report file"]]
    for i, e in enumerate(entries, 1):
        d = e.data
        preview, cut = clip(" ".join(d.target.text.split()), OUTPUT_PREVIEW)
        if not d.attributed:
            sources = "not attributed (ranked by evidence): " + "; ".join(
                f"{r.doc_id} ({r.label or 'n/a'})" for r in d.rows[:TOP_SOURCES])
        elif not d.rows:
            sources = "no document with a positive value"
        else:
            sources = "\n".join(f"#{r.rank} {r.doc_id} ({fmt_share(r.share)}, {r.label or 'no evidence'})"
                                for r in d.rows[:TOP_SOURCES])
        explained = "n/a" if d.ledger is None or d.ledger.explained_share is None else fmt_share(d.ledger.explained_share)
        rows.append([
            i,
            d.target.target_id if d.target.target_id is not None else "(free text)",
            w.text(preview + (" \u2026" if cut else ""), s.cell, line_breaks=False),
            w.text(sources, s.cell),
            explained,
            e.pdf_file,
        ])
    story.append(w.table(rows, widths))
    story.append(Spacer(1, 2 * mm))
    if entries:
        story.append(w.text(entries[0].data.share_definition, s.note))
        story.append(w.text(entries[0].data.value_definition, s.note))
    missing = sorted(w.mk.missing)
    if missing:
        story.append(w.text(
            f"{len(missing)} distinct character(s) have no glyph in the installed fonts and are drawn as boxes: "
            + ", ".join(f"U+{ord(c):04X}" for c in missing[:20]), s.note))
    return build_pdf(
        story,
        title=f"Attribution reports: batch summary of run {run_id}",
        subject=f"{len(entries)} outputs",
        timestamp=generated,
        footer=f"provenance {__version__} | batch summary | manifest sha256 {manifest_sha256[:16]}... | generated {generated}",
        wide=True,
    )
