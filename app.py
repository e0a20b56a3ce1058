"""provenance for auditors: which training documents produced this output, how much, and the evidence.

    streamlit run app.py                          # runs in ./attribution_runs
    streamlit run app.py -- --runs path/to/runs   # or set PROVENANCE_RUNS_DIR

A thin, read-only shell over the package: values and run facts come from provenance.store, rankings
and evidence from provenance.evidence, PDF reports from provenance.report (when it is installed). The
app writes nothing but the reports a user asks for. Training documents and outputs are untrusted text:
they are only ever shown escaped (st.html of escaped text, tables, plain selectbox labels), never as
Markdown or HTML.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import altair as alt  # noqa: E402
import pandas as pd  # noqa: E402
import streamlit as st  # noqa: E402

from provenance import app_support as sup  # noqa: E402
from provenance.errors import EvidenceIndexError, ProvenanceError, SketchMismatchError, TargetError  # noqa: E402
from provenance.evidence.schema import LABELS, SHARE_DEFINITION, VALUE_DEFINITION  # noqa: E402
from provenance.evidence.specific import MIN_REFERENCE_TARGETS  # noqa: E402

UNIT = "nats per output token"
MODE_TARGET = "A registered target"
MODE_TEXT = "A new output text"
RANKINGS = {"value": "value (largest first)", "combined": "combined (evidence, then target-specific value)"}
MAKE_A_RUN = """\
# the shipped demo (a few minutes on a CPU): trains a small GPT-2 with attribution, writes attribution_runs/demo
provenance demo
# or your own corpus and outputs ({"id", "prompt", "text"} per line in targets.jsonl)
provenance train --corpus my_docs/ --run my-run --targets targets.jsonl
# then build the evidence index the app uses for labels, spans and paraphrase alignment
provenance index --run my-run"""


# -- cached reads (keyed by the run's path and a fingerprint of its files: an edit invalidates them) -----
@st.cache_data(show_spinner=False, max_entries=64)
def run_problem(path: str, manifest_stamp: tuple) -> str | None:
    """Why a run cannot be shown (None when it opens): newer format, unfinished, corrupt manifest."""
    from provenance.store.run_dir import RunDirectory

    try:
        RunDirectory.open(path)
    except ProvenanceError as exc:
        return str(exc)
    return None


@st.cache_data(show_spinner=False, max_entries=16)
def cached_facts(path: str, fingerprint: tuple) -> sup.RunFacts:
    from provenance.store.run_dir import RunDirectory

    run = RunDirectory.open(path)
    return sup.run_facts(run.read_manifest(), run.train_log_path)


@st.cache_data(show_spinner=False, max_entries=16)
def cached_targets(path: str, fingerprint: tuple) -> pd.DataFrame:
    from provenance.store.query import list_targets

    return list_targets(path)


@st.cache_data(show_spinner=False, max_entries=16)
def cached_sources(path: str, fingerprint: tuple) -> list[str]:
    from provenance.store.run_dir import RunDirectory

    return sup.corpus_sources(RunDirectory(path).corpus_path)


@st.cache_data(show_spinner=False, max_entries=64)
def cached_values(path: str, fingerprint: tuple, target_id: str) -> pd.DataFrame | None:
    """Every document ranked for the target (None when the target has no values yet)."""
    from provenance.store.query import top_values

    try:
        return top_values(path, target_id, top=None)
    except TargetError:
        return None


@st.cache_data(show_spinner=False, max_entries=64)
def cached_ledger(path: str, fingerprint: tuple, target_id: str):
    from provenance.evidence.answer import _ledger_summary
    from provenance.store.run_dir import RunDirectory

    return _ledger_summary(RunDirectory.open(path), target_id)


@st.cache_data(show_spinner=False, max_entries=16)
def cached_verify(path: str, fingerprint: tuple):
    from provenance.store.run_dir import RunDirectory
    from provenance.store.verify import verify_hashes

    return verify_hashes(RunDirectory.open(path))


@st.cache_data(show_spinner=False, max_entries=128)
def cached_contributions(
    path: str, fingerprint: tuple, target_id: str, doc_ids: tuple[str, ...], order: int | None
) -> pd.DataFrame:
    from provenance.store.run_dir import RunDirectory

    return sup.document_contributions(RunDirectory(path).contributions_path, target_id, doc_ids, order)


@st.cache_data(show_spinner=False, max_entries=16)
def cached_chunks(path: str, fingerprint: tuple) -> pd.DataFrame:
    from provenance.store.run_dir import RunDirectory
    from provenance.store.tables import read_table

    return read_table(RunDirectory(path).chunks_path, "chunks")


@st.cache_resource(show_spinner=False, max_entries=4)
def cached_tokenizer(path: str, fingerprint: tuple):
    from provenance.data.tokenizer import load_tokenizer
    from provenance.store.run_dir import RunDirectory

    return load_tokenizer(RunDirectory(path).tokenizer_path)


@st.cache_resource(show_spinner=False, max_entries=4)
def cached_index(path: str, fingerprint: tuple):
    """The evidence index (FAISS, passages, n-grams, BM25, the encoder): loaded once per run version."""
    from provenance.evidence import load_index

    return load_index(path)


@st.cache_data(show_spinner=False, max_entries=64)
def cached_query(path: str, fingerprint: tuple, target_id: str | None, text: str | None, top_k: int, _index,
                 approximate: bool = False, ranking: str = "value"):
    from provenance.evidence import query

    sketches = cached_sketch_query(path, fingerprint) if approximate else None
    chunk_values = cached_chunk_values(path, fingerprint) if ranking == "combined" else None
    return query(path, target_id=target_id, text=text, top_k=top_k, index=_index, approximate=approximate,
                 sketch_query=sketches, order=ranking, chunk_values=chunk_values)


@st.cache_resource(show_spinner=False, max_entries=2)
def cached_chunk_values(path: str, fingerprint: tuple):
    """Per-chunk values of every target (contributions.parquet), read once for the combined ranking."""
    from provenance.evidence.specific import load_chunk_values

    return load_chunk_values(path)


@st.cache_resource(show_spinner=False, max_entries=2)
def cached_sketch_query(path: str, fingerprint: tuple):
    """The run's gradient sketches opened once (model, anchors, mapped rows): each query then takes seconds."""
    from provenance.sketch import ApproximateQuery

    return ApproximateQuery(path)


