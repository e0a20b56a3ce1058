"""One output's report as a PDF: title page, method, ranked table, charts, evidence excerpts side by side,
chain of custody, appendix. Every string that comes from the run goes through ``Writer.text``/``safe``
(escaped, font-covered, bidi-ordered); the markup here is the package's own.
"""

from __future__ import annotations

import json

from reportlab.lib.units import mm
from reportlab.platypus import Flowable, KeepTogether, PageBreak, Paragraph, Spacer

from provenance.evidence.schema import Evidence
from provenance.report import charts
from provenance.report.fonts import MONO, SANS_BOLD, FontSet
from provenance.report.layout import Writer, build_pdf, fmt_share, fmt_similarity, fmt_value, frame_width
from provenance.report.markup import Highlight, clip
from provenance.report.method import method_paragraphs
from provenance.report.model import Excerpt, ReportData, ReportRow, TextPiece

TARGET_TEXT_LIMIT = 3000  # characters of the output printed on the title page (the hash covers all of it)


def render_report(data: ReportData, fonts: FontSet) -> bytes:
    """The PDF bytes of one report (deterministic for equal ``data``)."""
    w = Writer(fonts)
    story: list = []
    story += _title_page(w, data)
    story.append(PageBreak())
    story += _method(w, data)
    story += _ranked_table(w, data)
    story += _charts(w, data)
    story += _excerpts(w, data)
    story += _custody(w, data)
    story += _appendix(w, data)
    story += _notes(w, data)  # last: it also lists characters no font could draw, found while building
    target_hash = data.target.sha256_now[:16]
    return build_pdf(
        story,
        title=f"Attribution report: {data.target.target_id or 'free text'}",
        subject=f"run {data.run.run_id}, target sha256 {data.target.sha256_now}",
        timestamp=data.generated,
        footer=f"provenance {data.tool_version} | attribution report | target sha256 {target_hash}... | "
        f"generated {data.generated}",
    )


# -- title page --------------------------------------------------------------------------------------------
def _title_page(w: Writer, data: ReportData) -> list:
    s = w.styles
    run, target = data.run, data.target
    out: list = [
        w.markup("Attribution report", s.title),
        w.markup("Which training documents produced this output, and how much did each contribute?", s.subtitle),
    ]
    model = run.architecture or "model"
    shape = ", ".join(f"{k} {v}" for k, v in run.model_shape.items())
    params = "n/a" if run.n_parameters is None else f"{run.n_parameters:,}"
    facts = [
        ("Run", f"{run.run_id} (status {run.status}, created {run.created or 'n/a'})"),
        ("Run directory", run.path),
        ("Model", f"{model}; {shape}; {params} stored parameters; vocabulary {run.vocab_size or 'n/a'}"),
        ("Corpus", f"{run.n_documents:,} documents"
         + (f", {run.n_chunks:,} chunks" if run.n_chunks is not None else "")),
        ("Corpus SHA-256", run.corpus_sha256 or "not recorded"),
        ("Target id", target.target_id if target.target_id is not None else "(free text, not a registered target)"),
        ("Target SHA-256", f"{target.sha256_now}  (sha256 of prompt + NUL + text)"),
        ("Values", f"In-Run Data Shapley, order {run.value_order}; {run.value_unit}; sign: {run.value_sign}"
         if data.attributed else "not attributed: documents ranked by evidence only"),
        ("Generated", data.generated),
        ("Tool version", f"provenance {data.tool_version}; run made with "
         + ", ".join(f"{k} {v}" for k, v in run.versions.items())),
    ]
    width = frame_width()
    out += [w.table([list(f) for f in facts], [32 * mm, width - 32 * mm], header=False, stripes=False,
                    bold_columns=(0,)), Spacer(1, 5 * mm)]
    out.append(w.markup("Prompt", s.h2))
    out.append(w.text(target.prompt if target.prompt else "(empty prompt)", s.body))
    out.append(w.markup("Output (the target text)", s.h2))
    shown, cut = clip(target.text, TARGET_TEXT_LIMIT)
    out.append(w.text(shown, s.body))
    if cut:
        out.append(w.markup(
            f"The output is {len(target.text):,} characters long; the first {len(shown):,} are printed. The hash and "
            "the sidecar JSON cover the whole text.", s.note))
    return out


# -- method --------------------------------------------------------------------------------------------------
def _method(w: Writer, data: ReportData) -> list:
    s = w.styles
    out: list = [w.markup("1. Method", s.h1)]
    for heading, paragraph in method_paragraphs(data):
        if heading:
            out.append(w.markup(heading, s.h2))
        out.append(w.markup(paragraph, s.body))
    return out


