"""The shipped thresholds load, carry their measured quality, and decide labels as documented."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from provenance.errors import EvidenceIndexError
from provenance.evidence.labels import FEATURES, PairFeatures, Thresholds, load_thresholds, pair_features
from provenance.evidence.text import words


@pytest.fixture(scope="module")
def shipped() -> Thresholds:
    return load_thresholds()


def test_shipped_thresholds_are_calibrated_and_measured(shipped, encoder):
    assert shipped.embedder == "all-MiniLM-L6-v2" and shipped.embedder_sha256 == encoder.sha256
    assert len(shipped.paraphrase_weights) == len(FEATURES)
    held = shipped.measured["held_out"]["paraphrase_vs_neighbour"]
    for key in ("precision", "recall"):
        assert 0.0 <= held["label_decision"][key] <= 1.0
    assert set(shipped.measured["data"]["fit_books"]).isdisjoint(shipped.measured["data"]["held_out_books"])
    assert "Matthew" in shipped.measured["data"]["held_out_books"]
    assert 0.0 < shipped.topic_min_similarity < 1.0
    assert shipped.verbatim_min_longest >= shipped.min_span_words


def _features(**kw) -> PairFeatures:
    base = dict(similarity=0.0, overlap=0.0, longest=0, coverage=0.0, n_output_words=30)
    base.update(kw)
    return PairFeatures(**base)


def test_verbatim_rule_at_its_thresholds(shipped):
    at = shipped.verbatim_min_longest
    assert shipped.label(_features(longest=at))[0] == "verbatim"
    assert shipped.label(_features(longest=at - 1))[0] != "verbatim"
    cov = shipped.verbatim_min_coverage
    assert shipped.label(_features(longest=shipped.min_span_words, coverage=cov))[0] == "verbatim"
    short = shipped.verbatim_min_output_words - 1
    assert shipped.label(_features(longest=1, coverage=1.0, n_output_words=short))[0] != "verbatim"


def test_paraphrase_topic_unrelated_follow_score_and_similarity(shipped):
    strong = _features(similarity=0.95, overlap=0.9, longest=3)
    assert shipped.paraphrase_score(strong) >= shipped.paraphrase_min_score
    assert shipped.label(strong)[0] == "paraphrase"
    topic = _features(similarity=shipped.topic_min_similarity + 1e-6)
    assert shipped.paraphrase_score(topic) < shipped.paraphrase_min_score
    assert shipped.label(topic)[0] == "topic"
    assert shipped.label(_features(similarity=shipped.topic_min_similarity - 1e-3))[0] == "unrelated"


def test_score_is_the_documented_logistic(shipped):
    import math

    f = _features(similarity=0.7, overlap=0.5, longest=4, coverage=0.2)
    z = sum(w * x for w, x in zip(shipped.paraphrase_weights, (0.7, 0.5, math.log1p(4), 0.2)))
    assert shipped.paraphrase_score(f) == pytest.approx(1 / (1 + math.exp(-(z + shipped.paraphrase_intercept))))


def test_pair_features_from_texts():
    f, match = pair_features(words("The cat sat on the mat today"), words("a cat sat on the mat"), 0.5, 4)
    assert f.longest == 5 and match.longest == 5
    assert f.coverage == pytest.approx(5 / 7)
    assert f.overlap == pytest.approx(3 / 4)  # content words cat, sat, mat, today; "today" is missing
    assert f.n_output_words == 7


def test_thresholds_round_trip_and_bad_files(shipped, tmp_path):
    path = tmp_path / "t.json"
    path.write_text(json.dumps(shipped.to_json()))
    assert load_thresholds(str(path)) == shipped
    broken = shipped.to_json()
    del broken["topic"]
    path2 = tmp_path / "broken.json"
    path2.write_text(json.dumps(broken))
    with pytest.raises(EvidenceIndexError, match="malformed"):
        load_thresholds(str(path2))
    with pytest.raises(EvidenceIndexError, match="missing"):
        load_thresholds(str(tmp_path / "absent.json"))
    other = shipped.to_json()
    other["paraphrase"]["features"] = ["similarity"]
    path3 = tmp_path / "other.json"
    path3.write_text(json.dumps(other))
    with pytest.raises(EvidenceIndexError, match="recalibrate"):
        load_thresholds(str(path3))
    assert replace(shipped, topic_min_similarity=0.1) != shipped
