"""Output formats (table, CSV, JSON) and the `index` / `query` commands through typer."""

from __future__ import annotations

import csv
import io
import json

import typer
from typer.testing import CliRunner

from provenance.evidence import query
from provenance.evidence.commands import register
from provenance.evidence.render import COLUMNS, to_csv, to_json, to_records, to_table

from .fixture_run import TARGET_ID, write_run


def _app() -> typer.Typer:
    app = typer.Typer()
    register(app)
    return app


def test_csv_json_and_table_agree(indexed_run, loaded_index):
    result = query(indexed_run, target_id=TARGET_ID, index=loaded_index)
    rows = list(csv.DictReader(io.StringIO(to_csv(result))))
    assert list(rows[0].keys()) == list(COLUMNS) + ["group", "value_is_approximate"]
    assert all(r["value_is_approximate"] == "False" for r in rows)
    assert [r["doc_id"] for r in rows] == [r.doc_id for r in result.rows] + [r.doc_id for r in result.worked_against]
    assert rows[0]["label"] == "verbatim" and float(rows[0]["value"]) == result.rows[0].value
    assert rows[-1]["group"] == "worked_against"

    data = json.loads(to_json(result))
    assert data["target_id"] == TARGET_ID and data["attributed"] is True
    assert data["rows"][0]["evidence"]["spans"][0]["n_tokens"] == result.rows[0].evidence.longest_span_tokens
    assert data["ledger"]["explained_share"] == result.ledger.explained_share
    assert "share_definition" in data

    table = to_table(result)
    for row in result.rows:
        assert row.doc_id in table
    assert "worked against this output" in table
    assert "Value share =" in table
    assert "query time" in table
    assert len(to_records(result)) == len(result.rows) + len(result.worked_against)


def test_table_for_unattributed_text_shows_the_attribute_command(indexed_run, loaded_index):
    table = to_table(query(indexed_run, text="how to bake bread", index=loaded_index))
    assert "not attributed yet" in table
    assert "provenance attribute --run" in table


def test_cli_index_and_query(tmp_path):
    run = write_run(tmp_path / "cli-run")
    runner = CliRunner()
    app = _app()
    built = runner.invoke(app, ["index", "--run", str(run), "--quiet"])
    assert built.exit_code == 0, built.output
    assert "passages of 6 documents" in built.output and "flat-ip" in built.output

    as_json = runner.invoke(app, ["query", "--run", str(run), "--target-id", TARGET_ID, "--format", "json"])
    assert as_json.exit_code == 0, as_json.output
    data = json.loads(as_json.stdout)
    assert data["rows"][0]["doc_id"] == "bible:kjv-genesis"

    text_file = tmp_path / "output.txt"
    text_file.write_text("Knead the dough for ten minutes and let it rise.", encoding="utf-8")
    as_csv = runner.invoke(app, ["query", "--run", str(run), "--text-file", str(text_file), "--format", "csv", "--top", "2"])
    assert as_csv.exit_code == 0, as_csv.output
    rows = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    assert len(rows) == 2 and rows[0]["doc_id"] == "cooking:bread"

    as_table = runner.invoke(app, ["query", "--run", str(run), "--text", "the home team scored twice"])
    assert as_table.exit_code == 0 and "sports:football" in as_table.output


def test_cli_errors_exit_1_with_a_message(tmp_path):
    run = write_run(tmp_path / "cli-errors")
    runner = CliRunner()
    app = _app()
    missing = runner.invoke(app, ["query", "--run", str(run), "--text", "bread"])
    assert missing.exit_code == 1
    assert "provenance index --run" in missing.output
    runner.invoke(app, ["index", "--run", str(run), "--quiet"])
    blank = runner.invoke(app, ["query", "--run", str(run), "--text", "   "])
    assert blank.exit_code == 1 and "no words" in blank.output
    both = runner.invoke(app, ["query", "--run", str(run), "--text", "a", "--text-file", str(tmp_path / "x")])
    assert both.exit_code == 1