@st.cache_data(show_spinner=False, max_entries=256)
def cached_evidence(path: str, fingerprint: tuple, text: str, doc_id: str, _index):
    from provenance.evidence import evidence_for

    return evidence_for(text, _index.texts[_index.doc_index[doc_id]], index=_index, doc_id=doc_id)


# -- small renderers -------------------------------------------------------------------------------------
def show_text(text: str, marks=()) -> None:
    """Untrusted text, escaped, with optional highlights."""
    st.html(sup.highlighted_html(text, marks))


def show_plain(text: str, tag: str = "div", style: str = "") -> None:
    st.html(sup.plain_html(text, tag=tag, style=style))


def show_error(message: str) -> None:
    st.error(sup.markdown_literal(message))


def fmt_share(value: float | None) -> str:
    return "n/a" if value is None or pd.isna(value) else f"{value:.1%}"


def table_config(approximate: bool = False) -> dict:
    value = (st.column_config.NumberColumn(f"APPROXIMATE value ({UNIT})", format="%.3e",
                                           help="Estimated from the run's gradient sketches, not exact. "
                                                + VALUE_DEFINITION)
             if approximate else st.column_config.NumberColumn(f"value ({UNIT})", format="%.3e", help=VALUE_DEFINITION))
    return {
        "rank": st.column_config.NumberColumn("rank", help="1 = largest value for this output"),
        "doc_id": st.column_config.TextColumn("document"),
        "source": st.column_config.TextColumn("source"),
        "value": value,
        "value_share": st.column_config.NumberColumn("value share", format="percent", help=SHARE_DEFINITION),
        "cumulative_share": st.column_config.NumberColumn("cumulative share", format="percent",
                                                          help=SHARE_DEFINITION),
        "label": st.column_config.TextColumn(
            "evidence", help="verbatim: shared word spans; paraphrase: calibrated paraphrase score; "
            "topic: similar subject; unrelated: none of these"),
        "similarity": st.column_config.NumberColumn("similarity", format="%.2f",
                                                    help="cosine similarity of the best passage (sentence embedder)"),
        "longest_span_words": st.column_config.NumberColumn("longest verbatim span (words)"),
        "verbatim_span": st.column_config.TextColumn("longest verbatim span"),
    }


# -- page sections ---------------------------------------------------------------------------------------
def show_empty_root(root: Path) -> None:
    st.info(sup.markdown_literal(f"No runs found in {root.resolve()}. Make one, then reload this page:"))
    st.code(MAKE_A_RUN, language="bash")
    st.caption("The app reads runs from ./attribution_runs; point it elsewhere with "
               "`streamlit run app.py -- --runs DIR` or the `PROVENANCE_RUNS_DIR` variable.")