# -- ranked table --------------------------------------------------------------------------------------------
def _ranked_table(w: Writer, data: ReportData) -> list:
    s = w.styles
    out: list = [w.markup("2. Ranked documents", s.h1)]
    if data.attributed:
        out.append(w.markup(
            f"{data.n_positive:,} documents have a positive value for this output, {data.n_negative:,} a negative "
            f"value and {data.n_zero:,} a value of exactly zero. The table lists the top {len(data.rows)} by "
            "value (rank 1 = largest value).", s.body))
    else:
        out.append(w.markup(
            "This output has no attribution values in the run yet; the documents are ranked by evidence "
            "only (label first, then the calibrated paraphrase score), so value and share columns are empty.", s.body))
    width = frame_width()
    widths = [10 * mm, 42 * mm, 27 * mm, 21 * mm, 15 * mm, 15 * mm, 18 * mm, 0]
    widths[-1] = width - sum(widths)
    head = ["Rank", "Document", "Source", "Value", "Share", "Cum. share", "Evidence", "Similarity"]
    rows = [head] + [_ranked_cells(r) for r in data.rows]
    if data.rows:
        out.append(w.table(rows, widths))
    else:
        out.append(w.markup("No document has a positive value for this output.", s.body))
    out.append(Spacer(1, 2 * mm))
    out.append(w.text(data.value_definition, s.note))
    out.append(w.text(data.share_definition, s.note))
    out.append(w.markup(
        "Evidence: <i>verbatim</i> = the output and the document share a word-for-word span or shared spans cover "
        "much of the output; <i>paraphrase</i> = a calibrated score over embedding similarity, word overlap and "
        "spans says the document restates the output; <i>topic</i> = similar subject only; <i>unrelated</i> = "
        "none of these. Similarity = cosine similarity of the output and the document's best matching passage "
        "(sentence embeddings).", s.note))
    if data.worked_against:
        out.append(w.markup("Worked against this output", s.h2))
        out.append(w.markup(
            "Documents with negative values raised this output's loss: they get no share.", s.body))
        head = ["Rank", "Document", "Source", "Value", "Evidence", "Similarity"]
        aw = [10 * mm, 52 * mm, 35 * mm, 24 * mm, 22 * mm, 0]
        aw[-1] = width - sum(aw)
        rows = [head] + [
            [r.rank, r.doc_id, r.source, fmt_value(r.value), r.label or "n/a", fmt_similarity(r.similarity)]
            for r in data.worked_against
        ]
        out.append(w.table(rows, aw))
    return out


def _ranked_cells(r: ReportRow) -> list:
    return [
        r.rank, r.doc_id, r.source, fmt_value(r.value), fmt_share(r.share), fmt_share(r.cumulative_share),
        r.label or "n/a", fmt_similarity(r.similarity),
    ]


# -- charts ------------------------------------------------------------------------------------------------------
class _Picture(Flowable):
    """A chart (PIL image) drawn at ``width`` points wide (platypus' Image wants a file, not pixels)."""

    def __init__(self, picture, width: float) -> None:
        super().__init__()
        pw, ph = picture.size
        self.picture = picture
        self.width, self.height = width, width * ph / pw

    def wrap(self, available_width: float, available_height: float) -> tuple[float, float]:
        return self.width, self.height

    def draw(self) -> None:
        from reportlab.lib.utils import ImageReader

        self.canv.drawImage(ImageReader(self.picture), 0, 0, self.width, self.height)


def _image(picture, width: float) -> _Picture:
    return _Picture(picture, width)


def _charts(w: Writer, data: ReportData) -> list:
    s = w.styles
    heading = w.markup("3. Charts", s.h1)
    if not data.attributed or not data.rows:
        return [heading, w.markup("No values to chart for this output.", s.body)]
    width = frame_width()
    out: list = []
    out.append(KeepTogether([  # the heading travels with the first chart (KeepTogether ignores keepWithNext)
        heading,
        _image(charts.share_chart(data.rows), width),
        w.markup("Bars are labelled by rank; the ranked table maps ranks to documents. Bar colour = evidence label.",
                 s.note),
    ]))
    if any(t.steps for t in data.trajectories):
        out.append(Spacer(1, 3 * mm))
        out.append(KeepTogether([
            _image(charts.trajectory_chart(data.trajectories, data.run.value_unit, data.step_range), width),
            w.markup(
                f"Value of the top {len(data.trajectories)} documents summed over the training steps so far (from "
                "contributions.parquet, all chunks of a document together). The last point of each line is the "
                "document's value in the table. A line is flat over the steps where its document was not in the "
                "batch.", s.note),
        ]))
    return out


