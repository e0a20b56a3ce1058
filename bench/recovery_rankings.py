"""Rankings of a run's training documents for one target, and the source-recovery metrics.

Every ranking orders *all* documents of the run. The rank of a target's source is the best rank among
its sources (where text repeats, every copy counts). Ties count as the expected rank under a random
tie-break: 1 + (documents scoring strictly higher) + (other documents tied with it) / 2.

- ``value``: In-Run Data Shapley value (values.parquet), largest first.
- ``value_best_chunk``: a document's best chunk value (values summed over steps per chunk, then the
  maximum over the document's chunks): the paper ranks chunks, and a long document's sum also collects
  the small generic signal of its many chunks. Reported beside ``value``, not instead of it.
- ``evidence``: the project's evidence ranking for a text (provenance.evidence.answer: candidates from
  dense, BM25 and n-gram channels, ordered by label, then the calibrated paraphrase score). Documents it
  does not nominate share the positions after its list.
- ``combined``: reciprocal-rank fusion of value and evidence, score = 1/(60 + r_value) + 1/(60 + r_evidence)
  (a document outside the evidence list adds nothing from it); ties by value. Fixed before measuring.
- ``label_then_value``: a second combination, reported beside it: the evidence label as the first key
  (verbatim, paraphrase, topic, then unrelated / not nominated), the value as the second.
- ``bm25``: bm25s over the index's passages (the same tokenization as the evidence query), a document's
  score = its best passage's.
- ``dense``: MiniLM cosine, a document's score = best (output window, passage) pair.
- ``fusion``: reciprocal-rank fusion of bm25 and dense, the same k = 60.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

RRF_K = 60
RANKINGS = ("value", "value_best_chunk", "evidence", "combined", "label_then_value", "bm25", "dense", "fusion")
TEXT_ONLY = ("bm25", "fusion")  # the baselines the issue names (dense is shown for reference)


@dataclass(frozen=True)
class TargetRanks:
    target_id: str
    kind: str
    ranks: dict[str, float]  # ranking name -> rank of the best-placed source
    top_doc: dict[str, str]  # ranking name -> doc id at rank 1
    source_label: str  # evidence label of the best-placed source by evidence ("-" if not nominated)


def rank_of(scores: np.ndarray, positions: list[int]) -> float:
    """Expected rank (1 = best, higher score first) of the best of ``positions`` under random tie-breaks."""
    best = max(scores[p] for p in positions)
    higher = int(np.sum(scores > best))
    tied_others = int(np.sum(scores == best)) - 1
    return 1.0 + higher + tied_others / 2.0


def rrf(*rank_arrays: np.ndarray) -> np.ndarray:
    """Reciprocal-rank fusion score (higher = better); a rank of inf adds nothing."""
    return sum(np.where(np.isfinite(r), 1.0 / (RRF_K + r), 0.0) for r in rank_arrays)


def ranks_from_scores(scores: np.ndarray) -> np.ndarray:
    """1-based ranks (higher score first; stable on ties, used only as inputs to fusion)."""
    order = np.argsort(-scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    ranks[order] = np.arange(1, len(scores) + 1)
    return ranks


class Ranker:
    """Scores every document of an indexed run for one text, by every ranking above."""

    def __init__(self, index, values: pd.DataFrame, best_chunk: pd.Series) -> None:
        self.index = index
        self.n_docs = len(index.doc_ids)
        self.values = values  # values.parquet (all targets)
        self.best_chunk = best_chunk  # (target_id, doc_id) -> best chunk value

    def best_chunk_scores(self, target_id: str) -> np.ndarray:
        mine = self.best_chunk.loc[target_id]
        scores = np.zeros(self.n_docs)  # a document never sampled has no chunk value: 0
        idx = np.array([self.index.doc_index[d] for d in mine.index], dtype=np.int64)
        scores[idx] = mine.to_numpy(np.float64)
        return scores

    def value_scores(self, target_id: str) -> np.ndarray:
        mine = self.values[self.values["target_id"] == target_id]
        scores = np.full(self.n_docs, -np.inf)
        idx = np.array([self.index.doc_index[d] for d in mine["doc_id"]], dtype=np.int64)
        scores[idx] = mine["value"].to_numpy(np.float64)
        return scores

    def evidence(self, prepared) -> tuple[np.ndarray, np.ndarray, dict[int, str]]:
        """(scores, tier, labels): score = -(position in the evidence list), outside = -inf; tier = the
        label's order (0 verbatim .. 3 unrelated, 4 not nominated)."""
        from provenance.evidence.answer import MAX_CANDIDATES, _evidence_rows
        from provenance.evidence.labels import LABEL_ORDER

        rows = _evidence_rows(self.index, prepared, MAX_CANDIDATES)
        scores = np.full(self.n_docs, -np.inf)
        tier = np.full(self.n_docs, float(len(LABEL_ORDER)))
        labels: dict[int, str] = {}
        for row in rows:
            d = self.index.doc_index[row.doc_id]
            scores[d] = -float(row.rank)
            tier[d] = float(LABEL_ORDER[row.evidence.label])
            labels[d] = row.evidence.label
        return scores, tier, labels

    def bm25_scores(self, text: str) -> np.ndarray:
        import bm25s

        tokens = bm25s.tokenize([text], stopwords="en", show_progress=False, return_ids=False)[0]
        vocab = self.index.bm25.vocab_dict
        tokens = [t for t in tokens if t in vocab]
        doc_scores = np.zeros(self.n_docs)
        if tokens:
            passage_scores = np.asarray(self.index.bm25.get_scores(tokens), dtype=np.float64)
            np.maximum.at(doc_scores, self.index.passage_doc, passage_scores)
        return doc_scores

    def dense_scores(self, prepared) -> np.ndarray:
        sims = np.asarray(self.index.embeddings, dtype=np.float32) @ np.asarray(prepared.vectors, dtype=np.float32).T
        best = sims.max(axis=1).astype(np.float64)
        doc_scores = np.full(self.n_docs, -np.inf)
        np.maximum.at(doc_scores, self.index.passage_doc, best)
        return doc_scores

    def rank_target(self, target_id: str, kind: str, text: str, sources: list[str]) -> TargetRanks:
        from provenance.evidence.assess import prepare_output

        prepared = prepare_output(text, self.index.encoder, self.index.params)
        value = self.value_scores(target_id)
        evidence, tier, labels = self.evidence(prepared)
        bm25 = self.bm25_scores(text)
        dense = self.dense_scores(prepared)
        value_rank = ranks_from_scores(value)
        evidence_rank = np.where(np.isfinite(evidence), -evidence, np.inf)
        # ties of the fusion score fall back to value (a tiny term below any RRF difference)
        combined = rrf(value_rank, evidence_rank) - value_rank * 1e-12
        label_then_value = -tier * 1e6 - value_rank  # label first, then value rank
        fusion = rrf(ranks_from_scores(bm25), ranks_from_scores(dense))
        scores = {
            "value": value, "value_best_chunk": self.best_chunk_scores(target_id), "evidence": evidence,
            "combined": combined, "label_then_value": label_then_value, "bm25": bm25, "dense": dense, "fusion": fusion,
        }
        ranks: dict[str, float] = {}
        top: dict[str, str] = {}
        positions = [self.index.doc_index[s] for s in sources if s in self.index.doc_index]
        for name in RANKINGS:
            s = scores[name]
            top[name] = self.index.doc_ids[int(np.argmax(s))]
            if positions:
                ranks[name] = rank_of(s, positions)
        source_label = "-"
        if positions:
            nominated = [p for p in positions if p in labels]
            if nominated:
                source_label = labels[min(nominated, key=lambda p: -evidence[p])]
        return TargetRanks(target_id, kind, ranks, top, source_label)


def best_chunk_values(contributions: pd.DataFrame, column: str = "value_first_order") -> pd.Series:
    """(target_id, doc_id) -> the largest per-chunk value (summed over steps) among the document's chunks."""
    per_chunk = contributions.groupby(["target_id", "doc_id", "chunk_id"], sort=False)[column].sum()
    return per_chunk.groupby(level=["target_id", "doc_id"]).max()


def summarize(results: list[TargetRanks], kinds: tuple[str, ...]) -> dict[str, dict[str, dict[str, float]]]:
    """ranking -> kind -> {recall_at_1, recall_at_10, mean_rank, median_rank, n}."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for name in RANKINGS:
        out[name] = {}
        for kind in kinds:
            ranks = np.array([r.ranks[name] for r in results if r.kind == kind and name in r.ranks])
            if len(ranks) == 0:
                continue
            out[name][kind] = {
                "recall_at_1": round(float(np.mean(ranks <= 1)), 4),
                "recall_at_10": round(float(np.mean(ranks <= 10)), 4),
                "mean_rank": round(float(np.mean(ranks)), 2),
                "median_rank": float(np.median(ranks)),
                "n": int(len(ranks)),
            }
    return out