def show_summary(facts: sup.RunFacts):
    """Run facts; returns the slot the hash check fills once the page is drawn."""
    st.header("Run")
    cols = st.columns(5)
    cols[0].metric("documents", "n/a" if facts.n_documents is None else f"{facts.n_documents:,}")
    cols[1].metric("chunks (players)", "n/a" if facts.n_chunks is None else f"{facts.n_chunks:,}")
    steps = facts.steps_logged if facts.steps_logged is not None else facts.steps_configured
    cols[2].metric("training steps", "n/a" if steps is None else f"{steps:,}")
    cols[3].metric("value order", "n/a" if facts.value_order is None else str(facts.value_order))
    cols[4].metric("status", facts.status)
    show_plain(f"run {facts.run_id} · created {facts.created or 'n/a'} · {facts.model}", style="color:#555")
    show_plain(f"values: {facts.value_sign or 'sign not recorded'}; unit: {facts.value_unit or 'not recorded'}",
               style="color:#555")
    verify_slot = st.container()
    with st.expander("Recorded hashes (manifest.json)"):
        rows = [("corpus (sorted document hashes)", facts.corpus_sha256), ("tokenizer", facts.tokenizer_sha256)]
        rows += [(name, digest) for name, digest in sorted(facts.model_sha256.items())]
        rows += [(name, digest) for name, digest in sorted(facts.file_hashes.items())
                 if name not in facts.model_sha256]
        st.dataframe(pd.DataFrame(rows, columns=["file", "sha256"]), hide_index=True, width="stretch")
        if facts.versions:
            show_plain("software: " + ", ".join(f"{k} {v}" for k, v in sorted(facts.versions.items())),
                       style="color:#555")
    return verify_slot


def show_verification(slot, path: str, fingerprint: tuple) -> None:
    with slot:
        report = cached_verify(path, fingerprint)
        if report.findings:
            st.error(sup.markdown_literal(
                f"Hash check FAILED: {len(report.findings)} finding(s) over {report.files_checked} recorded "
                f"files and {report.documents_checked} documents. The values of this run cannot be trusted "
                "until this is explained."))
            st.dataframe(pd.DataFrame([(f.file, f.problem) for f in report.findings], columns=["file", "problem"]),
                         hide_index=True, width="stretch")
        else:
            st.success(sup.markdown_literal(
                f"Hash check passed: {report.files_checked} recorded files and {report.documents_checked} "
                "documents match the SHA-256 in manifest.json (re-derivation of sampled steps: "
                "provenance verify)."))


def show_ledger(ledger) -> None:
    if ledger is None:
        st.caption("No ledger for this output (it is not attributed, or fewer than two steps were recorded).")
        return
    cols = st.columns(4)
    cols[0].metric("target loss", f"{ledger.final_loss:.4f}", delta=f"{-ledger.measured_decrease:+.4f} from "
                   f"{ledger.initial_loss:.4f}", delta_color="inverse", help=f"loss in {UNIT}")
    cols[1].metric("attributed to documents", f"{ledger.attributed_total:+.4f}", help=VALUE_DEFINITION)
    cols[2].metric("history term (momentum, decay)", f"{ledger.history_total:+.4f}",
                   help="the part of each update no document of that step owns, summed over steps")
    cols[3].metric("explained share of the loss decrease", fmt_share(ledger.explained_share),
                   help="attributed total / measured decrease of the target's loss over training")
    st.caption(
        f"The ledger sets the sum of all documents' values against the measured decrease of this output's "
        f"loss ({UNIT}); the rest is higher-order effects and the update history, reported, not hidden.")


def show_table(slot, frame: pd.DataFrame, labels, sources, min_share: float, note: str = "",
               approximate: bool = False) -> pd.DataFrame:
    shown = sup.filter_table(frame, labels, sources, min_share)
    with slot.container():
        st.dataframe(shown, hide_index=True, width="stretch", column_config=table_config(approximate),
                     column_order=list(sup.TABLE_COLUMNS))
        st.caption(f"{len(shown)} of {len(frame)} ranked documents shown" + (f" ({note})" if note else ""))
    return shown