# -- evidence excerpts ---------------------------------------------------------------------------------------------
def _excerpts(w: Writer, data: ReportData) -> list:
    s = w.styles
    out: list = [w.markup("4. Evidence excerpts", s.h1)]
    if not data.evidence.available:
        out.append(w.text(data.evidence.message, s.body))
        return out
    if not data.excerpts:
        out.append(w.markup("No rows to show.", s.body))
        return out
    out.append(w.markup(
        "For each of the top documents: the output (left) and the document's best matching passage (right). "
        "Word-for-word shared spans are highlighted on both sides. Below them, each output sentence is paired "
        "with the most similar sentence of that passage.", s.body))
    rows_by_rank = {r.rank: r for r in data.rows}
    for excerpt in data.excerpts:
        out += _excerpt(w, excerpt, rows_by_rank[excerpt.rank])
    return out


def _piece_markup(w: Writer, piece: TextPiece, full_length: int | None) -> str:
    body = w.mk(piece.text, highlights=[Highlight(a, b) for a, b in piece.highlights])
    prefix = "\u2026 " if piece.start > 0 else ""
    suffix = " \u2026" if full_length is not None and piece.end < full_length else ""
    return prefix + body + suffix


def _excerpt(w: Writer, excerpt: Excerpt, row: ReportRow) -> list:
    s = w.styles
    e: Evidence = row.evidence  # type: ignore[assignment]
    heading = w.markup(
        f"#{row.rank} &nbsp; {w.safe(row.doc_id, SANS_BOLD)} &nbsp; <font size=8>({w.safe(row.source, SANS_BOLD)}; "
        f"{e.label}, similarity {fmt_similarity(e.similarity)}, longest shared span {e.longest_span_tokens} words, "
        f"span coverage {100 * e.span_coverage:.1f}%)</font>", s.h2)
    doc = excerpt.document
    half = frame_width() / 2
    rows = [
        [w.markup(f"Output (characters {excerpt.output.start}-{excerpt.output.end})", s.cell_head),
         w.markup("Document (text not in corpus.parquet)" if doc is None else
                  f"Document (characters {doc.start}-{doc.end})", s.cell_head)],
        [Paragraph(_piece_markup(w, excerpt.output, excerpt.output_length), s.cell),
         Paragraph("" if doc is None else _piece_markup(w, doc, excerpt.document_length), s.cell)],
    ]
    for pair in excerpt.aligned:
        rows.append([
            Paragraph(_piece_markup(w, pair.output, None), s.cell),
            Paragraph(_piece_markup(w, pair.document, None)
                      + f" <font color='#6c757d' size=6.5>[similarity {fmt_similarity(pair.similarity)}]</font>", s.cell),
        ])
    table = w.table(rows, [half, half], header=True, stripes=False)
    if not e.spans:
        note = w.markup("No word-for-word span of the minimum length is shared with this document.", s.note)
    else:
        longest = max(e.spans, key=lambda sp: sp.n_tokens)
        note = w.markup(
            f"Longest shared span ({longest.n_tokens} words): output characters {longest.output_start_char}-"
            f"{longest.output_end_char}, document characters {longest.document_start_char}-"
            f"{longest.document_end_char}.", s.note)
    return [KeepTogether([heading, table, note]), Spacer(1, 3 * mm)]


