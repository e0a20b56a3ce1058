"""app.py driven through streamlit.testing (AppTest): every control, and what it shows checked against
the run's own files (values.parquet, ledger.parquet, contributions.parquet, train_log.parquet) and
against the evidence library's answer for the same query."""

from __future__ import annotations

import hashlib
import io
import sys

import numpy as np
import pandas as pd
import pytest

from .helpers import (
    chart_y_field,
    chart_with,
    dataframes_with,
    html_bodies,
    messages,
    metric,
    no_exceptions,
    ranked_tables,
    selectbox,
    untrusted_blocks,
)
from .runs import BREAD, GENESIS

TOP_K = 20  # the app's default


def open_run(make_app, root, run: str):
    at = make_app(root).run()
    at.selectbox(key="run").select(run).run()
    no_exceptions(at)
    return at


def pick_target(at, run_path, target_id: str):
    at.selectbox(key=f"target:{run_path}").select(target_id).run()
    no_exceptions(at)
    return at


def expected_rows(run_path, target_id: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(positive rows by rank with cumulative share, negative rows by value) straight from values.parquet."""
    values = pd.read_parquet(run_path / "values.parquet")
    rows = values[values["target_id"] == target_id].sort_values("rank")
    positive = rows[rows["value"] > 0].copy()
    positive["cumulative_share"] = positive["share"].cumsum()
    negative = rows[rows["value"] < 0].sort_values(["value", "doc_id"])
    return positive.head(TOP_K).reset_index(drop=True), negative.head(TOP_K).reset_index(drop=True)


def tree_digest(root) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


# -- empty folder, corrupt runs ---------------------------------------------------------------------------
def test_empty_runs_folder_shows_how_to_make_a_run(make_app, tmp_path):
    at = make_app(tmp_path).run()
    no_exceptions(at)
    assert any("No runs found" in m for m in messages(at, "info"))
    commands = "\n".join(c.value for c in at.code)
    assert "provenance demo" in commands
    assert "provenance train --corpus" in commands and "provenance index --run" in commands
    assert not ranked_tables(at)


def test_corrupt_and_unfinished_runs_show_an_error_and_the_others_work(make_app, runs_root, small_run):
    at = make_app(runs_root).run()
    runs = at.selectbox(key="run")
    assert "unfinished (cannot be read)" in runs.options and "small" in runs.options
    runs.select("broken").run()
    no_exceptions(at)
    errors = messages(at, "error")
    assert any("Run broken cannot be shown" in e and "values.parquet" in e for e in errors), errors
    at.selectbox(key="run").select("unfinished").run()
    no_exceptions(at)
    assert any("Run unfinished cannot be shown" in e and "not complete" in e for e in messages(at, "error"))
    at.selectbox(key="run").select("small").run()
    no_exceptions(at)
    assert not at.error
    positive, _ = expected_rows(small_run, "genesis")
    assert ranked_tables(at)[0]["doc_id"].tolist() == positive["doc_id"].tolist()


# -- the summary, the ranked table, labels -------------------------------------------------------------
def test_summary_and_ranked_table_match_the_run_files(make_app, runs_root, small_run, small_index):
    from provenance.evidence import query

    at = pick_target(open_run(make_app, runs_root, "small"), small_run, "genesis")
    corpus = pd.read_parquet(small_run / "corpus.parquet")
    train_log = pd.read_parquet(small_run / "train_log.parquet")
    assert metric(at, "documents") == str(len(corpus))
    assert metric(at, "training steps") == str(len(train_log))
    assert metric(at, "status") == "complete"
    assert any("Hash check passed" in m for m in messages(at, "success"))

    # the ledger's explained share, recomputed from ledger.parquet
    ledger = pd.read_parquet(small_run / "ledger.parquet")
    rows = ledger[ledger["target_id"] == "genesis"].sort_values("step")
    decrease = rows["target_loss"].iat[0] - rows["target_loss"].iat[-1]
    attributed = rows["attributed_sum"].iloc[:-1].sum()
    explained = metric(at, "explained share of the loss decrease")
    assert explained == (f"{attributed / decrease:.1%}" if decrease > 0 else "n/a")

    positive, negative = expected_rows(small_run, "genesis")
    tables = ranked_tables(at)
    table = tables[0]
    assert table["rank"].tolist() == positive["rank"].tolist()
    assert table["doc_id"].tolist() == positive["doc_id"].tolist()
    np.testing.assert_allclose(table["value"], positive["value"], rtol=0, atol=0)
    np.testing.assert_allclose(table["value_share"], positive["share"], rtol=1e-12)
    np.testing.assert_allclose(table["cumulative_share"], positive["cumulative_share"], rtol=1e-12)
    sources = dict(zip(corpus["doc_id"], corpus["source"]))
    assert table["source"].tolist() == [sources[d] for d in positive["doc_id"]]
    if len(negative):
        against = tables[1]
        assert against["doc_id"].tolist() == negative["doc_id"].tolist()
        np.testing.assert_allclose(against["value"], negative["value"], rtol=0, atol=0)
        assert (against["value_share"] == 0).all()

    # labels, similarity and spans are the evidence library's, for the same query
    answer = query(small_run, target_id="genesis", top_k=TOP_K, index=small_index)
    assert table["label"].tolist() == [r.evidence.label for r in answer.rows]
    assert table["longest_span_words"].tolist() == [r.evidence.longest_span_tokens for r in answer.rows]
    # ground truth by construction: this document holds the target text word for word
    assert table.set_index("doc_id").loc["bible/genesis_kjv.txt", "label"] == "verbatim"
    assert table.set_index("doc_id").loc["bible/genesis_kjv.txt", "longest_span_words"] >= len(GENESIS.split()) - 1
    # the definitions are printed next to the shares
    captions = " ".join(c.value for c in at.caption)
    assert "Value share = the document's value divided by the sum of the positive values" in captions


def test_target_pick_switches_output_and_table(make_app, runs_root, small_run):
    at = pick_target(open_run(make_app, runs_root, "small"), small_run, "bread")
    positive, _ = expected_rows(small_run, "bread")
    table = ranked_tables(at)[0]
    assert table["doc_id"].tolist() == positive["doc_id"].tolist()
    np.testing.assert_allclose(table["value_share"], positive["share"], rtol=1e-12)
    shown = " ".join(untrusted_blocks(at))
    assert BREAD.strip() in shown and "How to bake:" in shown
    # the document holding the target text is the top contributor in this run (trained on it)
    assert table["doc_id"].iat[0] == "everyday/bread.txt"


# -- filters and the CSV export --------------------------------------------------------------------------
def test_label_source_and_share_filters_and_csv_export(make_app, runs_root, small_run, downloads):
    at = pick_target(open_run(make_app, runs_root, "small"), small_run, "genesis")
    full = ranked_tables(at)[0]

    at.multiselect(key="filter_labels").select("verbatim").run()
    no_exceptions(at)
    table = ranked_tables(at)[0]
    assert len(table) >= 1 and set(table["label"]) == {"verbatim"}
    assert table["doc_id"].tolist() == full[full["label"] == "verbatim"]["doc_id"].tolist()
    at.multiselect(key="filter_labels").unselect("verbatim").run()

    source = "docs/bible"
    at.multiselect(key=f"filter_sources:{small_run}").select(source).run()
    no_exceptions(at)
    table = ranked_tables(at)[0]
    assert table["doc_id"].tolist() == full[full["source"] == source]["doc_id"].tolist()
    at.multiselect(key=f"filter_sources:{small_run}").unselect(source).run()

    at.number_input(key="filter_min_share").set_value(10.0).run()
    no_exceptions(at)
    positive, negative = expected_rows(small_run, "genesis")
    table = ranked_tables(at)[0]
    assert table["doc_id"].tolist() == positive[positive["share"] >= 0.10]["doc_id"].tolist()
    assert any(f"{len(table)} of {len(full)} ranked documents shown" in c.value for c in at.caption)

    csvs = [d for d in downloads if d["filename"] and d["filename"].endswith(".csv")]
    exported = pd.read_csv(io.StringIO(csvs[-1]["data"].decode() if isinstance(csvs[-1]["data"], bytes)
                                       else csvs[-1]["data"]))
    assert exported["doc_id"].tolist() == table["doc_id"].tolist()  # negatives have no share: filtered out
    np.testing.assert_allclose(exported["value_share"], table["value_share"], rtol=1e-9)
    assert {"rank", "doc_id", "source", "value", "value_share", "cumulative_share", "label", "similarity",
            "longest_span_words"} <= set(exported.columns)


# -- the query box ---------------------------------------------------------------------------------------
def test_query_box_new_text_is_ranked_by_evidence_with_the_attribute_command(make_app, runs_root, small_run,
                                                                              small_index):
    from provenance.evidence import query

    text = "At the very start God made the heavens and the earth, and the earth had no shape and was empty."
    at = open_run(make_app, runs_root, "small")
    at.radio(key="mode").set_value("A new output text").run()
    at.text_area(key="query_text").input(text).run()
    no_exceptions(at)
    assert any("not an attributed target" in w for w in messages(at, "warning"))
    assert any("provenance attribute --run" in c.value for c in at.code)
    answer = query(small_run, text=text, top_k=TOP_K, index=small_index)
    table = ranked_tables(at)[0]
    assert table["doc_id"].tolist() == [r.doc_id for r in answer.rows]
    assert table["label"].tolist() == [r.evidence.label for r in answer.rows]
    assert table["value"].isna().all() and table["value_share"].isna().all()
    assert table["doc_id"].iat[0].startswith("bible/")


def test_query_box_approximate_values_from_sketches_are_marked(make_app, runs_root, small_run, small_index):
    from provenance.evidence import query

    text = "At the very start God made the heavens and the earth, and the earth had no shape and was empty."
    at = open_run(make_app, runs_root, "small")
    at.radio(key="mode").set_value("A new output text").run()
    at.checkbox(key=f"approximate:{small_run}").check().run()
    at.text_area(key="query_text").input(text).run()
    no_exceptions(at)
    assert any("APPROXIMATE values" in w for w in messages(at, "warning"))
    assert any("provenance attribute --run" in c.value for c in at.code)
    answer = query(small_run, text=text, top_k=TOP_K, index=small_index, approximate=True)
    assert answer.approximate
    table = ranked_tables(at)[0]
    assert table["doc_id"].tolist() == [r.doc_id for r in answer.rows]
    assert np.allclose(table["value"].to_numpy(dtype=float), [r.value for r in answer.rows], rtol=1e-6)
    assert table["value"].notna().all()


def test_combined_ranking_is_offered_with_enough_targets(make_app, runs_root, many_root, small_run):
    from provenance.evidence import load_index, query

    small = open_run(make_app, runs_root, "small")  # 2 targets: no choice, value order
    assert not [r for r in small.radio if r.key == f"ranking:{small_run}"]
    run = many_root / "many"
    at = open_run(make_app, many_root, "many")
    pick_target(at, run, "bread")
    at.radio(key=f"ranking:{run}").set_value("combined").run()
    no_exceptions(at)
    answer = query(run, target_id="bread", top_k=TOP_K, index=load_index(run), order="combined")
    assert answer.order == "combined"
    table = ranked_tables(at)[0]
    assert table["doc_id"].tolist() == [r.doc_id for r in answer.rows]
    assert table["label"].tolist() == [r.evidence.label for r in answer.rows]
    assert np.allclose(table["value"].to_numpy(dtype=float), [r.value for r in answer.rows])
    assert any("rows in combined order" in body for body in html_bodies(at))


def test_query_box_with_no_words_shows_the_library_error(make_app, runs_root):
    at = open_run(make_app, runs_root, "small")
    at.radio(key="mode").set_value("A new output text").run()
    at.text_area(key="query_text").input(" ... !!! ").run()
    no_exceptions(at)
    assert any("holds no words" in e for e in messages(at, "error")), messages(at, "error")
    assert ranked_tables(at) == []


def test_top_k_slider_limits_the_table(make_app, runs_root, small_run):
    at = pick_target(open_run(make_app, runs_root, "small"), small_run, "genesis")
    at.slider(key="top_k").set_value(5).run()
    no_exceptions(at)
    positive, negative = expected_rows(small_run, "genesis")
    tables = ranked_tables(at)
    assert tables[0]["doc_id"].tolist() == positive["doc_id"].head(5).tolist()
    if len(negative):
        assert tables[1]["doc_id"].tolist() == negative["doc_id"].head(5).tolist()
    assert len(selectbox(at, "Training document").options) == min(5, len(positive)) + min(5, len(negative))


def test_query_box_with_a_registered_text_shows_its_values(make_app, runs_root, small_run):
    at = open_run(make_app, runs_root, "small")
    at.radio(key="mode").set_value("A new output text").run()
    at.text_area(key="query_text").input(GENESIS).run()
    no_exceptions(at)
    positive, _ = expected_rows(small_run, "genesis")
    table = ranked_tables(at)[0]
    assert table["doc_id"].tolist() == positive["doc_id"].tolist()
    np.testing.assert_allclose(table["value_share"], positive["share"], rtol=1e-12)
    assert not any("not an attributed target" in w for w in messages(at, "warning"))


# -- charts ------------------------------------------------------------------------------------------------
def test_charts_show_the_values_and_their_history(make_app, runs_root, small_run):
    at = pick_target(open_run(make_app, runs_root, "small"), small_run, "genesis")
    values = pd.read_parquet(small_run / "values.parquet")
    values = values[values["target_id"] == "genesis"].set_index("doc_id")

    bars = chart_with(at, "doc_id", "share", "rank")
    positive, _ = expected_rows(small_run, "genesis")
    assert bars["doc_id"].tolist() == positive["doc_id"].tolist()

    curve = chart_with(at, "rank", "cumulative_share")
    np.testing.assert_allclose(curve["cumulative_share"].iloc[-1], 1.0, rtol=1e-12)

    picked = ["bible/genesis_kjv.txt", "everyday/databases.txt"]
    at.multiselect(key=f"steps_docs:{small_run}:genesis").set_value(picked).run()
    no_exceptions(at)
    steps = chart_with(at, "step", "cumulative_value")
    assert set(steps["doc_id"]) == set(picked)
    contributions = pd.read_parquet(small_run / "contributions.parquet")
    contributions = contributions[contributions["target_id"] == "genesis"]
    for doc in picked:
        mine = steps[steps["doc_id"] == doc].sort_values("step")
        # the last point of the cumulative curve is the document's value in values.parquet
        np.testing.assert_allclose(mine["cumulative_value"].iat[-1], values.loc[doc, "value"], rtol=1e-9)
        assert mine["step"].tolist() == sorted(contributions[contributions["doc_id"] == doc]["step"].unique())

    assert chart_y_field(at, "step", "cumulative_value") == "cumulative_value"
    at.radio(key=f"steps_view:{small_run}:genesis").set_value("value per step").run()
    no_exceptions(at)
    assert chart_y_field(at, "step", "cumulative_value") == "value"
    steps = chart_with(at, "step", "cumulative_value")
    for doc in picked:
        mine = steps[steps["doc_id"] == doc].set_index("step")["value"]
        per_step = contributions[contributions["doc_id"] == doc].groupby("step")["value_first_order"].sum()
        np.testing.assert_allclose(mine.sort_index().to_numpy(), per_step.sort_index().to_numpy(), rtol=1e-12)

    hist = chart_with(at, "start", "end", "count", "sign")
    assert hist[hist["sign"] == "negative"]["count"].sum() == (values["value"] < 0).sum()
    assert hist[hist["sign"] == "positive"]["count"].sum() == (values["value"] > 0).sum()


# -- the evidence panel ------------------------------------------------------------------------------------
def test_document_pick_shows_spans_side_by_side(make_app, runs_root, small_run, small_index):
    from provenance.evidence import query

    at = pick_target(open_run(make_app, runs_root, "small"), small_run, "genesis")
    picker = selectbox(at, "Training document")
    picker.select("bible/genesis_kjv.txt").run()
    no_exceptions(at)
    assert metric(at, "evidence") == "verbatim"
    answer = query(small_run, target_id="genesis", top_k=TOP_K, index=small_index)
    row = next(r for r in answer.rows if r.doc_id == "bible/genesis_kjv.txt")
    assert metric(at, "longest verbatim span") == f"{row.evidence.longest_span_tokens} words"
    assert any("Training document bible/genesis_kjv.txt" in b for b in html_bodies(at))
    output_html, document_html = untrusted_blocks(at)[-3:-1]  # output, document (then the chunk map)
    span = row.evidence.spans[0]
    assert span.text in GENESIS
    assert 'class="mark verbatim' in output_html and 'class="mark verbatim' in document_html
    spans = dataframes_with(at, "document chars")[0]
    assert spans["text"].iat[0] == span.text
    assert spans["document chars"].iat[0] == f"{span.document_start_char}-{span.document_end_char}"

    # per-chunk value map: one row per chunk of the document, values summed from contributions.parquet
    chunk_table = dataframes_with(at, "chunk")[0]
    contributions = pd.read_parquet(small_run / "contributions.parquet")
    mine = contributions[(contributions["target_id"] == "genesis")
                         & (contributions["doc_id"] == "bible/genesis_kjv.txt")]
    expected = mine.groupby("chunk_id")["value_first_order"].sum()
    chunks = pd.read_parquet(small_run / "chunks.parquet")
    assert chunk_table["chunk"].tolist() == chunks[chunks["doc_id"] == "bible/genesis_kjv.txt"]["chunk_id"].tolist()
    got = chunk_table.set_index("chunk")["value (nats per output token)"]
    for chunk_id, value in got.items():
        np.testing.assert_allclose(value, expected.get(chunk_id, 0.0), rtol=1e-12)


def test_markup_in_a_document_is_shown_as_literal_text(make_app, runs_root, small_run):
    at = pick_target(open_run(make_app, runs_root, "small"), small_run, "genesis")
    selectbox(at, "Training document").select("notes/markup.txt").run()
    no_exceptions(at)
    document_html = [b for b in untrusted_blocks(at) if "alert(1)" in b]
    assert document_html, "the markup document is not shown"
    body = document_html[0]
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in body
    assert "**bold words**" in body and "# not a heading" in body
    assert "&lt;img src=x onerror=alert(3)&gt;" in body and "[click me](javascript:alert(2))" in body
    for html in html_bodies(at):
        assert "<script" not in html.lower() and "<img" not in html.lower() and "<b>" not in html.lower()


# -- safety: read-only, and the no-index path ------------------------------------------------------------
def test_the_app_writes_nothing_into_the_runs(make_app, runs_root, small_run):
    before = tree_digest(runs_root)
    at = open_run(make_app, runs_root, "small")
    for target in ("bread", "genesis"):
        pick_target(at, small_run, target)
    selectbox(at, "Training document").select("notes/markup.txt").run()
    at.radio(key="mode").set_value("A new output text").run()
    at.text_area(key="query_text").input("Bake the bread until brown.").run()
    at.selectbox(key="run").select("broken").run()
    no_exceptions(at)
    assert tree_digest(runs_root) == before


def test_run_without_evidence_index_shows_values_and_the_index_command(make_app, large_root, downloads):
    run = large_root / "large"
    at = make_app(large_root).run()
    no_exceptions(at)
    assert any("need the evidence index" in w for w in messages(at, "warning"))
    assert any(f"provenance index --run {run}" in c.value for c in at.code)
    positive, negative = expected_rows(run, "target-00")
    tables = ranked_tables(at)
    assert tables[0]["doc_id"].tolist() == positive["doc_id"].tolist()
    np.testing.assert_allclose(tables[0]["cumulative_share"], positive["cumulative_share"], rtol=1e-12)
    assert tables[1]["doc_id"].tolist() == negative["doc_id"].tolist()

    at.multiselect(key=f"filter_sources:{run}").select("source-3.jsonl").run()
    no_exceptions(at)
    table = ranked_tables(at)[0]
    assert table["doc_id"].tolist() == positive[positive["doc_id"].map(
        lambda d: int(d.split("-")[1]) % 7 == 3)]["doc_id"].tolist()
    exported = pd.read_csv(io.StringIO(downloads[-1]["data"] if isinstance(downloads[-1]["data"], str)
                                       else downloads[-1]["data"].decode()))
    worked_against = ranked_tables(at)[1]
    assert set(worked_against["source"]) == {"source-3.jsonl"}
    assert exported["doc_id"].tolist() == table["doc_id"].tolist() + worked_against["doc_id"].tolist()


# -- the PDF report button ---------------------------------------------------------------------------------
def test_report_button_is_hidden_when_the_report_module_is_missing(make_app, runs_root, small_run, monkeypatch):
    monkeypatch.setitem(sys.modules, "provenance.report", None)  # import now raises ImportError
    at = pick_target(open_run(make_app, runs_root, "small"), small_run, "genesis")
    labels = [b.label for b in at.button] + [b.label for b in at.get("download_button")]
    assert "Prepare PDF report" not in labels and "Download PDF report" not in labels
    assert ranked_tables(at)  # the rest of the page is unaffected


def test_report_button_builds_a_pdf(make_app, runs_root, small_run, downloads):
    pytest.importorskip("provenance.report.api", reason="provenance.report is not importable")
    before = tree_digest(runs_root)
    at = pick_target(open_run(make_app, runs_root, "small"), small_run, "genesis")
    prepare = [b for b in at.button if b.label == "Prepare PDF report"]
    assert prepare, "the report module is importable, so the button must be shown"
    prepare[0].click().run(timeout=300)
    no_exceptions(at)
    assert not at.error, messages(at, "error")
    assert "Download PDF report" in [b.label for b in at.get("download_button")]
    pdfs = [d for d in downloads if d["mimetype"] == "application/pdf"]
    assert pdfs and bytes(pdfs[-1]["data"]).startswith(b"%PDF")
    assert tree_digest(runs_root) == before  # built in memory: nothing written into the runs
