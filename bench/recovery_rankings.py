"""Rankings of a run's training documents for one target, and the source-recovery metrics.

Every ranking orders *all* documents of the run. The rank of a target's source is the best rank among
its sources (where text repeats, every copy counts). Ties count as the expected rank under a random
tie-break: 1 + (documents scoring strictly higher) + (other documents tied with it) / 2.

Value rankings (a chunk's value = its contributions summed over steps; the players are chunks):

- ``value``: In-Run Data Shapley value of the document (values.parquet: the sum over its chunks).
- ``value_best_chunk``: the document's best chunk value (maximum over its chunks): a long document's sum
  also collects the small generic signal of its many chunks.
- ``value_contrast``: best chunk of (chunk value for this target - mean of its values for the run's other
  registered targets): the value for the loss difference L_t - mean L_other, so the part that helps every
  target cancels.
- ``value_specific``: best chunk of the contrast divided by the spread (std) of the chunk's values over
  the other targets (provenance.evidence.specific, a z-score; no knob).

Evidence and combinations:

- ``evidence``: the project's evidence ranking for a text (provenance.evidence.answer: candidates from
  dense, BM25 and n-gram channels, ordered by label, then the calibrated paraphrase score). Documents it
  does not nominate share the positions after its list.
- ``combined``: provenance.evidence.combine.combine_rankings (tiers copied / related / unrelated; within a
  tier evidence score + c x span coverage + w x relative specific value; not nominated documents after, by
  specific value). Its evidence part (c and the copied tier's span floor) is fitted on *other queries*
  than the targets (``parallel_queries``: Matthew's text of a pericope, source Mark's parallel chapter, and
  the reverse; ``fit_evidence_order``, value weight 0); w is then *cross-fitted*: the targets are split
  into two folds (alternating within each kind), w is fitted on one fold (highest recall@1 over all kinds,
  then lowest mean rank, ties to the smaller w) and the other fold is ranked with it. These are held-out
  figures.
- ``combined_default``: the same with the API's defaults (CombineSettings()), whose value weight was
  fitted on all the hard benchmark's targets: in-sample, shown because it is what `provenance query
  --order combined` uses.
- ``combined_rrf``: reciprocal-rank fusion of raw value and evidence, 1/(60 + r_value) + 1/(60 + r_evidence)
  (the first design; it dilutes the evidence). Ties by value.
- ``label_then_value``: evidence label first, raw value second.

Text-only baselines:

- ``bm25``: bm25s over the index's passages (the same tokenization as the evidence query), a document's
  score = its best passage's.
- ``dense``: MiniLM cosine, a document's score = best (output window, passage) pair.
- ``fusion``: reciprocal-rank fusion of bm25 and dense, the same k = 60.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from provenance.evidence.combine import CombineSettings, combine_rankings
from provenance.evidence.schema import Evidence
from provenance.evidence.specific import MIN_REFERENCE_TARGETS, ChunkValues, specific_chunk_values

RRF_K = 60
RANKINGS = (
    "value", "value_best_chunk", "value_contrast", "value_specific", "evidence", "combined", "combined_default",
    "combined_rrf", "label_then_value", "bm25", "dense", "fusion",
)
FITTED = ("combined", "combined_default")  # ranked after all targets are seen (the weight is fitted)
WEIGHT_GRID = (0.0, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0)  # candidate value weights of `combined`
N_FOLDS = 2
TEXT_ONLY = ("bm25", "fusion")  # the baselines the issue names (dense is shown for reference)


@dataclass(frozen=True)
class CombineInputs:
    """What the combined ranking of one target needs (kept so the weight can be fitted across targets)."""

    evidence: dict[str, Evidence]  # nominated doc id -> evidence
    specific: dict[str, float]  # doc id -> specific value
    positions: list[int]  # the sources' positions in the index


@dataclass(frozen=True)
class TargetRanks:
    target_id: str
    kind: str
    ranks: dict[str, float]  # ranking name -> rank of the best-placed source
    top_doc: dict[str, str]  # ranking name -> doc id at rank 1
    source_label: str  # evidence label of the best-placed source by evidence ("-" if not nominated)
    combine_inputs: CombineInputs | None = None


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

    def __init__(self, index, values: pd.DataFrame, best_chunk: pd.Series, chunk_values: ChunkValues,
                 min_reference: int = MIN_REFERENCE_TARGETS) -> None:
        self.index = index
        self.n_docs = len(index.doc_ids)
        self.values = values  # values.parquet (all targets)
        self.best_chunk = best_chunk  # (target_id, doc_id) -> best chunk value
        self.chunk_values = chunk_values
        self.min_reference = min_reference  # reference targets the specific value needs (lowered only in --quick)
        self.chunk_doc = np.array([index.doc_index[d] for d in chunk_values.chunk_docs], dtype=np.int64)

    def _best_of_chunks(self, chunk_scores: np.ndarray) -> np.ndarray:
        doc_scores = np.full(self.n_docs, -np.inf)  # a document without chunk values ranks last
        np.maximum.at(doc_scores, self.chunk_doc, chunk_scores)
        return doc_scores

    def contrast_scores(self, target_id: str) -> np.ndarray:
        """Best chunk of (value for this target - mean value for the other targets)."""
        m = self.chunk_values.matrix
        col = self.chunk_values.column(target_id)
        others = (m.sum(axis=1) - m[:, col]) / (m.shape[1] - 1)
        return self._best_of_chunks(m[:, col] - others)

    def specific_scores(self, target_id: str) -> np.ndarray:
        z = specific_chunk_values(self.chunk_values, target_id, min_reference=self.min_reference)
        return self._best_of_chunks(z)

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
        from provenance.evidence.answer import candidate_evidence

        return self.evidence_scores(candidate_evidence(self.index, prepared))

    def evidence_scores(self, found: dict[str, Evidence]) -> tuple[np.ndarray, np.ndarray, dict[int, str]]:
        """(scores, tier, labels) of the evidence ranking (the order of provenance.evidence.answer): score =
        -(position in the evidence list), outside = -inf; tier = the label's order (0 verbatim .. 3
        unrelated, 4 not nominated)."""
        from provenance.evidence.answer import _rank_key
        from provenance.evidence.labels import LABEL_ORDER

        ordered = sorted(found.items(), key=lambda pair: _rank_key(pair[1]))
        scores = np.full(self.n_docs, -np.inf)
        tier = np.full(self.n_docs, float(len(LABEL_ORDER)))
        labels: dict[int, str] = {}
        for position, (doc_id, e) in enumerate(ordered, start=1):
            d = self.index.doc_index[doc_id]
            scores[d] = -float(position)
            tier[d] = float(LABEL_ORDER[e.label])
            labels[d] = e.label
        return scores, tier, labels

    def bm25_scores(self, text: str) -> np.ndarray:
        from provenance.evidence.answer import document_bm25_scores

        return document_bm25_scores(self.index, text)

    def dense_scores(self, prepared) -> np.ndarray:
        sims = np.asarray(self.index.embeddings, dtype=np.float32) @ np.asarray(prepared.vectors, dtype=np.float32).T
        best = sims.max(axis=1).astype(np.float64)
        doc_scores = np.full(self.n_docs, -np.inf)
        np.maximum.at(doc_scores, self.index.passage_doc, best)
        return doc_scores

    def rank_target(self, target_id: str, kind: str, text: str, sources: list[str]) -> TargetRanks:
        from provenance.evidence.answer import candidate_evidence
        from provenance.evidence.assess import prepare_output

        prepared = prepare_output(text, self.index.encoder, self.index.params)
        value = self.value_scores(target_id)
        found = candidate_evidence(self.index, prepared)
        evidence, tier, labels = self.evidence_scores(found)
        specific = self.specific_scores(target_id)
        bm25 = self.bm25_scores(text)
        dense = self.dense_scores(prepared)
        value_rank = ranks_from_scores(value)
        evidence_rank = np.where(np.isfinite(evidence), -evidence, np.inf)
        # ties of the fusion score fall back to value (a tiny term below any RRF difference)
        combined_rrf = rrf(value_rank, evidence_rank) - value_rank * 1e-12
        label_then_value = -tier * 1e6 - value_rank  # label first, then value rank
        fusion = rrf(ranks_from_scores(bm25), ranks_from_scores(dense))
        scores = {
            "value": value, "value_best_chunk": self.best_chunk_scores(target_id),
            "value_contrast": self.contrast_scores(target_id), "value_specific": specific, "evidence": evidence,
            "combined_rrf": combined_rrf, "label_then_value": label_then_value, "bm25": bm25, "dense": dense,
            "fusion": fusion,
        }
        ranks: dict[str, float] = {}
        top: dict[str, str] = {}
        positions = [self.index.doc_index[s] for s in sources if s in self.index.doc_index]
        inputs = CombineInputs(
            found,
            {d: float(specific[i]) for i, d in enumerate(self.index.doc_ids) if np.isfinite(specific[i])},
            positions,
        )
        for name in (n for n in RANKINGS if n not in FITTED):
            s = scores[name]
            top[name] = self.index.doc_ids[int(np.argmax(s))]
            if positions:
                ranks[name] = rank_of(s, positions)
        source_label = "-"
        if positions:
            nominated = [p for p in positions if p in labels]
            if nominated:
                source_label = labels[min(nominated, key=lambda p: -evidence[p])]
        return TargetRanks(target_id, kind, ranks, top, source_label, inputs)


def combined_rank(inputs: CombineInputs, doc_index: dict[str, int], settings: CombineSettings) -> tuple[float, str]:
    """(rank of the best-placed source, top doc) in the combined ranking with these settings. Documents the
    ranking does not list (neither nominated nor valued) share the positions after it."""
    order = combine_rankings(inputs.evidence, inputs.specific, settings)
    scores = np.full(len(doc_index), -np.inf)
    for position, entry in enumerate(order):
        scores[doc_index[entry.doc_id]] = -float(position)
    return rank_of(scores, inputs.positions), order[0].doc_id


def folds_of(results: list[TargetRanks], n_folds: int = N_FOLDS) -> list[int]:
    """Fold of each target: alternating within each kind, in target order (so every fold has every kind)."""
    seen: dict[str, int] = {}
    out = []
    for r in results:
        out.append(seen.get(r.kind, 0) % n_folds)
        seen[r.kind] = seen.get(r.kind, 0) + 1
    return out


def fit_weight(ranks_by_weight: dict) -> float | tuple:
    """The setting with the highest recall@1, then the lowest mean rank; ties go to the smaller setting (a
    weight, or a tuple of parameters compared in order)."""
    return min(ranks_by_weight, key=lambda w: (-np.mean(ranks_by_weight[w] <= 1), np.mean(ranks_by_weight[w]), w))


def add_combined(
    results: list[TargetRanks], doc_index: dict[str, int], weights: tuple[float, ...] = WEIGHT_GRID,
    default_weight: float = CombineSettings().value_weight, base: CombineSettings = CombineSettings(),
) -> tuple[list[TargetRanks], dict]:
    """Fill in ``combined`` (value weight cross-fitted: fitted on the other fold; the other settings from
    ``base``, fitted elsewhere) and ``combined_default`` (the API defaults); returns the updated results and
    what was fitted."""
    scored = [i for i, r in enumerate(results) if r.combine_inputs is not None and r.combine_inputs.positions]

    def ranked(settings: CombineSettings) -> dict[int, tuple[float, str]]:
        return {i: combined_rank(results[i].combine_inputs, doc_index, settings) for i in scored}

    grid = {w: ranked(replace(base, value_weight=w)) for w in weights}
    default = ranked(replace(CombineSettings(), value_weight=default_weight))
    folds = folds_of(results)
    fitted: dict[int, float] = {}
    held_out: dict[int, tuple[float, str]] = {}
    for f in sorted({folds[i] for i in scored}):
        train = [i for i in scored if folds[i] != f]
        fitted[f] = fit_weight({w: np.array([grid[w][i][0] for i in train]) for w in weights})
        for i in scored:
            if folds[i] == f:
                held_out[i] = grid[fitted[f]][i]
    all_targets = fit_weight({w: np.array([grid[w][i][0] for i in scored]) for w in weights})
    out = []
    for i, r in enumerate(results):
        if i not in held_out:
            out.append(r)
            continue
        ranks = {**r.ranks, "combined": held_out[i][0], "combined_default": default[i][0]}
        top = {**r.top_doc, "combined": held_out[i][1], "combined_default": default[i][1]}
        out.append(replace(r, ranks=ranks, top_doc=top))
    info = {"weight_grid": list(weights), "fold_weights": {str(f): w for f, w in fitted.items()},
            "weight_fitted_on_all_targets": all_targets, "default_weight": default_weight,
            "coverage_weight": base.coverage_weight, "copied_min_span_words": base.copied_min_span_words,
            "text_weight": base.text_weight,
            "default_coverage_weight": CombineSettings().coverage_weight,
            "default_copied_min_span_words": CombineSettings().copied_min_span_words,
            "default_text_weight": CombineSettings().text_weight}
    return out, info


# -- the evidence-order parameters, fitted on other targets than the benchmark's -------------------------
COVERAGE_GRID = (0.0, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0)  # candidate coverage weights of the combined order
SPAN_GRID = (9, 10, 12, 15, 20, 10**6)  # candidate copied_min_span_words (9 = the verbatim label's rule; 10**6 = off)
TEXT_GRID = (0.0, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0)  # candidate BM25 weights of the combined order
PARALLEL_MAX_CHARS = 330  # the query text: the first verses of the pericope, as the topic targets are cut


def parallel_queries(index) -> list[tuple[str, CombineInputs]]:
    """Same-event queries that are not benchmark targets: the WEB text of each hand-listed pericope as told
    by Matthew, whose source is Mark's parallel chapter, and the other way round. The teller's own chapter
    is removed from the candidates (it contains the text). Only pairs whose chapters are both in the index.
    Evidence only: these texts have no values, so they fit the evidence part of the order (value weight 0)."""
    import json

    from recovery_targets import PAIRS_DIR, _parse_range, _window, doc_id_for, load_demo_corpus

    from provenance.evidence.answer import candidate_evidence
    from provenance.evidence.assess import prepare_output

    docs = {d.doc_id: d for d in load_demo_corpus("full").documents}
    hands = json.loads((PAIRS_DIR / "hand_lists.json").read_text(encoding="utf-8"))
    out = []
    for name, books in sorted(hands["gospel_parallels"].items()):
        if "Matthew" not in books or "Mark" not in books:
            continue
        for teller, other in (("Matthew", "Mark"), ("Mark", "Matthew")):
            chapter, first, last = _parse_range(books[teller])
            own = doc_id_for(teller, chapter)
            source = doc_id_for(other, _parse_range(books[other])[0])
            if own not in index.doc_index or source not in index.doc_index:
                continue
            doc = docs[own]
            verses = [(int(v), doc.text[a:b]) for v, a, b in doc.metadata["verses"] if first <= int(v) <= last]
            window = _window(verses, 0, PARALLEL_MAX_CHARS)
            if window is None:
                continue
            found = candidate_evidence(index, prepare_output(window[2], index.encoder, index.params))
            found.pop(own, None)
            out.append((f"{teller}: {name}", CombineInputs(found, {}, [index.doc_index[source]])))
    return out


def fit_evidence_order(
    queries: list[tuple[str, CombineInputs]], doc_index: dict[str, int],
    coverage_grid: tuple[float, ...] = COVERAGE_GRID, span_grid: tuple[int, ...] = SPAN_GRID,
    text_grid: tuple[float, ...] = TEXT_GRID,
) -> dict:
    """Fit (copied_min_span_words, coverage_weight, text_weight) of the combined order on ``queries`` (value
    weight 0), by the same criterion as the value weight; returns the grid's figures and the chosen setting."""
    table = {
        (span, c, t): np.array([combined_rank(q, doc_index, CombineSettings(
            value_weight=0.0, coverage_weight=c, copied_min_span_words=span, text_weight=t))[0] for _, q in queries])
        for span in span_grid for c in coverage_grid for t in text_grid
    }
    span, coverage, text = fit_weight(table)
    return {
        "n_queries": len(queries),
        "copied_min_span_words": int(span), "coverage_weight": float(coverage), "text_weight": float(text),
        "grid": [{"copied_min_span_words": int(s), "coverage_weight": float(c), "text_weight": float(t),
                  "recall_at_1": round(float(np.mean(r <= 1)), 4), "mean_rank": round(float(np.mean(r)), 2)}
                 for (s, c, t), r in table.items()],
    }


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
