"""`provenance report` as a command (registered on a fresh Typer app, as provenance/cli.py will)."""

from __future__ import annotations

import json

import pytest
import typer
from typer.testing import CliRunner

from provenance.report.commands import register

from .conftest import TIMESTAMP
from .fixture_runs import TARGETS


@pytest.fixture(scope="module")
def app():
    app = typer.Typer()
    app.callback()(lambda: None)
    register(app)
    return app


def _run(app, *args):
    return CliRunner().invoke(app, ["report", *map(str, args)])


def test_all_targets_with_summary(app, report_run, tmp_path):
    result = _run(app, "--run", report_run, "--all", "--out", tmp_path, "--timestamp", TIMESTAMP, "--top-k", 5,
                  "--quiet")
    assert result.exit_code == 0, result.output
    assert f"wrote {len(TARGETS)} report(s)" in result.output and "summary.pdf" in result.output
    for spec in TARGETS:
        assert (tmp_path / f"{spec.target_id}.pdf").is_file() and (tmp_path / f"{spec.target_id}.json").is_file()
    summary = json.loads((tmp_path / "summary.json").read_text(encoding="utf-8"))
    assert summary["settings"]["top_k"] == 5 and summary["generated"] == TIMESTAMP


def test_targets_file_and_no_summary(app, report_run, tmp_path):
    listing = tmp_path / "targets.jsonl"
    listing.write_text('{"id": "t-river", "prompt": "the king", "text": " river stone tree light"}\n', encoding="utf-8")
    out = tmp_path / "out"
    result = _run(app, "--run", report_run, "--targets", listing, "--out", out, "--no-summary", "--quiet")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["t-river.json", "t-river.pdf"]


def test_text_file(app, report_run, tmp_path):
    text = tmp_path / "output.txt"
    text.write_text("The first book of Moses, called Genesis.", encoding="utf-8")
    result = _run(app, "--run", report_run, "--text-file", text, "--out", tmp_path / "o", "--timestamp", TIMESTAMP)
    assert result.exit_code == 0, result.output
    (pdf,) = (tmp_path / "o").glob("text-*.pdf")
    side = json.loads(pdf.with_suffix(".json").read_text(encoding="utf-8"))
    assert side["report"]["attributed"] is False


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "pass exactly one of"),
        (["--all", "--target", "t-river"], "got --target, --all"),
        (["--target", "nope"], "nope"),
        (["--all", "--timestamp", "tomorrow"], "ISO-8601"),
        (["--targets", "/no/such/file"], "cannot read --targets"),
    ],
)
def test_bad_input_exits_1_with_a_message(app, report_run, tmp_path, args, message):
    result = _run(app, "--run", report_run, "--out", tmp_path / "o", *args)
    assert result.exit_code == 1
    assert message in result.output
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())
