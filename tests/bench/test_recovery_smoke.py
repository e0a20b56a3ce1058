"""Smoke tests of bench/recovery.py: its pieces against hand-worked truths, the targets against the
shipped texts, then a --quick run (tiny corpus and model, about a minute) that prints one JSON line."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

BENCH_DIR = Path(__file__).resolve().parents[2] / "bench"
PAIRS = Path(__file__).resolve().parents[2] / "data" / "pairs" / "verses.parquet"


@pytest.fixture(scope="module")
def modules():
    sys.path.insert(0, str(BENCH_DIR))
    try:
        yield {name: importlib.import_module(name) for name in ("recovery_targets", "recovery_rankings", "recovery")}
    finally:
        sys.path.remove(str(BENCH_DIR))


@pytest.fixture(scope="module")
def quick(modules):
    return modules["recovery_targets"].build_benchmark(modules["recovery_targets"].QUICK_SPEC)


def test_rank_of_counts_ties_as_the_expected_position(modules):
    rank_of = modules["recovery_rankings"].rank_of
    scores = np.array([3.0, 1.0, 3.0, 2.0, 5.0])
    assert rank_of(scores, [4]) == 1.0
    assert rank_of(scores, [0]) == 2.5  # one better (5), tied with one other: positions 2 or 3
    assert rank_of(scores, [1, 3]) == 4.0  # best of the two sources counts
    assert rank_of(np.array([-np.inf, 1.0, -np.inf, -np.inf]), [0]) == 3.0  # three unlisted share 2..4


def test_reciprocal_rank_fusion_by_hand(modules):
    rr = modules["recovery_rankings"]
    fused = rr.rrf(np.array([1.0, 2.0, 3.0]), np.array([3.0, np.inf, 1.0]))
    assert fused == pytest.approx([1 / 61 + 1 / 63, 1 / 62, 1 / 63 + 1 / 61])
    assert list(rr.ranks_from_scores(np.array([0.2, 0.9, 0.5]))) == [3.0, 1.0, 2.0]


def test_quick_targets_come_from_the_shipped_texts(modules, quick):
    docs = {d.doc_id: d.text for d in quick.corpus.documents}
    verses = pd.read_parquet(PAIRS)
    by_kind = {k: [t for t in quick.targets if t.kind == k] for k in ("verbatim", "paraphrase", "topic", "unrelated")}
    assert all(by_kind.values())
    for t in by_kind["verbatim"]:
        assert t.text in docs[t.sources[0]]
    for t in by_kind["paraphrase"]:
        book_chapter, verses_range = t.origin.removeprefix("KJV ").rsplit(":", 1)
        book, chapter = book_chapter.rsplit(" ", 1)
        first, last = (int(x) for x in verses_range.split("-"))
        rows = verses[(verses["book"] == book) & (verses["chapter"] == int(chapter))
                      & verses["verse"].between(first, last)].sort_values("verse")
        assert t.text == " ".join(rows["kjv"])
        assert t.text not in docs[t.sources[0]]  # a re-rendering, not a copy
    for t in by_kind["topic"]:
        teller = t.origin.split()[1]
        assert teller in ("Luke", "John") and not any(d.startswith(f"web:{teller}.") for d in docs)
        assert all(s.startswith(("web:Matthew.", "web:Mark.")) for s in t.sources)
    for t in by_kind["unrelated"]:
        assert t.sources == () and t.text not in docs.values()


def test_every_copy_counts_as_a_source(quick):
    psalm14 = next(t for t in quick.targets if t.origin.startswith("KJV Psalms 14:"))
    assert set(psalm14.sources) >= {"web:Psalms.14", "web:Psalms.53"}  # Psalm 53 repeats Psalm 14


def test_full_benchmark_has_the_issue_shape(modules):
    rt = modules["recovery_targets"]
    first, second = rt.build_benchmark(), rt.build_benchmark()
    assert len(first.corpus.documents) >= 2000 and len(first.targets) >= 30
    assert first.corpus.sha256 == second.corpus.sha256
    assert [t.to_json() for t in first.targets] == [t.to_json() for t in second.targets]
    for kind in rt.KINDS:
        assert sum(t.kind == kind for t in first.targets) >= 10


def test_hard_benchmark_has_the_harder_shape(modules):
    rt = modules["recovery_targets"]
    bench = rt.build_benchmark(rt.hard_spec())
    docs = {d.doc_id for d in bench.corpus.documents}
    assert len(docs) == 4444 and sum(d.startswith("web:") for d in docs) == 1144
    assert not any(d.startswith(("web:Luke.", "web:John.")) for d in docs)  # the topic tellers stay untrained
    counts = {k: sum(t.kind == k for t in bench.targets) for k in (*rt.KINDS, "unrelated")}
    assert counts == {"verbatim": 12, "paraphrase": 60, "topic": 32, "unrelated": 8}
    assert all(set(t.sources) <= docs for t in bench.targets)


def test_fresh_benchmark_asks_about_pericopes_the_combined_order_never_saw(modules):
    """The fresh topic targets are an out-of-sample test: none of their pericopes, and no verse their
    tellers' accounts use, is in hand_lists.json (where the order's fitting queries and the hard targets
    come from); the rest of the benchmark is the hard one."""
    rt = modules["recovery_targets"]
    pairs = PAIRS.parent
    fresh = json.loads((pairs / "fresh_parallels.json").read_text(encoding="utf-8"))["gospel_parallels"]
    seen = json.loads((pairs / "hand_lists.json").read_text(encoding="utf-8"))["gospel_parallels"]
    assert not set(fresh) & set(seen)
    seen_verses = {(book, *rt._parse_range(r)) for books in seen.values() for book, r in books.items()}
    for name, books in fresh.items():
        for book, verses in books.items():
            chapter, lo, hi = rt._parse_range(verses)
            overlaps = [s for s in seen_verses if s[:2] == (book, chapter) and s[2] <= hi and s[3] >= lo]
            assert not overlaps, (name, book, verses, overlaps)
    bench, hard = rt.build_benchmark(rt.fresh_spec()), rt.build_benchmark(rt.hard_spec())
    assert bench.corpus.sha256 == hard.corpus.sha256
    topic = [t for t in bench.targets if t.kind == "topic"]
    assert len(topic) == 60 and all(t.origin.split("(")[-1].rstrip(")") in fresh for t in topic)
    others = [t.to_json() for t in bench.targets if t.kind in ("verbatim", "paraphrase")]
    assert others == [t.to_json() for t in hard.targets if t.kind in ("verbatim", "paraphrase")]


def test_quick_run_prints_one_json_line(modules, tmp_path, capsys):
    assert modules["recovery"].main(["--quick", "--json", "--runs-dir", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    result = json.loads(lines[0])
    assert result["n_documents"] == 61 and result["n_targets"] == 7
    for ranking in ("value", "evidence", "combined", "bm25", "fusion", "value_specific", "combined_default"):
        for kind in ("verbatim", "paraphrase", "topic"):
            cell = result[ranking][kind]
            assert 0.0 <= cell["recall_at_1"] <= cell["recall_at_10"] <= 1.0
            assert 1.0 <= cell["mean_rank"] <= result["n_documents"]
    # a verbatim excerpt shares its whole text with its source: the evidence ranking must put it first
    assert result["evidence"]["verbatim"]["recall_at_1"] == 1.0
    # the combined ranking puts a largely copied source in its first tier: a verbatim source stays first
    assert result["combined"]["verbatim"]["recall_at_1"] == 1.0
    assert set(result["combined_weights"]["fold_weights"].values()) <= set(result["combined_weights"]["weight_grid"])
    assert result["min_reference_targets"] == 4
    # the cached run is reused (no retraining) and gives the same figures
    assert modules["recovery"].main(["--quick", "--json", "--reuse", "--runs-dir", str(tmp_path)]) == 0
    again = json.loads(capsys.readouterr().out.strip())
    assert again["value"] == result["value"] and again["fusion"] == result["fusion"]


def test_best_chunk_value_sums_steps_then_takes_the_best_chunk(modules):
    contrib = pd.DataFrame({
        "step": [1, 2, 1, 2, 1],
        "target_id": ["t", "t", "t", "t", "t"],
        "doc_id": ["a", "a", "a", "b", "b"],
        "chunk_id": [0, 0, 1, 2, 2],
        "value_first_order": [1.0, 2.0, 2.5, -1.0, 0.5],
    })
    best = modules["recovery_rankings"].best_chunk_values(contrib)
    assert best.loc[("t", "a")] == 3.0  # chunk 0: 1 + 2 beats chunk 1: 2.5
    assert best.loc[("t", "b")] == -0.5


def test_folds_alternate_within_each_kind(modules):
    rr = modules["recovery_rankings"]
    results = [rr.TargetRanks(f"t{i}", kind, {}, {}, "-") for i, kind in enumerate("aabab")]
    assert rr.folds_of(results) == [0, 1, 0, 0, 1]


def test_fit_weight_prefers_recall_then_mean_rank_then_the_smaller_weight(modules):
    fit = modules["recovery_rankings"].fit_weight
    assert fit({0.0: np.array([1.0, 2.0]), 0.1: np.array([1.0, 1.0]), 0.5: np.array([1.0, 1.0])}) == 0.1
    assert fit({0.0: np.array([1.0, 3.0]), 0.1: np.array([1.0, 2.0])}) == 0.1  # same recall@1, better mean
    assert fit({0.0: np.array([1.0, 5.0]), 0.1: np.array([2.0, 2.0])}) == 0.0  # recall@1 first


def test_combined_weight_is_fitted_on_the_other_fold(modules):
    from provenance.evidence.schema import Evidence

    rr = modules["recovery_rankings"]
    doc_index = {"p1": 0, "p2": 1}

    def target(name: str, source: str) -> object:
        evidence = {d: Evidence(label="paraphrase", similarity=0.5, longest_span_tokens=0, span_coverage=0.0,
                                score=score, bm25=3.0) for d, score in (("p1", 0.90), ("p2", 0.85))}  # equal BM25
        # the value favours p2 (relative 1 against 0.25): with w = 0.1, p2 (0.95) passes p1 (0.925)
        inputs = rr.CombineInputs(evidence, {"p1": 1.0, "p2": 4.0}, [doc_index[source]])
        return rr.TargetRanks(name, "paraphrase", {}, {}, "paraphrase", inputs)

    # the value helps both targets: each fold fits w = 0.1 on the other and ranks its source first
    helped, info = rr.add_combined([target("a", "p2"), target("b", "p2")], doc_index, weights=(0.0, 0.1))
    assert [r.ranks["combined"] for r in helped] == [1.0, 1.0]
    assert info["fold_weights"] == {"0": 0.1, "1": 0.1}
    # the value misleads target b: a's weight is fitted on b (0.0), so a is ranked second, held out
    mixed, info = rr.add_combined([target("a", "p2"), target("b", "p1")], doc_index, weights=(0.0, 0.1))
    assert info["fold_weights"] == {"0": 0.0, "1": 0.1}
    assert [r.ranks["combined"] for r in mixed] == [2.0, 2.0]
    assert [r.ranks["combined_default"] for r in mixed] == [1.0, 2.0]  # the default weight (2.0) favours p2