def show_export(slot, rows: pd.DataFrame, against: pd.DataFrame, labels, sources, min_share: float,
                file_name: str, approximate: bool = False) -> None:
    """CSV of the rows that pass the filters, then the worked-against rows that pass them (approximate
    values carry a value_is_approximate column, as the CLI's CSV does)."""
    exported = pd.concat([sup.filter_table(rows, labels, sources, min_share),
                          sup.filter_table(against, labels, sources, min_share)], ignore_index=True)
    if approximate:
        exported["value_is_approximate"] = True
    slot.download_button("Download table (CSV)", exported.to_csv(index=False), file_name=file_name, mime="text/csv",
                         help="The rows that pass the filters, then the worked-against rows that pass them.")


def show_charts(box, path: str, fingerprint: tuple, target_id: str, values: pd.DataFrame, top_k: int,
                order: int | None) -> None:
    with box:
        st.header("Charts")
        positive = values[values["value"] > 0]
        tabs = st.tabs(["Top documents", "Cumulative share", "Values over training", "Distribution"])
        with tabs[0]:
            top = positive.head(top_k)
            chart = alt.Chart(top).mark_bar().encode(
                x=alt.X("share:Q", title="value share", axis=alt.Axis(format="%")),
                y=alt.Y("doc_id:N", sort=alt.EncodingSortField("rank", order="ascending"), title="document"),
                tooltip=["rank", "doc_id", "source", alt.Tooltip("value:Q", format=".3e", title=f"value ({UNIT})"),
                         alt.Tooltip("share:Q", format=".2%")],
            )
            st.altair_chart(chart, width="stretch")
            st.caption(SHARE_DEFINITION)
        with tabs[1]:
            curve = positive[["rank", "cumulative_share"]]
            chart = alt.Chart(curve).mark_line(point=len(curve) <= 60).encode(
                x=alt.X("rank:Q", title="rank (documents with positive value)"),
                y=alt.Y("cumulative_share:Q", title="cumulative value share", axis=alt.Axis(format="%"),
                        scale=alt.Scale(domain=[0, 1])),
                tooltip=["rank", alt.Tooltip("cumulative_share:Q", format=".2%")],
            )
            st.altair_chart(chart, width="stretch")
            st.caption(f"{len(positive)} of {len(values)} documents have a positive value. " + SHARE_DEFINITION)
        with tabs[2]:
            choices = values["doc_id"].head(max(top_k, 10)).tolist()
            negatives = values[values["value"] < 0].sort_values("value")["doc_id"].head(5).tolist()
            choices += [d for d in negatives if d not in choices]
            picked = st.multiselect("Documents", choices, default=choices[: min(3, len(choices))],
                                    key=f"steps_docs:{path}:{target_id}")
            view = st.radio("Show", ["cumulative value", "value per step"], horizontal=True,
                            key=f"steps_view:{path}:{target_id}")
            if picked:
                steps = sup.values_over_steps(cached_contributions(path, fingerprint, target_id, tuple(picked), order))
                column = "cumulative_value" if view == "cumulative value" else "value"
                chart = alt.Chart(steps).mark_line(point=True).encode(
                    x=alt.X("step:Q", title="training step"),
                    y=alt.Y(f"{column}:Q", title=f"{view} ({UNIT})"),
                    color=alt.Color("doc_id:N", title="document"),
                    tooltip=["doc_id", "step", alt.Tooltip("value:Q", format=".3e"),
                             alt.Tooltip("cumulative_value:Q", format=".3e")],
                )
                st.altair_chart(chart, width="stretch")
                st.caption("In-Run Data Shapley is a sum over steps: each point is what the steps the document "
                           "was trained on (up to that step) contributed. Positive = lowered the output's loss.")
        with tabs[3]:
            hist = sup.value_histogram(values["value"].to_numpy())
            colors = alt.Scale(domain=["negative", "zero", "positive"], range=["#d73a49", "#999999", "#2ea043"])
            bars = alt.Chart(hist).mark_bar().encode(
                x=alt.X("start:Q", title=f"value ({UNIT})"), x2="end:Q",
                y=alt.Y("count:Q", title="documents", scale=alt.Scale(type="symlog")),
                color=alt.Color("sign:N", scale=colors, title="sign"),
                tooltip=[alt.Tooltip("start:Q", format=".3e"), alt.Tooltip("end:Q", format=".3e"), "count", "sign"],
            )
            zero = alt.Chart(pd.DataFrame({"x": [0.0]})).mark_rule(color="#333").encode(x="x:Q")
            st.altair_chart(bars + zero, width="stretch")
            n_neg = int((values["value"] < 0).sum())
            st.caption(f"{n_neg} documents worked against this output (negative value), "
                       f"{int((values['value'] > 0).sum())} helped, {int((values['value'] == 0).sum())} "
                       "have exactly zero (e.g. never trained on before the last step). Count axis is symlog.")