# -- chain of custody -----------------------------------------------------------------------------------------------
def _custody(w: Writer, data: ReportData) -> list:
    s = w.styles
    out: list = [PageBreak(), w.markup("5. Chain of custody", s.h1)]
    out.append(w.markup(
        "SHA-256 of the files this report was built from, as recorded in the run's manifest.json at training "
        "time, and whether each file still has that hash now (checked while this report was generated).", s.body))
    width = frame_width()
    widths = [46 * mm, 0, 20 * mm]
    widths[1] = width - widths[0] - widths[2]
    rows: list[list[object]] = [["File", "SHA-256 (recorded in manifest.json)", "Now"]]
    for f in data.custody:
        rows.append([f.path, f.recorded or f.actual or "n/a", f.status])
        if f.status == "DIFFERS":
            rows.append(["  now", f.actual, ""])
    out.append(w.table(rows, widths, mono_columns=(1,)))
    out.append(Spacer(1, 3 * mm))
    run, target, ev = data.run, data.target, data.evidence
    facts = [
        ("manifest.json (now)", data.manifest_sha256),
        ("Corpus (recorded)", run.corpus_sha256 or "not recorded"),
        ("Corpus (recomputed)", run.corpus_sha256_now),
        ("Tokenizer", run.tokenizer_sha256 or "not recorded"),
        ("Target (recorded)", target.sha256 or "not a registered target"),
        ("Target (recomputed)", target.sha256_now),
    ]
    for name, digest in run.model_sha256.items():
        facts.append((f"Model: {name}", digest))
    if ev.available:
        facts += [("Embedder " + (ev.embedder or ""), ev.embedder_sha256 or "n/a"),
                  ("Evidence index corpus", ev.index_corpus_sha256 or "n/a"),
                  ("Label thresholds", ev.thresholds_sha256 or "n/a")]
    out.append(w.table([["Item", "SHA-256"], *map(list, facts)], [46 * mm, width - 46 * mm], mono_columns=(1,)))
    corpus_ok = run.corpus_sha256 is None or run.corpus_sha256 == run.corpus_sha256_now
    target_ok = target.sha256 is None or target.sha256 == target.sha256_now
    out.append(w.markup(
        "The recorded and recomputed corpus fingerprints " + ("agree." if corpus_ok else "<b>DIFFER</b>.")
        + " The recorded and recomputed target hashes " + ("agree." if target_ok else "<b>DIFFER</b>."), s.note))
    if data.rows or data.worked_against:
        out.append(w.markup("Documents in this report", s.h2))
        rows = [["Rank", "Document", "SHA-256 of the document's UTF-8 text"]]
        for r in list(data.rows) + list(data.worked_against):
            rows.append([r.rank, r.doc_id, r.doc_sha256 or "n/a"])
        out.append(w.table(rows, [12 * mm, 52 * mm, width - 64 * mm], mono_columns=(2,)))
    out.append(w.markup("How to check", s.h2))
    out.append(w.markup(
        "<font name='%s'>%s</font> recomputes every hash the manifest records (documents, tokenizer, weights, "
        "tables) and re-derives the values of sampled training steps independently (per-example gradients, "
        "float64). A run that passes has the files and values this report was built from." % (MONO, w.safe(data.verify_command, MONO)),
        s.body))
    return out


# -- appendix -----------------------------------------------------------------------------------------------------
def _appendix(w: Writer, data: ReportData) -> list:
    s = w.styles
    out: list = [PageBreak(), w.markup("Appendix: how to reproduce this report", s.h1)]
    out.append(w.markup(
        "This command, run on the same run directory with the same provenance version, writes a byte-identical "
        "PDF (the output folder, set with --out, does not change the bytes):", s.body))
    out.append(w.text(data.reproduce_command, s.mono))
    if data.target.target_id is None:
        out.append(w.markup(
            "OUTPUT.txt holds the output text exactly as printed on the title page (SHA-256 of the empty prompt, "
            "a NUL and the text: the target hash above).", s.note))
    if data.attribute_command:
        out.append(w.markup("To attribute this output (a replay of the run with it as a target):", s.body))
        out.append(w.text(data.attribute_command, s.mono))
    out.append(w.markup("Report settings", s.h2))
    out.append(w.text(json.dumps(data.settings.to_json(), indent=2, sort_keys=True), s.mono, preserve_spaces=True))
    out.append(w.markup("Fonts", s.h2))
    out.append(w.text("\n".join(f"{k}: {v}" for k, v in sorted(data.fonts.items())), s.mono))
    out.append(w.markup("Run configuration (manifest.json \"config\")", s.h2))
    out.append(w.text(json.dumps(data.run.config, indent=2, sort_keys=True, ensure_ascii=False), s.mono_small,
                      preserve_spaces=True))
    return out


def _notes(w: Writer, data: ReportData) -> list:
    s = w.styles
    notes = list(data.notes)
    if not data.evidence.available:
        notes.append(data.evidence.message)
    missing = sorted(w.mk.missing)
    if missing:
        shown = ", ".join(f"U+{ord(c):04X}" for c in missing[:20])
        notes.append(
            f"{len(missing)} distinct character(s) have no glyph in the installed fonts and are drawn as boxes: "
            f"{shown}{' ...' if len(missing) > 20 else ''}. The sidecar JSON holds the exact text.")
    if not notes:
        return []
    out: list = [w.markup("Notes", s.h2)]
    out += [w.text(n, s.note) for n in notes]
    return out
