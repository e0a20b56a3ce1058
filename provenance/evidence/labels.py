"""Evidence labels (verbatim / paraphrase / topic / unrelated) from calibrated thresholds.

The thresholds live in thresholds.json next to this file, written by ``python -m
provenance.evidence.calibrate`` from real paraphrase pairs (KJV vs WEB Bible verses, data/pairs/); the
measured held-out precision and recall sit in the same file and in docs/evidence.md. Rules, in order:

- verbatim: the longest shared word span reaches ``verbatim_min_longest`` words, or shared spans cover at
  least ``verbatim_min_coverage`` of an output of at least ``verbatim_min_output_words`` words;
- paraphrase: a logistic score over (similarity, content-word overlap, log(1 + longest span), coverage)
  reaches ``paraphrase_min_score``;
- topic: the best passage similarity reaches ``topic_min_similarity``;
- unrelated otherwise.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from provenance.errors import EvidenceIndexError
from provenance.evidence.spans import SpanMatch, shared_spans
from provenance.evidence.text import Words, word_hash

THRESHOLDS_PATH = Path(__file__).with_name("thresholds.json")
FEATURES = ("similarity", "overlap", "log_longest", "coverage")
LABEL_ORDER = {"verbatim": 0, "paraphrase": 1, "topic": 2, "unrelated": 3}


def _stopword_hashes() -> np.ndarray:
    from bm25s.stopwords import STOPWORDS_EN

    return np.array(sorted({word_hash(w.casefold()) for w in STOPWORDS_EN}), dtype=np.uint64)


STOPWORD_HASHES = _stopword_hashes()


@dataclass(frozen=True)
class PairFeatures:
    """The scores behind a label, for one (output, document-or-passage) pair."""

    similarity: float  # cosine of the output and the best passage (embedder)
    overlap: float  # fraction of the output's distinct content words present in the best passage
    longest: int  # words in the longest shared span
    coverage: float  # fraction of the output's words inside shared spans
    n_output_words: int

    def vector(self) -> np.ndarray:
        return np.array([self.similarity, self.overlap, math.log1p(self.longest), self.coverage])


@dataclass(frozen=True)
class Thresholds:
    """Calibrated decision rules; see thresholds.json for the data and the measured quality."""

    min_span_words: int
    verbatim_min_longest: int
    verbatim_min_coverage: float
    verbatim_min_output_words: int
    paraphrase_weights: tuple[float, ...]
    paraphrase_intercept: float
    paraphrase_min_score: float
    topic_min_similarity: float
    embedder: str
    embedder_sha256: str
    measured: dict = field(default_factory=dict, compare=False, hash=False)

    def paraphrase_score(self, features: PairFeatures) -> float:
        z = float(np.dot(self.paraphrase_weights, features.vector()) + self.paraphrase_intercept)
        return 1.0 / (1.0 + math.exp(-z)) if z > -700 else 0.0

    def label(self, features: PairFeatures) -> tuple[str, float]:
        """(label, paraphrase score) for one pair."""
        score = self.paraphrase_score(features)
        if features.longest >= self.verbatim_min_longest or (
            features.n_output_words >= self.verbatim_min_output_words
            and features.coverage >= self.verbatim_min_coverage
        ):
            return "verbatim", score
        if score >= self.paraphrase_min_score:
            return "paraphrase", score
        if features.similarity >= self.topic_min_similarity:
            return "topic", score
        return "unrelated", score

    def to_json(self) -> dict:
        return {
            "min_span_words": self.min_span_words,
            "verbatim": {
                "min_longest_span_words": self.verbatim_min_longest,
                "min_coverage": self.verbatim_min_coverage,
                "min_output_words": self.verbatim_min_output_words,
            },
            "paraphrase": {
                "features": list(FEATURES),
                "weights": list(self.paraphrase_weights),
                "intercept": self.paraphrase_intercept,
                "min_score": self.paraphrase_min_score,
            },
            "topic": {"min_similarity": self.topic_min_similarity},
            "embedder": {"name": self.embedder, "sha256": self.embedder_sha256},
            "measured": self.measured,
        }

    @classmethod
    def from_json(cls, data: dict) -> Thresholds:
        para = data["paraphrase"]
        if tuple(para["features"]) != FEATURES:
            raise EvidenceIndexError(
                f"thresholds list features {para['features']}, this code computes {list(FEATURES)}; "
                "recalibrate with `python -m provenance.evidence.calibrate`"
            )
        return cls(
            min_span_words=int(data["min_span_words"]),
            verbatim_min_longest=int(data["verbatim"]["min_longest_span_words"]),
            verbatim_min_coverage=float(data["verbatim"]["min_coverage"]),
            verbatim_min_output_words=int(data["verbatim"]["min_output_words"]),
            paraphrase_weights=tuple(float(w) for w in para["weights"]),
            paraphrase_intercept=float(para["intercept"]),
            paraphrase_min_score=float(para["min_score"]),
            topic_min_similarity=float(data["topic"]["min_similarity"]),
            embedder=str(data["embedder"]["name"]),
            embedder_sha256=str(data["embedder"]["sha256"]),
            measured=data.get("measured", {}),
        )


@lru_cache(maxsize=8)
def load_thresholds(path: str | None = None) -> Thresholds:
    """The calibrated thresholds (default: the shipped thresholds.json)."""
    file = Path(path) if path else THRESHOLDS_PATH
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
        return Thresholds.from_json(data)
    except FileNotFoundError as exc:
        raise EvidenceIndexError(
            f"label thresholds {file} are missing; run `python -m provenance.evidence.calibrate` "
            "(or reinstall provenance)"
        ) from exc
    except (KeyError, TypeError, ValueError) as exc:
        raise EvidenceIndexError(
            f"label thresholds {file} are malformed ({exc!r}); recalibrate with "
            "`python -m provenance.evidence.calibrate`"
        ) from exc


def content_words(words: Words) -> np.ndarray:
    """Distinct word hashes that are not stopwords."""
    unique = np.unique(words.hashes)
    return unique[~np.isin(unique, STOPWORD_HASHES)]


def overlap(output_content: np.ndarray, passage: Words) -> float:
    """Fraction of the output's distinct content words that occur in the passage."""
    if output_content.size == 0:
        return 0.0
    return float(np.isin(output_content, passage.hashes).mean())


def pair_features(
    output: Words, document: Words, similarity: float, min_span_words: int, passage: Words | None = None
) -> tuple[PairFeatures, SpanMatch]:
    """Features of one pair: spans over the whole document, overlap against ``passage`` (the best passage;
    the document itself when not given)."""
    match = shared_spans(output, document, min_span_words)
    features = PairFeatures(
        similarity=float(similarity),
        overlap=overlap(content_words(output), passage if passage is not None else document),
        longest=match.longest,
        coverage=match.coverage,
        n_output_words=len(output),
    )
    return features, match