def marks_for(evidence, output_text: str) -> tuple[list[sup.Mark], list[sup.Mark], bool]:
    """Highlights of the output and the document: verbatim spans always; aligned sentences when the
    evidence labels the document verbatim or paraphrase (for weaker labels they are listed, not marked)."""
    out_marks, doc_marks = [], []
    for span in evidence.spans:
        title = f"verbatim span, {span.n_tokens} words"
        out_marks.append(sup.Mark(span.output_start_char, span.output_end_char, "verbatim", title))
        doc_marks.append(sup.Mark(span.document_start_char, span.document_end_char, "verbatim", title))
    highlight_pairs = evidence.label in ("verbatim", "paraphrase")
    if highlight_pairs:
        for pair in evidence.aligned_sentences:
            title = f"aligned sentence, similarity {pair.similarity:.2f}"
            doc_marks.append(sup.Mark(pair.document_start_char, pair.document_end_char, "paraphrase", title))
            at = sup.locate(output_text, pair.output_text)
            if at is not None:
                out_marks.append(sup.Mark(at, at + len(pair.output_text), "paraphrase", title))
    return out_marks, doc_marks, highlight_pairs


LEGEND = (
    f'<div style="font-size:0.85rem;color:#444"><span style="{sup.VERBATIM_STYLE}padding:0 4px">verbatim span'
    f'</span> &nbsp; <span style="{sup.PARAPHRASE_STYLE}padding:0 4px">aligned paraphrase sentence</span> &nbsp; '
    f'<span style="{sup.BOTH_STYLE}padding:0 4px">both</span></div>'
)


def show_evidence_panel(path: str, fingerprint: tuple, result, index, order: int | None) -> None:
    rows = list(result.rows) + list(result.worked_against)
    if not rows:
        st.info("No documents to show.")
        return
    by_id = {row.doc_id: row for row in rows}
    against = {row.doc_id for row in result.worked_against}

    def label_of(doc_id: str) -> str:
        row = by_id[doc_id]
        share = "" if row.value_share is None or doc_id in against else f" · share {row.value_share:.1%}"
        kind = "worked against" if doc_id in against else f"#{row.rank}"
        return f"{kind} · {doc_id} · {row.evidence.label}{share}"

    doc_id = st.selectbox("Training document", list(by_id), format_func=label_of,
                          key="evidence_doc:" + sup.stable_key(path, result.target_id, result.text))
    row = by_id[doc_id]
    evidence = row.evidence
    if evidence.best_passage is not None and not evidence.aligned_sentences:
        evidence = cached_evidence(path, fingerprint, result.text, doc_id, index)
    doc_text = index.texts[index.doc_index[doc_id]]
    out_marks, doc_marks, highlighted = marks_for(evidence, result.text)

    cols = st.columns(5)
    cols[0].metric("evidence", evidence.label)
    cols[1].metric("similarity", f"{evidence.similarity:.2f}", help="best passage cosine similarity")
    cols[2].metric("longest verbatim span", f"{evidence.longest_span_tokens} words")
    cols[3].metric("span coverage", f"{evidence.span_coverage:.0%}", help="share of the output's words inside "
                   "shared spans")
    if row.value is not None:
        cols[4].metric(f"value ({UNIT})", f"{row.value:+.3e}",
                       help=VALUE_DEFINITION + " " + SHARE_DEFINITION)
        show_plain(f"value share {fmt_share(row.value_share) if doc_id not in against else 'none (worked against)'}"
                   f" — {SHARE_DEFINITION}", style="color:#555;font-size:0.85rem")
    else:
        cols[4].metric("paraphrase score", f"{evidence.score:.2f}")
    st.html(LEGEND)
    left, right = st.columns(2)
    with left:
        show_plain("Output" + (f" (target {result.target_id})" if result.target_id else ""), tag="h4")
        show_text(result.text, out_marks)
    with right:
        show_plain(f"Training document {doc_id} ({by_id[doc_id].source})", tag="h4")
        show_text(doc_text, doc_marks)
    if evidence.spans:
        st.subheader("Verbatim spans")
        st.dataframe(pd.DataFrame([
            {"words": s.n_tokens, "text": s.text, "output chars": f"{s.output_start_char}-{s.output_end_char}",
             "document chars": f"{s.document_start_char}-{s.document_end_char}"} for s in evidence.spans]),
            hide_index=True, width="stretch")
    if evidence.aligned_sentences:
        st.subheader("Aligned sentences")
        if not highlighted:
            st.caption(f"Listed, not highlighted: the document's evidence label is '{evidence.label}', so these "
                       "closest sentences are not claimed as a paraphrase.")
        st.dataframe(pd.DataFrame([
            {"output sentence": p.output_text, "closest document sentence": p.document_text,
             "similarity": round(p.similarity, 3)} for p in evidence.aligned_sentences]),
            hide_index=True, width="stretch")
    if result.attributed and result.target_id is not None:
        show_value_map(path, fingerprint, result.target_id, doc_id, doc_text, order)


