"""The CLI: --help everywhere, the train -> values -> attribute -> verify flow, errors as exit code 1."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from provenance.cli import app

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train.tiny import write_corpus  # noqa: E402

runner = CliRunner()
COMMANDS = ["train", "generate", "attribute", "values", "verify", "demo", "curate", "approximate", "index", "query", "report"]
TINY = ["--steps", "4", "--batch-size", "4", "--micro-batch-size", "2", "--warmup-steps", "1",
        "--checkpoint-every", "2", "--vocab-size", "300", "--n-layer", "1", "--n-head", "2", "--n-embd", "16",
        "--context-length", "32", "--quiet"]


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help(command):
    result = runner.invoke(app, ([command] if command else []) + ["--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output
    if command is None:
        assert all(c in result.output for c in COMMANDS)


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    corpus = write_corpus(root / "docs")
    targets = root / "targets.jsonl"
    targets.write_text(json.dumps({"id": "t1", "prompt": "the", "text": " sea wind"}) + "\n")
    run = root / "runs" / "r1"
    result = runner.invoke(app, ["train", "--corpus", str(corpus), "--run", str(run), "--targets", str(targets), *TINY])
    assert result.exit_code == 0, result.output
    assert f"run complete: {run}" in result.output
    return run


def test_values_table_csv_json(cli_run, tmp_path):
    table = runner.invoke(app, ["values", "--run", str(cli_run), "--target", "t1", "--top", "3"])
    assert table.exit_code == 0, table.output
    assert "cumulative_share" in table.output and "Value share =" in table.output
    out = tmp_path / "v.csv"
    csv = runner.invoke(app, ["values", "--run", str(cli_run), "--target", "t1", "--format", "csv", "--top", "0",
                              "--out", str(out)])
    assert csv.exit_code == 0
    frame = pd.read_csv(out)
    assert len(frame) == 16 and list(frame["rank"]) == list(range(1, 17))
    stored = pd.read_parquet(cli_run / "values.parquet").sort_values("rank")
    assert frame["value"].to_numpy() == pytest.approx(stored["value"].to_numpy())
    js = runner.invoke(app, ["values", "--run", str(cli_run), "--target", "t1", "--format", "json", "--top", "2"])
    assert json.loads(js.output)["rows"][0]["rank"] == 1
    listing = runner.invoke(app, ["values", "--run", str(cli_run)])
    assert "t1" in listing.output and "before_training" in listing.output


def test_generate_then_attribute_then_verify(cli_run, tmp_path):
    saved = tmp_path / "gen.jsonl"
    gen = runner.invoke(app, ["generate", "--run", str(cli_run), "--prompt", "the king", "--max-new-tokens", "5",
                              "--seed", "3", "--save", str(saved)])
    assert gen.exit_code == 0, gen.output
    again = runner.invoke(app, ["generate", "--run", str(cli_run), "--prompt", "the king", "--max-new-tokens", "5",
                                "--seed", "3"])
    assert again.output.splitlines()[0] == gen.output.splitlines()[0]  # seeded sampling is reproducible
    row = json.loads(saved.read_text().splitlines()[0])
    assert row["prompt"] == "the king" and row["id"] == "generated-3"
    if not row["text"].strip():
        row["text"] = " sea"  # a model this small may sample the end token first
        saved.write_text(json.dumps(row) + "\n")
    attr = runner.invoke(app, ["attribute", "--run", str(cli_run), "--targets", str(saved), "--quiet"])
    assert attr.exit_code == 0, attr.output
    assert "target generated-3: top 5 documents" in attr.output
    ver = runner.invoke(app, ["verify", "--run", str(cli_run), "--sample-steps", "0"])
    assert ver.exit_code == 0, ver.output
    assert "OK" in ver.output


def test_errors_are_one_line_and_exit_1(cli_run, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = runner.invoke(app, ["train", "--corpus", str(empty), "--run", str(tmp_path / "r"), *TINY])
    assert result.exit_code == 1 and "error:" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "r").exists()
    missing = runner.invoke(app, ["values", "--run", str(tmp_path / "nope"), "--target", "t1"])
    assert missing.exit_code == 1 and "does not exist" in missing.output
    unknown = runner.invoke(app, ["values", "--run", str(cli_run), "--target", "zzz"])
    assert unknown.exit_code == 1 and "not in" in unknown.output


def test_verify_fails_naming_the_file(cli_run, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(cli_run, copy)
    data = bytearray((copy / "values.parquet").read_bytes())
    data[len(data) // 2] ^= 1
    (copy / "values.parquet").write_bytes(bytes(data))
    result = runner.invoke(app, ["verify", "--run", str(copy), "--sample-steps", "0"])
    assert result.exit_code == 1
    assert "values.parquet: SHA-256 differs" in result.output


def test_resume_flags(cli_run):
    both = runner.invoke(app, ["train", "--run", str(cli_run), "--resume", "--corpus", "x"])
    assert both.exit_code == 1 and "drop --corpus" in both.output
    done = runner.invoke(app, ["train", "--run", str(cli_run), "--resume"])
    assert done.exit_code == 1 and "already complete" in done.output


def test_train_with_calibrated_sketches_without_embeddings(tmp_path):
    """The sketch flags reach the run: PCA projections calibrated on the first segment, embeddings left
    out of the sketch (no slot for wte/wpe), and `provenance approximate` answers from that store."""
    corpus = write_corpus(tmp_path / "docs")
    run = tmp_path / "run"
    result = runner.invoke(app, ["train", "--corpus", str(corpus), "--run", str(run), *TINY, "--sketch",
                                 "--sketch-projection", "pca", "--sketch-k", "4", "--sketch-every", "2",
                                 "--sketch-skip-embeddings"])
    assert result.exit_code == 0, result.output
    meta = json.loads((run / "sketches" / "meta.json").read_text())
    assert meta["settings"]["projection"] == "pca" and meta["settings"]["skip_embeddings"] is True
    assert meta["settings"]["k_out"] == 4 and meta["every"] == 2 and "pca_sha256" in meta
    from safetensors import safe_open

    with safe_open(str(run / "sketches" / "projections.safetensors"), framework="pt") as handle:
        keys = set(handle.keys())
    assert keys and not any("wte" in k or "wpe" in k for k in keys)
    answer = runner.invoke(app, ["approximate", "--run", str(run), "--text", "sea wind", "--format", "json"])
    assert answer.exit_code == 0, answer.output
    assert json.loads(answer.output)["label"].startswith("approximate")


def test_cli_turns_on_huge_pages_for_torch_before_torch_is_imported():
    """torch reads THP_MEM_ALLOC_ENABLE once, at its first allocation: the CLI module must set it before
    anything imports torch, and leave a user's own setting alone."""
    import subprocess
    import sys

    code = ("import os, sys; import provenance.cli; "
            "print('torch' in sys.modules, os.environ.get('THP_MEM_ALLOC_ENABLE'))")
    env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.split() == ["False", "1"]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**env, "THP_MEM_ALLOC_ENABLE": "0"}, check=True)
    assert out.stdout.split() == ["False", "0"]


