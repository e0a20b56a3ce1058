"""`query(approximate=True)` / `provenance query --approximate`: a text without exact values ranked by the
values the run's gradient sketches estimate, marked approximate everywhere it is shown."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from provenance.config import SketchConfig
from provenance.errors import SketchMismatchError
from provenance.evidence import query
from provenance.evidence import render
from tests.train.tiny import TARGETS, tiny_config, write_corpus

SKETCH = SketchConfig(enabled=True, every=2, k_out=6, k_in=5, k_vector=4, seed=7)
TEXT = "the sea wind over the ship"


@pytest.fixture(scope="module")
def sketched_indexed_run(tmp_path_factory, encoder):
    from provenance.evidence.index import build_index
    from provenance.train import train

    root = tmp_path_factory.mktemp("approx")
    config = replace(tiny_config(steps=5), sketch=SKETCH).check()
    train(write_corpus(root / "docs"), root / "run", config, targets=TARGETS, threads=1, progress=False)
    build_index(root / "run", progress=False)
    return root / "run"


def test_approximate_rows_are_the_sketch_values_and_are_marked(sketched_indexed_run):
    from provenance.sketch import ApproximateQuery
    from provenance.train.targets import TargetSpec

    sketches = ApproximateQuery(sketched_indexed_run)
    result = query(sketched_indexed_run, text=TEXT, top_k=3, approximate=True, sketch_query=sketches)
    assert result.approximate and not result.attributed and result.order == "approximate"
    assert result.attribute_command and any(n.startswith("approximate") for n in result.notes)
    expected = sketches.values([TargetSpec("x", "", TEXT)]).set_index("doc_id")
    positive = expected[expected["value"] > 0].sort_values("rank")
    assert [r.doc_id for r in result.rows] == positive.index[:3].tolist()
    for row in result.rows + result.worked_against:
        assert row.value == pytest.approx(float(expected.loc[row.doc_id, "value"]), rel=1e-6)
    assert np.isclose(result.rows[0].value_share, float(positive["share"].iloc[0]))
    table = render.to_table(result)
    assert "APPROXIMATE values" in table and "~+" in table
    records = render.to_records(result)
    assert records and all(r["value_is_approximate"] for r in records)
    assert "value_is_approximate" in render.to_csv(result).splitlines()[0]
    assert json.loads(render.to_json(result))["approximate"] is True


def test_without_the_flag_the_text_is_ranked_by_evidence_with_a_hint(sketched_indexed_run):
    result = query(sketched_indexed_run, text=TEXT, top_k=3)
    assert not result.approximate and all(r.value is None for r in result.rows)
    assert any("--approximate" in n for n in result.notes)


def test_a_run_without_sketches_is_refused_clearly(indexed_run, loaded_index):
    with pytest.raises(SketchMismatchError, match="--sketch"):
        query(indexed_run, text="In the beginning God created", index=loaded_index, approximate=True)


def test_cli_query_approximate(sketched_indexed_run):
    from typer.testing import CliRunner

    from provenance.cli import app

    out = CliRunner().invoke(app, ["query", "--run", str(sketched_indexed_run), "--text", TEXT, "--approximate",
                                   "--top", "2"])
    assert out.exit_code == 0, out.output
    assert "APPROXIMATE values" in out.output