def show_value_map(path: str, fingerprint: tuple, target_id: str, doc_id: str, doc_text: str, order) -> None:
    st.subheader("Value map of the document")
    st.caption("Per-token values are not recorded in the run directory (the contract stores values per "
               "document chunk and step), so the map is per chunk: each chunk the model trained on is shaded "
               "by its value for this output (green = lowered the loss, red = raised it).")
    contributions = cached_contributions(path, fingerprint, target_id, (doc_id,), order)
    values = sup.chunk_values(contributions, doc_id)
    chunks = cached_chunks(path, fingerprint)
    chunks = chunks[chunks["doc_id"] == doc_id]
    try:
        ranges = sup.chunk_char_ranges(doc_text, chunks, cached_tokenizer(path, fingerprint))
    except ProvenanceError as exc:
        show_error(f"The chunk map needs the run's tokenizer: {exc}")
        return
    shaded = [(a, b, float(values.get(c, 0.0)), f"chunk {c}: value {float(values.get(c, 0.0)):+.3e} ({UNIT})")
              for c, a, b in ranges]
    st.html(sup.shaded_html(doc_text, shaded))
    st.dataframe(pd.DataFrame([{"chunk": c, "characters": f"{a}-{b}", f"value ({UNIT})": v}
                               for (a, b, v, _), (c, _, _) in zip(shaded, ranges)]),
                 hide_index=True, width="stretch")


def show_report_button(box, path: str, fingerprint: tuple, result, top_k: int, index) -> None:
    """The PDF report, only when provenance.report provides its builder (no dead button otherwise).

    Two steps (prepare, then download) so that a report that cannot be built shows its error here
    instead of failing inside the browser's download. Nothing is written to disk."""
    builder = sup.report_builder()
    if builder is None:
        return
    target_id = result.target_id
    text = None if target_id is not None else result.text
    key = "report:" + sup.stable_key(path, fingerprint, target_id, text, top_k)
    with box:
        st.header("Report")
        if st.button("Prepare PDF report", key=f"prepare:{key}",
                     help="Builds the PDF (summary, ranked table, charts, evidence excerpts) from this run."):
            with st.spinner("Building the PDF report..."):
                try:
                    st.session_state[key] = builder(path, target_id, text, top_k, index)
                except ProvenanceError as exc:
                    show_error(f"The report could not be built: {exc}")
        report = st.session_state.get(key)
        if report is not None:
            st.download_button("Download PDF report", data=report.pdf, file_name=report.pdf_name,
                               mime="application/pdf", key=f"download:{key}")
            show_plain(f"{report.pdf_name}: {len(report.pdf):,} bytes", style="color:#777;font-size:0.8rem")


