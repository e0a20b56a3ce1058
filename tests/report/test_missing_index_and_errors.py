"""A run without an evidence index still gets its reports (saying what is missing); bad input gets a typed
error that names the input, and nothing is written."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest

from provenance.errors import ReportError, RunDirectoryError, TargetError
from provenance.report import ReportSettings, build_report, read_target_list, write_reports

from .conftest import TIMESTAMP, pdftotext

SETTINGS = ReportSettings(top_k=10, timestamp=TIMESTAMP)


@pytest.fixture
def no_index_run(run_copy):
    shutil.rmtree(run_copy / "evidence")
    return run_copy


def test_report_without_an_index_says_so_and_keeps_the_numbers(no_index_run, tmp_path):
    report = build_report(no_index_run, "t-genesis", settings=SETTINGS)
    path = tmp_path / "r.pdf"
    path.write_bytes(report.pdf)
    text = " ".join(pdftotext(path).split())
    assert "no evidence" in text and f"provenance index --run {no_index_run}" in text
    values = pd.read_parquet(no_index_run / "values.parquet")
    top = values[(values["target_id"] == "t-genesis")].sort_values("rank").iloc[0]
    assert f"{top['value']:+.4e}" in text and f"{100 * top['share']:.2f}%" in text
    side = report.sidecar["report"]
    assert side["evidence"]["available"] is False
    assert side["excerpts"] == [] and all(r["label"] is None for r in side["rows"])
    assert [r["doc_id"] for r in side["rows"]] == values[(values["target_id"] == "t-genesis") & (values["value"] > 0)] \
        .sort_values("rank")["doc_id"].head(10).tolist()


def test_build_index_option_builds_it_first(no_index_run):
    report = build_report(no_index_run, "t-river", settings=ReportSettings(top_k=5, timestamp=TIMESTAMP,
                                                                          build_index=True))
    assert report.data.evidence.available
    assert (no_index_run / "evidence" / "index.json").is_file()
    assert all(r.label is not None for r in report.data.rows)


def test_free_text_needs_an_index(no_index_run):
    with pytest.raises(ReportError, match="evidence index"):
        build_report(no_index_run, text="river stone tree", settings=SETTINGS)


def test_free_text_report_is_ranked_by_evidence(report_run, loaded_index):
    report = build_report(report_run, text="The first book of Moses, called Genesis.", settings=SETTINGS,
                          index=loaded_index)
    assert not report.data.attributed and report.data.target.target_id is None
    assert report.data.rows[0].doc_id == "bible:kjv-genesis"
    assert all(r.value is None for r in report.data.rows)
    assert "--text-file OUTPUT.txt" in report.data.reproduce_command
    assert report.data.attribute_command and "provenance attribute" in report.data.attribute_command
    assert report.file_stem.startswith("text-")


def test_unknown_target_is_refused_before_anything_is_written(report_run, loaded_index, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ReportError, match="nope"):
        write_reports(report_run, ["t-river", "nope"], out, settings=SETTINGS, index=loaded_index, progress=False)
    assert not out.exists() or not any(out.iterdir())
    with pytest.raises(TargetError, match="not registered"):
        build_report(report_run, "nope", settings=SETTINGS, index=loaded_index)


def test_duplicate_and_empty_target_lists_are_refused(report_run, loaded_index, tmp_path):
    with pytest.raises(ReportError, match="more than once"):
        write_reports(report_run, ["t-river", "t-river"], tmp_path, settings=SETTINGS, index=loaded_index)
    with pytest.raises(ReportError, match="no targets"):
        write_reports(report_run, [], tmp_path, settings=SETTINGS, index=loaded_index)


def test_unfinished_or_newer_runs_are_refused(run_copy, tmp_path):
    manifest_path = run_copy / "manifest.json"
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    manifest_path.write_text(json.dumps({**manifest, "status": "training"}), encoding="utf-8")
    with pytest.raises(RunDirectoryError, match="not complete"):
        build_report(run_copy, "t-river", settings=SETTINGS)
    manifest_path.write_text(json.dumps({**manifest, "format_version": 99}), encoding="utf-8")
    with pytest.raises(RunDirectoryError, match="upgrade provenance"):
        build_report(run_copy, "t-river", settings=SETTINGS)
    with pytest.raises(RunDirectoryError, match="does not exist"):
        build_report(tmp_path / "missing-run", "t-river", settings=SETTINGS)


def test_edited_values_show_in_the_custody_table(run_copy, tmp_path):
    """A values.parquet changed after training is flagged DIFFERS (the report does not hide it)."""
    values = pd.read_parquet(run_copy / "values.parquet")
    values.to_parquet(run_copy / "values.parquet", index=False, compression="gzip")
    report = build_report(run_copy, "t-river", settings=SETTINGS)
    status = {f["path"]: f["status"] for f in report.sidecar["report"]["custody"]}
    assert status["values.parquet"] == "DIFFERS" and status["corpus.parquet"] == "matches"
    path = tmp_path / "r.pdf"
    path.write_bytes(report.pdf)
    assert "DIFFERS" in pdftotext(path)


def test_output_folder_that_is_a_file_is_refused(report_run, loaded_index, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x", encoding="utf-8")
    with pytest.raises(ReportError, match="not a folder"):
        write_reports(report_run, ["t-river"], blocker, settings=SETTINGS, index=loaded_index, progress=False)


def test_target_list_files(tmp_path):
    plain = tmp_path / "ids.txt"
    plain.write_text("# outputs of June\nt-genesis\n\n t-river \n", encoding="utf-8")
    assert read_target_list(plain) == ["t-genesis", "t-river"]
    jsonl = tmp_path / "t.jsonl"
    jsonl.write_text('{"id": "a", "prompt": "", "text": "x"}\n{"target_id": "b"}\n', encoding="utf-8")
    assert read_target_list(jsonl) == ["a", "b"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a"\n', encoding="utf-8")
    with pytest.raises(ReportError, match="bad.jsonl:1"):
        read_target_list(bad)
    (tmp_path / "empty.txt").write_text("\n# nothing\n", encoding="utf-8")
    with pytest.raises(ReportError, match="lists no target ids"):
        read_target_list(tmp_path / "empty.txt")
    with pytest.raises(ReportError, match="cannot read"):
        read_target_list(tmp_path / "absent.txt")


def test_an_output_with_no_positive_value_still_gets_a_report(run_copy, tmp_path):
    values = pd.read_parquet(run_copy / "values.parquet")
    mine = values["target_id"] == "t-river"
    values.loc[mine, "value"] = -values.loc[mine, "value"].abs() - 1e-6
    values.loc[mine, "share"] = 0.0
    values.to_parquet(run_copy / "values.parquet", index=False)
    report = build_report(run_copy, "t-river", settings=SETTINGS)
    assert report.data.rows == () and len(report.data.worked_against) == 10
    path = tmp_path / "r.pdf"
    path.write_bytes(report.pdf)
    text = " ".join(pdftotext(path).split())
    assert "No document has a positive value for this output." in text
    assert "No values to chart for this output." in text
