"""`provenance curate`: a tiny real run with validation targets -> curated corpus -> a run trained on it."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from provenance.cli import app
from provenance.config import ModelConfig, RunConfig, TrainConfig
from provenance.curate import DropRule, curate, output_paths
from provenance.data import load_corpus
from provenance.errors import CurationError, RunDirectoryError, TargetError
from provenance.train import train
from provenance.train.targets import TargetSpec

os.environ.setdefault("HF_HUB_OFFLINE", "1")

WORDS = ("river stone tree light dark king queen ship sea wind fire water earth sky moon sun bread salt "
         "road hill song bird field gold iron door").split()
TARGETS = [
    TargetSpec("validation:a", "", "the king saw the river and the stone tree"),
    TargetSpec("validation:b", "", "ship sea wind fire water under the moon"),
    TargetSpec("other", "", "gold iron door bread salt road"),
]


def tiny_config() -> RunConfig:
    return RunConfig(
        model=ModelConfig(n_layer=1, n_head=2, n_embd=16, context_length=32),
        train=TrainConfig(steps=8, batch_size=4, micro_batch_size=4, warmup_steps=1, lr=3e-3,
                          checkpoint_every=8, tokenizer_vocab_size=300),
    ).check()


def write_docs(folder: Path, n_docs: int = 16, seed: int = 0) -> Path:
    rng = random.Random(seed)
    folder.mkdir(parents=True)
    for i in range(n_docs):
        words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(10, 40)))
        (folder / f"doc{i:02d}.txt").write_text(f"the {words}.\n", encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def run_with_targets(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("curate")
    path = root / "runs" / "base"
    train(write_docs(root / "docs"), path, tiny_config(), targets=TARGETS, progress=False)
    return path


def mean_values(run: Path, target_ids: list[str]) -> pd.Series:
    """Per-document mean over the targets, straight from values.parquet (pandas only)."""
    values = pd.read_parquet(run / "values.parquet")
    table = values.pivot(index="doc_id", columns="target_id", values="value")
    return table[target_ids].mean(axis=1)


@pytest.mark.parametrize(
    "spec, expected",
    [("negative", DropRule("negative")), ("bottom-0.16", DropRule("bottom", 0.16)),
     ("bottom-16%", DropRule("bottom", 0.16)), ("Bottom-.5", DropRule("bottom", 0.5))],
)
def test_drop_rule_parses(spec, expected):
    got = DropRule.parse(spec)
    assert got.kind == expected.kind and got.fraction == pytest.approx(expected.fraction)


@pytest.mark.parametrize("spec", ["", "positive", "bottom", "bottom-0", "bottom-1", "bottom-1.5", "bottom-150%",
                                  "bottom--0.1", "bottom-abc", "top-0.1"])
def test_bad_drop_rule_is_refused_with_the_allowed_forms(spec):
    with pytest.raises(CurationError, match="bottom-FRACTION"):
        DropRule.parse(spec)


def test_drop_negative_on_validation_values(run_with_targets, tmp_path):
    expected = mean_values(run_with_targets, ["validation:a", "validation:b"])
    negative = set(expected[expected < 0].index)
    assert 0 < len(negative) < len(expected), "the tiny run should give both signs (else the test is empty)"

    result = curate(run_with_targets, "negative", tmp_path / "cur.jsonl", validation=True)

    assert result.target_ids == ("validation:a", "validation:b")
    assert set(result.dropped["doc_id"]) == negative
    dropped = pd.read_parquet(result.dropped_path)
    assert set(dropped["doc_id"]) == negative
    pd.testing.assert_series_equal(
        dropped.set_index("doc_id")["value"].sort_index(), expected[sorted(negative)].rename("value"),
        check_names=False, check_index_type=False,
    )
    assert list(dropped["rank_from_bottom"]) == list(range(1, len(negative) + 1))
    assert dropped["value"].is_monotonic_increasing

    # The curated corpus reads back with the run's doc ids, texts and hashes, minus the dropped ones.
    original = pd.read_parquet(run_with_targets / "corpus.parquet")
    curated = load_corpus(result.corpus_path)
    assert curated.doc_ids == [d for d in original["doc_id"] if d not in negative]
    by_id = original.set_index("doc_id")
    for doc in curated:
        assert doc.sha256 == by_id.loc[doc.doc_id, "sha256"]
        assert doc.source == by_id.loc[doc.doc_id, "source"]
        assert doc.metadata == json.loads(by_id.loc[doc.doc_id, "metadata"])

    summary = json.loads(result.summary_path.read_text(encoding="utf-8"))
    assert summary["n_dropped"] == len(negative) and summary["n_kept"] == len(original) - len(negative)
    assert summary["tokens_dropped"] == int(by_id.loc[sorted(negative), "n_tokens"].sum())
    assert summary["target_ids"] == ["validation:a", "validation:b"]


def test_default_is_validation_and_curated_corpus_trains(run_with_targets, tmp_path):
    result = curate(run_with_targets, "bottom-0.25", tmp_path / "cur.jsonl")
    expected = mean_values(run_with_targets, ["validation:a", "validation:b"])
    lowest = set(expected.sort_values(kind="mergesort").index[:4])  # round(0.25 * 16) = 4; no ties here
    assert expected.nunique() == len(expected)
    assert set(result.dropped["doc_id"]) == lowest
    run = train(result.corpus_path, tmp_path / "curated_run", tiny_config(), progress=False)
    trained = pd.read_parquet(run.corpus_path)
    assert set(trained["doc_id"]) == set(expected.index) - lowest


def test_per_target_values(run_with_targets, tmp_path):
    expected = mean_values(run_with_targets, ["other"])
    result = curate(run_with_targets, "negative", tmp_path / "cur.jsonl", targets=["other"])
    assert set(result.dropped["doc_id"]) == set(expected[expected < 0].index)
    assert result.target_ids == ("other",)


def test_unknown_target(run_with_targets, tmp_path):
    with pytest.raises(TargetError, match="nope"):
        curate(run_with_targets, "negative", tmp_path / "cur.jsonl", targets=["nope"])
    assert not list(tmp_path.iterdir())


def test_target_and_validation_together_are_refused(run_with_targets, tmp_path):
    with pytest.raises(CurationError, match="either --target or --validation"):
        curate(run_with_targets, "negative", tmp_path / "cur.jsonl", targets=["other"], validation=True)


def test_unknown_run(tmp_path):
    with pytest.raises(RunDirectoryError, match="does not exist"):
        curate(tmp_path / "missing", "negative", tmp_path / "cur.jsonl")


def test_run_without_targets_has_no_values(tmp_path):
    path = tmp_path / "bare"
    train(write_docs(tmp_path / "docs"), path, tiny_config(), progress=False)
    with pytest.raises(CurationError, match="no targets"):
        curate(path, "negative", tmp_path / "cur.jsonl")


def test_run_without_validation_targets_names_the_prefix(tmp_path):
    path = tmp_path / "plain"
    train(write_docs(tmp_path / "docs"), path, tiny_config(), targets=[TARGETS[2]], progress=False)
    with pytest.raises(CurationError, match="validation:"):
        curate(path, "negative", tmp_path / "cur.jsonl")


def test_existing_output_is_not_touched(run_with_targets, tmp_path):
    out = tmp_path / "cur.jsonl"
    _, dropped_path, _ = output_paths(out)
    dropped_path.write_text("mine")
    with pytest.raises(CurationError, match="already exists"):
        curate(run_with_targets, "negative", out)
    assert dropped_path.read_text() == "mine"
    assert not out.exists()


def test_out_must_be_jsonl(run_with_targets, tmp_path):
    with pytest.raises(CurationError, match=".jsonl"):
        curate(run_with_targets, "negative", tmp_path / "cur.parquet")


def test_dropping_everything_is_refused(run_with_targets, tmp_path):
    with pytest.raises(CurationError, match="nothing would be left"):
        curate(run_with_targets, "bottom-0.99", tmp_path / "cur.jsonl")  # round(0.99 * 16) = 16
    assert not list(tmp_path.iterdir())


def test_cli_curate(run_with_targets, tmp_path):
    runner = CliRunner()
    helped = runner.invoke(app, ["curate", "--help"])
    assert helped.exit_code == 0 and "bottom-FRACTION" in helped.output
    out = tmp_path / "cli.jsonl"
    result = runner.invoke(app, ["curate", "--run", str(run_with_targets), "--drop", "negative", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "dropped" in result.output and out.is_file()
    again = runner.invoke(app, ["curate", "--run", str(run_with_targets), "--drop", "negative", "--out", str(out)])
    assert again.exit_code == 1 and "already exists" in again.output
    bad = runner.invoke(app, ["curate", "--run", str(run_with_targets), "--drop", "worst", "--out",
                              str(tmp_path / "x.jsonl")])
    assert bad.exit_code == 1 and "bottom-FRACTION" in bad.output
    several = runner.invoke(app, ["curate", "--run", str(run_with_targets), "--drop", "negative",
                                  "--target", "validation:a", "--target", "other", "--out", str(tmp_path / "y.jsonl")])
    assert several.exit_code == 0, several.output
    assert "2 target(s)" in several.output