def show_output(folder: Path, fingerprint: tuple, facts: sup.RunFacts, target_id: str | None,
                text: str | None, top_k: int, targets: pd.DataFrame, approximate: bool = False,
                ranking: str = "value") -> None:
    path = str(folder)
    order = facts.value_order
    st.header("Output")
    if target_id is not None:
        target = targets[targets["target_id"] == target_id].iloc[0]
        if str(target["prompt"]):
            show_plain("prompt (carries no loss):", style="color:#555;font-size:0.85rem")
            show_text(str(target["prompt"]))
        show_plain(f"output of target {target_id} (registered {target['registered']}):",
                   style="color:#555;font-size:0.85rem")
        show_text(str(target["text"]))
    values = cached_values(path, fingerprint, target_id) if target_id is not None else None
    ledger_box = st.container()
    if values is not None:
        with ledger_box:
            show_ledger(cached_ledger(path, fingerprint, target_id))

    st.header("Ranked training documents")
    approximate_slot = st.empty()
    filters = st.columns([2, 2, 1])
    labels = filters[0].multiselect("Evidence label", list(LABELS), key="filter_labels",
                                    help="Show only these labels (none chosen = all)")
    source_options = cached_sources(path, fingerprint)
    sources = filters[1].multiselect("Source", source_options, key=f"filter_sources:{path}",
                                     help="Show only these sources (none chosen = all)")
    min_share_pct = filters[2].number_input("Min value share (%)", min_value=0.0, max_value=100.0, value=0.0,
                                            step=0.5, key="filter_min_share")
    min_share = min_share_pct / 100.0
    table_slot = st.empty()
    export_slot = st.empty()
    st.caption(SHARE_DEFINITION + " " + VALUE_DEFINITION)
    against_box = st.container()
    notes_box = st.container()
    charts_box = st.container()
    evidence_box = st.container()
    report_box = st.container()

    if values is not None:
        # values first (cheap); the evidence columns fill in once the index is loaded below
        show_table(table_slot, sup.values_table(values, top_k), (), sources, min_share,
                   note="evidence columns are filled in when the evidence index is loaded" if labels else "")
        show_charts(charts_box, path, fingerprint, target_id, values, top_k, order)

    with evidence_box:
        st.header("Evidence")
        try:
            with st.spinner("Loading the evidence index (embedder, FAISS, n-grams)..."):
                index = cached_index(path, fingerprint)
        except EvidenceIndexError as exc:
            index = None
            st.warning(sup.markdown_literal(f"Evidence labels, spans and paraphrase alignment need the evidence "
                                            f"index: {exc}"))
            st.code(f"provenance index --run {path}", language="bash")
    if index is None:
        if values is not None:
            rows, against = sup.values_table(values, top_k), sup.values_table_against(values, top_k)
            show_table(table_slot, rows, (), sources, min_share,
                       note="the evidence label filter needs the evidence index" if labels else "")
            show_export(export_slot, rows, against, (), sources, min_share, f"{folder.name}-{target_id}-values.csv")
            with against_box:
                show_worked_against(sup.filter_table(against, (), sources, 0.0))
        return

    with st.spinner("Ranking documents and collecting evidence..."):
        try:
            result = cached_query(path, fingerprint, target_id if text is None else None, text, top_k, index,
                                  approximate, ranking)
        except (TargetError, SketchMismatchError) as exc:
            show_error(str(exc))
            return
    from provenance.evidence.render import to_records

    rows, against = sup.result_tables(to_records(result))
    if result.approximate:
        approximate_slot.warning("APPROXIMATE values: estimated in seconds from the gradient sketches this run "
                                 "stored while training, not exact In-Run Data Shapley values (docs/posthoc.md). "
                                 "Confirm the outputs that matter by replaying the run with this text as a "
                                 "target (command below the tables).")
    shown = show_table(table_slot, rows, labels, sources, min_share, approximate=result.approximate)
    show_export(export_slot, rows, against, labels, sources, min_share,
                f"{folder.name}-{result.target_id or 'query'}-{'approximate' if result.approximate else 'ranked'}.csv",
                approximate=result.approximate)
    with against_box:
        show_worked_against(sup.filter_table(against, labels, sources, 0.0), result.approximate)
    with notes_box:
        if result.approximate:
            show_plain("To replace the approximate values by exact ones, replay the run with this text as a target:",
                       style="color:#8a6d3b;font-size:0.9rem")
            st.code(result.attribute_command or "", language="bash", wrap_lines=True)
        elif not result.attributed:
            st.warning("This text is not an attributed target of the run: documents are ranked by evidence only "
                       "(no values). To attribute it, replay the run with it as a target:")
            st.code(result.attribute_command or "", language="bash", wrap_lines=True)
        for note in result.notes:
            show_plain(f"note: {note}", style="color:#8a6d3b;font-size:0.85rem")
        show_plain(f"{len(shown)} rows; query time {1000 * (result.latency_seconds or 0):.0f} ms; embedder "
                   f"{result.embedder}", style="color:#777;font-size:0.8rem")
    if text is not None and result.attributed and result.target_id is not None:
        values = cached_values(path, fingerprint, result.target_id)
        if values is not None:
            with ledger_box:
                show_ledger(cached_ledger(path, fingerprint, result.target_id))
            show_charts(charts_box, path, fingerprint, result.target_id, values, top_k, order)
    with evidence_box:
        show_evidence_panel(path, fingerprint, result, index, order)
    show_report_button(report_box, path, fingerprint, result, top_k, index)


