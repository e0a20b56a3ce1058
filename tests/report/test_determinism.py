"""Bar 3 (second half): the same run and a fixed timestamp give byte-identical PDFs and sidecars, in this
process and in a fresh one; another timestamp changes only what depends on the time."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

from provenance.report import ReportSettings, build_report

from .conftest import TIMESTAMP, pdftotext

SETTINGS = ReportSettings(top_k=10, timestamp=TIMESTAMP)


def test_same_bytes_in_process_and_equal_to_the_batch(report_run, loaded_index, batch):
    first = build_report(report_run, "t-genesis", settings=SETTINGS, index=loaded_index)
    second = build_report(report_run, "t-genesis", settings=SETTINGS, index=loaded_index)
    assert first.pdf == second.pdf
    assert first.sidecar_json() == second.sidecar_json()
    # the batch wrote the same bytes for this target as the single report
    written = next(p for p in batch.reports if p.stem == "t-genesis")
    assert written.read_bytes() == first.pdf
    assert written.with_suffix(".json").read_text(encoding="utf-8") == first.sidecar_json()


def test_same_bytes_from_a_fresh_process(report_run, loaded_index, tmp_path):
    script = (
        "import sys, hashlib\n"
        "from provenance.report import ReportSettings, build_report\n"
        f"r = build_report({str(report_run)!r}, 't-hostile', settings=ReportSettings(top_k=10, timestamp={TIMESTAMP!r}))\n"
        "sys.stdout.write(hashlib.sha256(r.pdf).hexdigest() + ' ' + hashlib.sha256(r.sidecar_json().encode()).hexdigest())\n"
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONHASHSEED="12345")
    out = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True, env=env,
                         cwd=tmp_path).stdout.split()
    here = build_report(report_run, "t-hostile", settings=SETTINGS, index=loaded_index)
    assert out == [hashlib.sha256(here.pdf).hexdigest(), hashlib.sha256(here.sidecar_json().encode()).hexdigest()]


def test_another_timestamp_changes_only_the_time(report_run, loaded_index, tmp_path):
    a = build_report(report_run, "t-river", settings=SETTINGS, index=loaded_index)
    b = build_report(report_run, "t-river", settings=ReportSettings(top_k=10, timestamp="2027-06-01T00:00:00Z"),
                     index=loaded_index)
    assert a.pdf != b.pdf
    pa, pb = tmp_path / "a.pdf", tmp_path / "b.pdf"
    pa.write_bytes(a.pdf)
    pb.write_bytes(b.pdf)
    assert pdftotext(pa).replace(TIMESTAMP, "T") == pdftotext(pb).replace("2027-06-01T00:00:00Z", "T")
    info = subprocess.run(["pdfinfo", "-isodates", str(pa)], check=True, capture_output=True, text=True).stdout
    assert "CreationDate:    2026-01-31T12:00:00Z" in info
    sa, sb = json.loads(a.sidecar_json()), json.loads(b.sidecar_json())
    assert sa["report"]["rows"] == sb["report"]["rows"]


def test_without_a_timestamp_the_generated_time_is_now_and_recorded(report_run, loaded_index):
    report = build_report(report_run, "t-river", settings=ReportSettings(top_k=5), index=loaded_index)
    stamp = report.data.generated
    assert stamp.endswith("Z") and len(stamp) == 20
    assert f"--timestamp {stamp}" in report.data.reproduce_command
    assert report.sidecar["report"]["settings"]["timestamp"] == stamp


def test_reproduce_command_rebuilds_the_same_bytes(report_run, loaded_index, batch, tmp_path):
    """The appendix's command, run through the CLI, writes the PDF the batch wrote."""
    import shlex

    import typer
    from typer.testing import CliRunner

    from provenance.report.commands import register

    written = next(p for p in batch.reports if p.stem == "t-genesis")
    command = json.loads(written.with_suffix(".json").read_text(encoding="utf-8"))["report"]["reproduce_command"]
    args = shlex.split(command)
    assert args[:2] == ["provenance", "report"]
    app = typer.Typer()
    app.callback()(lambda: None)
    register(app)
    result = CliRunner().invoke(app, [*args[1:], "--out", str(tmp_path), "--quiet"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "t-genesis.pdf").read_bytes() == written.read_bytes()
    assert not (tmp_path / "summary.pdf").exists()  # a single --target writes no batch summary
    assert Path(tmp_path / "t-genesis.json").read_text(encoding="utf-8") == written.with_suffix(".json").read_text(
        encoding="utf-8")


def test_worker_processes_write_the_same_bytes(report_run, loaded_index, batch, tmp_path):
    """Laying out the PDFs in worker processes (the default for 4+ reports) changes no byte."""
    from provenance.report import write_reports

    result = write_reports(report_run, [p.stem for p in batch.reports], tmp_path, settings=SETTINGS,
                           index=loaded_index, workers=2, progress=False)
    assert result.workers == 2
    for mine, theirs in zip(result.reports, batch.reports):
        assert mine.read_bytes() == theirs.read_bytes()
        assert mine.with_suffix(".json").read_bytes() == theirs.with_suffix(".json").read_bytes()
    assert result.summary_pdf.read_bytes() == batch.summary_pdf.read_bytes()