def test_train_keep_rows_mb_is_recorded_and_replayed(tmp_path):
    """--keep-rows-mb reaches the engine and the manifest; a replay (attribute) uses the recorded value,
    and a bad value is refused naming the setting."""
    corpus = write_corpus(tmp_path / "docs")
    run = tmp_path / "run"
    targets = tmp_path / "targets.jsonl"
    targets.write_text(json.dumps({"id": "t1", "prompt": "the", "text": " sea wind"}) + "\n")
    result = runner.invoke(app, ["train", "--corpus", str(corpus), "--run", str(run), "--targets", str(targets),
                                 *TINY, "--keep-rows-mb", "0"])
    assert result.exit_code == 0, result.output
    config = json.loads((run / "manifest.json").read_text())["config"]
    assert config["attribution"]["keep_rows_mb"] == 0 and config["engine"]["keep_rows_mb"] == 0
    from provenance.config import RunConfig
    from provenance.train.trainer import engine_config

    recorded = RunConfig.from_json({k: v for k, v in config.items() if k != "engine"})
    assert engine_config(recorded, config["engine"]).keep_rows_mb == 0  # what replay, resume and verify build
    later = tmp_path / "later.jsonl"
    later.write_text(json.dumps({"id": "t2", "prompt": "the", "text": " sea wind"}) + "\n")
    replay = runner.invoke(app, ["attribute", "--run", str(run), "--targets", str(later), "--quiet"])
    assert replay.exit_code == 0, replay.output
    values = pd.read_parquet(run / "values.parquet").set_index(["target_id", "doc_id"])["value"]
    before, after = values.loc["t1"], values.loc["t2"].reindex(values.loc["t1"].index)
    assert float((before - after).abs().max() / before.abs().max()) <= 1e-5
    bad = runner.invoke(app, ["train", "--corpus", str(corpus), "--run", str(tmp_path / "bad"), *TINY,
                              "--keep-rows-mb", "-1"])
    assert bad.exit_code == 1 and "attribution.keep_rows_mb" in bad.output