def show_worked_against(frame: pd.DataFrame, approximate: bool = False) -> None:
    if frame.empty:
        return
    st.subheader("Worked against this output")
    st.caption("Negative values: training on these documents raised the output's loss. They get no share.")
    st.dataframe(frame, hide_index=True, width="stretch", column_config=table_config(approximate),
                 column_order=[c for c in sup.TABLE_COLUMNS if c not in ("value_share", "cumulative_share")])


def show_run(folder: Path) -> None:
    path = str(folder)
    fingerprint = sup.tree_fingerprint(folder)
    facts = cached_facts(path, fingerprint)
    verify_slot = show_summary(facts)
    targets = cached_targets(path, fingerprint)
    sidebar = st.sidebar
    mode = sidebar.radio("Output to explain", [MODE_TARGET, MODE_TEXT], key="mode")
    top_k = sidebar.slider("Documents in the table (top k)", min_value=5, max_value=100, value=20, step=5, key="top_k")
    if mode == MODE_TARGET:
        ids = targets["target_id"].tolist()
        if not ids:
            st.info("This run has no registered targets. Paste an output text instead (sidebar), or attribute one:")
            st.code(f"provenance attribute --run {path} --targets outputs.jsonl", language="bash")
        else:
            texts = dict(zip(targets["target_id"], targets["text"]))

            def describe(target_id: str) -> str:
                snippet = " ".join(str(texts[target_id]).split())
                return f"{target_id} — {snippet[:60]}{'…' if len(snippet) > 60 else ''}"

            target_id = sidebar.selectbox("Target", ids, format_func=describe, key=f"target:{path}")
            ranking = "value"
            if len(ids) > MIN_REFERENCE_TARGETS:  # the combined order contrasts with >= 20 other targets
                ranking = sidebar.radio(
                    "Rank documents by", list(RANKINGS), key=f"ranking:{path}", format_func=RANKINGS.get,
                    help="value: the In-Run Data Shapley value, largest first. combined: documents the output "
                         "is largely copied from first, then by text match (BM25) and evidence score, the "
                         "document's target-specific value (its value for this output against the run's other "
                         "targets) deciding close calls. On same-topic outputs it finds the source about as "
                         "often as text search alone does. The value and share columns stay the raw values "
                         "(docs/evidence.md).")
            show_output(folder, fingerprint, facts, target_id, None, top_k, targets, ranking=ranking)
    else:
        text = sidebar.text_area("Output text", key="query_text", height=200,
                                 help="Paste an output to find the training documents behind it "
                                      "(Ctrl+Enter to apply).")
        approximate = False
        if (folder / "sketches" / "meta.json").is_file():
            approximate = sidebar.checkbox(
                "Approximate values from sketches", key=f"approximate:{path}",
                help="This run stored gradient sketches while training: estimate values for the text in "
                     "seconds, marked approximate (exact values need a replay).")
        if not text.strip():
            st.info("Paste an output text in the sidebar to rank this run's documents for it.")
        else:
            show_output(folder, fingerprint, facts, None, text, top_k, targets, approximate)
    show_verification(verify_slot, path, fingerprint)


def main() -> None:
    st.set_page_config(page_title="provenance: which training documents produced this output?", layout="wide")
    st.title("Which training documents produced this output?")
    st.caption("In-Run Data Shapley values recorded while the model trained, with the evidence behind each "
               "document. Read-only: the app changes no run.")
    root = sup.runs_root(sys.argv[1:], os.environ)
    folders = sup.run_folders(root)
    if not folders:
        show_empty_root(root)
        return
    problems = {f.name: run_problem(str(f), sup.manifest_stamp(f)) for f in folders}
    name = st.sidebar.selectbox(
        "Run", [f.name for f in folders], key="run",
        format_func=lambda n: f"{n} (cannot be read)" if problems[n] else n,
    )
    st.sidebar.caption(sup.markdown_literal(f"runs in {root.resolve()}"))
    folder = root / name
    if problems[name]:
        show_error(f"Run {name} cannot be shown: {problems[name]}")
        st.caption("The other runs are not affected; pick one in the sidebar.")
        return
    try:
        show_run(folder)
    except ProvenanceError as exc:
        show_error(f"Run {name} cannot be shown: {exc}")
        st.caption("The other runs are not affected; pick one in the sidebar.")
    except Exception as exc:  # noqa: BLE001 - one broken run must not take the app down
        show_error(f"Run {name} cannot be shown: unexpected {type(exc).__name__}: {exc}")
        with st.expander("Details"):
            st.exception(exc)


main()
