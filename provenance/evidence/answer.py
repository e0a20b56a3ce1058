"""`provenance query`: which training documents produced this output, how much each, and why.

For an attributed target the rows are the documents ranked by value (In-Run Data Shapley, from
values.parquet) with the evidence of each; documents with negative values are listed apart as "worked
against this output". For any other text the rows are ranked by evidence (label first, then the calibrated
paraphrase score), found through three channels: dense search (FAISS over passage embeddings), BM25 over
passages (bm25s, vectorized scoring) and the n-gram index (verbatim candidates). The answer says that the
text is not attributed yet and gives the command that attributes it.

``order="combined"`` ranks an attributed target's documents by the combined ranking instead
(provenance.evidence.combine: largely copied documents first, then evidence score plus BM25 score (and
span coverage, weight 0 by default) plus a bounded share of the document's target-specific value,
provenance.evidence.specific); the value and share columns stay the raw values.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from provenance.errors import EvidenceIndexError, TargetError
from provenance.evidence.assess import DocumentView, PreparedOutput, align_many, align_sentences, assess, prepare_output
from provenance.evidence.combine import CombineSettings, combine_rankings
from provenance.evidence.encoder import Encoder, load_encoder
from provenance.evidence.index import EvidenceIndex, load_index
from provenance.evidence.labels import LABEL_ORDER, Thresholds, load_thresholds
from provenance.evidence.passages import PassageParams, split_passages
from provenance.evidence.schema import Evidence, LedgerSummary, QueryResult, RankedDocument
from provenance.evidence.specific import ChunkValues, load_chunk_values, specific_values
from provenance.evidence.text import has_text, strip_non_text, truncate, words
from provenance.store.tables import read_table

MAX_QUERY_CHARS = 20_000  # longer texts are truncated (noted in the result): an output, not a book
DENSE_PASSAGES = 200  # passages fetched from FAISS per output window
DENSE_DOCUMENTS = 60  # candidate documents kept per channel
BM25_PASSAGES = 100
BM25_DOCUMENTS = 40
NGRAM_DOCUMENTS = 40
MAX_CANDIDATES = 140  # documents whose evidence is computed for one query
ORDERS = ("value", "combined")


def query(
    run_dir: str | Path,
    *,
    text: str | None = None,
    target_id: str | None = None,
    top_k: int = 20,
    index: EvidenceIndex | None = None,
    align_top: int = 1,
    max_chars: int = MAX_QUERY_CHARS,
    order: str = "value",
    chunk_values: ChunkValues | None = None,
    combine: CombineSettings = CombineSettings(),
    approximate: bool = False,
    sketch_query: Any = None,
) -> QueryResult:
    """Rank the run's documents for one output (a text, or a registered target id).

    ``align_top``: rows (from the top) whose best passage gets sentence-by-sentence alignment (it runs
    the embedder on those sentences; the rest keep the passage-level pair).
    ``order``: for an attributed target, "value" (raw value, largest first) or "combined" (see
    provenance.evidence.combine); ``chunk_values`` (load_chunk_values(run), read once by callers that
    query many times) and ``combine`` serve the combined order. A text without values is ranked by
    evidence, or with ``approximate`` by values estimated in seconds from the gradient sketches the run
    stored while training (provenance.sketch; rows marked approximate, the replay command still given);
    ``sketch_query``: an open provenance.sketch.ApproximateQuery of this run, reused across queries.
    """
    if (text is None) == (target_id is None):
        raise TargetError("pass exactly one of text (--text) or target_id (--target-id)")
    if order not in ORDERS:
        raise TargetError(f"order must be one of {ORDERS} (got {order!r})")
    if top_k < 1:
        raise TargetError(f"top_k must be at least 1 (got {top_k})")
    index = index if index is not None else load_index(run_dir)
    started = time.perf_counter()
    run = index.run
    if Path(run_dir).resolve() != run.path.resolve():
        raise EvidenceIndexError(
            f"the index passed belongs to run {run.path}, not {run_dir}; load it with load_index({str(run_dir)!r})"
        )
    targets = _read_optional(run.targets_path, "targets")
    notes: list[str] = []

    if target_id is not None:
        match = targets[targets["target_id"] == target_id] if targets is not None else None
        if match is None or match.empty:
            known = [] if targets is None else sorted(targets["target_id"].tolist())
            raise TargetError(
                f"target id {target_id!r} is not registered in {run.path} "
                f"(registered: {known[:10]}{' ...' if len(known) > 10 else ''}); query its text with --text instead"
            )
        text = str(match["text"].iat[0])
    else:
        target_id = _registered_target(targets, text)

    clean = strip_non_text(text)
    if not has_text(clean):
        raise TargetError(
            "the query text is empty or holds no words (only whitespace, punctuation or control characters); "
            "pass the output text itself with --text"
        )
    clean = clean.strip()
    if clean != text.strip():
        notes.append("control or zero-width characters were removed from the text before matching")
    clean, cut = truncate(clean, max_chars)
    if cut:
        notes.append(
            f"the text was truncated to its first {len(clean)} characters (limit {max_chars}); spans, "
            "coverage and similarity refer to that part"
        )

    values = _target_values(run, target_id) if target_id is not None else None
    attributed = values is not None and not values.empty
    prepared = _prepare(clean, index)

    row_order = "evidence"
    if attributed and order == "combined":
        chunk_values = chunk_values if chunk_values is not None else load_chunk_values(run.path)
        specific = specific_values(chunk_values, target_id)
        rows, against = _combined_rows(index, prepared, values, specific, top_k, combine)
        notes.append(
            "rows in combined order: largely copied documents first, then evidence score + "
            f"{combine.text_weight} x relative BM25 + {combine.coverage_weight} x span coverage + "
            f"{combine.value_weight} x relative target-specific value; value and share are the raw values"
        )
        ledger = _ledger_summary(run, target_id)
        command = None
        row_order = "combined"
    elif attributed:
        rows, against = _attributed_rows(index, prepared, values, top_k)
        notes.extend(_outside_notes(index, prepared, rows, values))
        ledger = _ledger_summary(run, target_id)
        command = None
        row_order = "value"
    elif approximate:
        rows, against = _attributed_rows(index, prepared, _approximate_values(run, clean, sketch_query), top_k)
        ledger = None
        command = attribute_command(run.path, clean)
        row_order = "approximate"
        from provenance.sketch.query import APPROXIMATE_LABEL  # torch: only when asked for

        notes.append(APPROXIMATE_LABEL)
    else:
        rows = _evidence_rows(index, prepared, top_k)
        against = ()
        ledger = None
        command = attribute_command(run.path, clean)
        if target_id is not None:
            notes.append(f"target {target_id!r} is registered but has no values yet")
        if _has_sketches(run):
            notes.append("this run stored gradient sketches: add --approximate (approximate=True) for "
                         "approximate values in seconds")
    if attributed and approximate:
        notes.append("exact values exist for this text: shown instead of approximate ones")
    rows = _with_alignment(rows, clean, index.encoder, align_top)
    if index.thresholds.embedder_sha256 != index.encoder.sha256:
        notes.append(
            f"labels were calibrated with {index.thresholds.embedder}, this index uses {index.encoder.name}: "
            "similarity thresholds are not calibrated for it (recalibrate: python -m provenance.evidence.calibrate "
            "--embedder PATH)"
        )
    manifest = run.read_manifest()
    if manifest.get("status") != "complete":
        notes.append(f"run status is {manifest.get('status')!r}: values may be partial")
    return QueryResult(
        run_id=run.run_id,
        text=clean,
        target_id=target_id,
        attributed=attributed,
        rows=tuple(rows),
        worked_against=tuple(against),
        ledger=ledger,
        value_order=(manifest.get("values") or {}).get("order") if attributed else None,
        attribute_command=command,
        notes=tuple(notes),
        embedder=index.encoder.name,
        latency_seconds=round(time.perf_counter() - started, 4),
        order=row_order,
        approximate=row_order == "approximate",
    )


def _has_sketches(run) -> bool:
    return (run.path / "sketches" / "meta.json").is_file()


def _approximate_values(run, text: str, sketch_query: Any) -> pd.DataFrame:
    """Per-document approximate values of `text` (as an output with no prompt) from the run's sketches."""
    from provenance.sketch.query import ApproximateQuery
    from provenance.train.targets import TargetSpec

    sketch_query = sketch_query if sketch_query is not None else ApproximateQuery(run.path)
    if Path(sketch_query.run.path).resolve() != run.path.resolve():
        raise EvidenceIndexError(f"the sketch query passed belongs to run {sketch_query.run.path}, not {run.path}")
    frame = sketch_query.values([TargetSpec("query-output", "", text)])
    return frame[["doc_id", "value", "rank", "share"]]


def evidence_for(
    text: str,
    doc_text: str,
    *,
    encoder: Encoder | None = None,
    thresholds: Thresholds | None = None,
    index: EvidenceIndex | None = None,
    doc_id: str | None = None,
    align: bool = True,
) -> Evidence:
    """Evidence for one (output, document) pair, e.g. the app's side-by-side panel. With ``index`` and
    ``doc_id`` the stored passage embeddings are reused; otherwise the document is cut and embedded here."""
    encoder = encoder or (index.encoder if index is not None else load_encoder())
    thresholds = thresholds or (index.thresholds if index is not None else load_thresholds())
    clean = strip_non_text(text).strip()
    if not has_text(clean):
        raise TargetError("the output text is empty or holds no words; pass the output text itself")
    clean, _ = truncate(clean, MAX_QUERY_CHARS)
    params = index.params if index is not None else PassageParams(max_tokens=min(200, encoder.max_tokens))
    prepared = prepare_output(clean, encoder, params)
    if index is not None and doc_id is not None:
        if doc_id not in index.doc_index:
            raise TargetError(f"document {doc_id!r} is not in run {index.run_id}")
        view = index.document_view(index.doc_index[doc_id])
    else:
        ranges = split_passages(doc_text, encoder.count_tokens, encoder.token_offsets, params)
        vectors = encoder.encode([doc_text[a:b] for a, b in ranges])
        view = DocumentView(doc_text, words(doc_text), tuple(ranges), vectors)
    evidence = assess(prepared, view, thresholds)
    if align and evidence.best_passage is not None:
        evidence = replace(evidence, aligned_sentences=align_sentences(clean, evidence.best_passage, encoder))
    return evidence


def attribute_command(run_path: Path, text: str) -> str:
    """The command that attributes a new output (a replay of the run with it as a target)."""
    line = json.dumps({"id": "query-1", "prompt": "", "text": text}, ensure_ascii=False)
    return (
        f"provenance attribute --run {run_path} --targets target.jsonl   "
        f"(target.jsonl holds one line: {line}; put the prompt that produced the output in \"prompt\")"
    )


# -- internals -------------------------------------------------------------------------------------------
def _read_optional(path: Path, name: str) -> pd.DataFrame | None:
    return read_table(path, name) if path.is_file() else None


def _registered_target(targets: pd.DataFrame | None, text: str) -> str | None:
    if targets is None or targets.empty:
        return None
    stripped = text.strip()
    hit = targets[targets["text"].str.strip() == stripped]
    return None if hit.empty else str(hit["target_id"].iat[0])


def _read_for_target(path: Path, name: str, target_id: str) -> pd.DataFrame | None:
    """The rows of one target only (values and ledger hold every target: read with a filter)."""
    if not path.is_file():
        return None
    return read_table(path, name, filters=[("target_id", "=", target_id)])


def _target_values(run, target_id: str) -> pd.DataFrame | None:
    return _read_for_target(run.values_path, "values", target_id)


def _prepare(text: str, index: EvidenceIndex) -> PreparedOutput:
    return prepare_output(text, index.encoder, index.params)


def _rank_key(evidence: Evidence) -> tuple:
    return (LABEL_ORDER[evidence.label], -evidence.score, -evidence.similarity, -evidence.longest_span_tokens)


def _candidates(index: EvidenceIndex, prepared: PreparedOutput) -> list[int]:
    """Documents from the three channels, each ranked by its own score: dense (best passage cosine over
    all output windows), BM25 (best passage score) and shared n-grams (how many of the output's)."""
    found: dict[int, None] = {}
    k = min(DENSE_PASSAGES, index.n_passages)
    sims, ids = index.faiss.search(np.ascontiguousarray(prepared.vectors, dtype=np.float32), k)
    best: dict[int, float] = {}
    for passage, sim in zip(ids.reshape(-1).tolist(), sims.reshape(-1).tolist()):
        if passage >= 0:
            doc = int(index.passage_doc[passage])
            best[doc] = max(sim, best.get(doc, -1.0))
    for doc, _ in sorted(best.items(), key=lambda kv: -kv[1])[:DENSE_DOCUMENTS]:
        found.setdefault(doc)
    for doc in _bm25_documents(index, prepared.text)[:BM25_DOCUMENTS]:
        found.setdefault(doc)
    grams = index.ngrams.candidates(prepared.words)
    for doc, _ in sorted(grams.items(), key=lambda kv: -kv[1])[:NGRAM_DOCUMENTS]:
        found.setdefault(doc)
    return list(found)


def _bm25_query_tokens(index: EvidenceIndex, text: str) -> list[str]:
    """The text's BM25 tokens (the index's tokenization, English stop words) that the index knows."""
    import bm25s

    tokens = bm25s.tokenize([text], stopwords="en", show_progress=False, return_ids=False)[0]
    vocab = index.bm25.vocab_dict
    return [t for t in tokens if t in vocab]


def _bm25_documents(index: EvidenceIndex, text: str) -> list[int]:
    tokens = _bm25_query_tokens(index, text)
    if not tokens:
        return []
    k = min(BM25_PASSAGES, index.n_passages)
    ids, scores = index.bm25.retrieve([tokens], k=k, show_progress=False, n_threads=1)
    docs: dict[int, None] = {}
    for p, score in zip(ids[0].tolist(), scores[0].tolist()):
        if score > 0:
            docs.setdefault(int(index.passage_doc[p]))
    return list(docs)


def document_bm25_scores(index: EvidenceIndex, text: str) -> np.ndarray:
    """Every document's BM25 score for ``text``: its best passage's (bm25s scores all passages in one
    vectorized pass; the same tokenization as the BM25 channel). Zeros when no word of the text is indexed."""
    tokens = _bm25_query_tokens(index, text)
    doc_scores = np.zeros(len(index.doc_ids))
    if tokens:
        passage_scores = np.asarray(index.bm25.get_scores(tokens), dtype=np.float64)
        np.maximum.at(doc_scores, index.passage_doc, passage_scores)
    return doc_scores


def candidate_evidence(index: EvidenceIndex, prepared: PreparedOutput) -> dict[str, Evidence]:
    """The evidence of every document the three channels nominate for one output (doc id -> Evidence,
    at most MAX_CANDIDATES documents): the input of the evidence and combined rankings. Each carries the
    document's BM25 score (the combined order's text term)."""
    bm25 = document_bm25_scores(index, prepared.text)
    return {
        index.doc_ids[d]: replace(assess(prepared, index.document_view(d), index.thresholds), bm25=float(bm25[d]))
        for d in _candidates(index, prepared)[:MAX_CANDIDATES]
    }


def _evidence_rows(index: EvidenceIndex, prepared: PreparedOutput, top_k: int) -> list[RankedDocument]:
    scored = sorted(candidate_evidence(index, prepared).items(), key=lambda pair: _rank_key(pair[1]))
    return [
        RankedDocument(rank=i + 1, doc_id=doc_id, source=index.sources[index.doc_index[doc_id]], value=None,
                       value_share=None, cumulative_share=None, evidence=e)
        for i, (doc_id, e) in enumerate(scored[:top_k])
    ]


def _attributed_rows(
    index: EvidenceIndex, prepared: PreparedOutput, values: pd.DataFrame, top_k: int
) -> tuple[list[RankedDocument], list[RankedDocument]]:
    values = values[values["doc_id"].isin(index.doc_index)]
    positive = values[values["value"] > 0].sort_values(["rank", "doc_id"]).head(top_k)
    negative = values[values["value"] < 0].sort_values(["value", "doc_id"]).head(top_k)
    rows, cumulative = [], 0.0
    for row in positive.itertuples(index=False):
        doc = index.doc_index[row.doc_id]
        cumulative += float(row.share)
        rows.append(
            RankedDocument(int(row.rank), row.doc_id, index.sources[doc], float(row.value), float(row.share),
                           cumulative, assess(prepared, index.document_view(doc), index.thresholds))
        )
    against = [
        RankedDocument(int(row.rank), row.doc_id, index.sources[index.doc_index[row.doc_id]], float(row.value),
                       0.0, None, assess(prepared, index.document_view(index.doc_index[row.doc_id]), index.thresholds))
        for row in negative.itertuples(index=False)
    ]
    return rows, against


def _combined_rows(
    index: EvidenceIndex,
    prepared: PreparedOutput,
    values: pd.DataFrame,
    specific: pd.Series,
    top_k: int,
    settings: CombineSettings,
) -> tuple[list[RankedDocument], list[RankedDocument]]:
    """Rows in combined order (evidence of the nominated candidates + specific values of all documents).
    ``against`` lists the negative raw values as in the value order, so a document with a negative value
    but strong evidence can appear in both lists."""
    evidence = candidate_evidence(index, prepared)
    known = specific[specific.index.isin(index.doc_index)]
    ranked = combine_rankings(evidence, dict(zip(known.index, known.to_numpy(float))), settings)[:top_k]
    values = values[values["doc_id"].isin(index.doc_index)]
    value_of = dict(zip(values["doc_id"], values["value"]))
    share_of = dict(zip(values["doc_id"], values["share"]))
    rows, cumulative = [], 0.0
    for position, entry in enumerate(ranked, start=1):
        doc = index.doc_index[entry.doc_id]
        share = share_of.get(entry.doc_id)
        cumulative += float(share or 0.0)
        e = evidence.get(entry.doc_id) or assess(prepared, index.document_view(doc), index.thresholds)
        value = value_of.get(entry.doc_id)
        rows.append(
            RankedDocument(position, entry.doc_id, index.sources[doc], None if value is None else float(value),
                           None if share is None else float(share), cumulative, e, entry.specific_value)
        )
    _, against = _attributed_rows(index, prepared, values[values["value"] < 0], top_k)  # as in the value order
    return rows, against


def _outside_notes(
    index: EvidenceIndex, prepared: PreparedOutput, rows: list[RankedDocument], values: pd.DataFrame
) -> list[str]:
    """Documents with verbatim or paraphrase evidence that the value ranking leaves out of the table."""
    shown = {r.doc_id for r in rows}
    ranks = dict(zip(values["doc_id"], values["rank"]))
    notes = []
    for doc in _candidates(index, prepared)[:MAX_CANDIDATES]:
        doc_id = index.doc_ids[doc]
        if doc_id in shown:
            continue
        evidence = assess(prepared, index.document_view(doc), index.thresholds)
        if evidence.label in ("verbatim", "paraphrase"):
            notes.append(
                f"{doc_id} ({evidence.label}, similarity {evidence.similarity:.2f}, longest span "
                f"{evidence.longest_span_tokens} words) is outside the table: value rank {ranks.get(doc_id, 'n/a')}"
            )
    return notes[:5]


def _with_alignment(rows: list[RankedDocument], text: str, encoder: Encoder, align_top: int) -> list[RankedDocument]:
    chosen = [i for i, row in enumerate(rows[:align_top]) if row.evidence.best_passage is not None]
    if not chosen:
        return rows
    aligned = align_many(text, [rows[i].evidence.best_passage for i in chosen], encoder)
    out = list(rows)
    for i, pairs in zip(chosen, aligned):
        out[i] = replace(out[i], evidence=replace(out[i].evidence, aligned_sentences=pairs))
    return out


def ledger_summary(run, target_id: str) -> LedgerSummary | None:
    """Public: the ledger summary of one target (``run``: a provenance.store RunDirectory)."""
    return _ledger_summary(run, target_id)


def _ledger_summary(run, target_id: str) -> LedgerSummary | None:
    """Loss of the target at the first and last recorded step, and what the values explain of its fall.

    The ledger records each step's target loss *before* the step, so the decrease from the first to the
    last row is set against the attributed sums and history terms of the steps in between (first..last-1).
    """
    ledger = _read_for_target(run.ledger_path, "ledger", target_id)
    if ledger is None:
        return None
    rows = ledger.sort_values("step")
    if len(rows) < 2:
        return None
    initial, final = float(rows["target_loss"].iat[0]), float(rows["target_loss"].iat[-1])
    between = rows.iloc[:-1]
    attributed = float(between["attributed_sum"].sum())
    history = float(between["history_term"].sum())
    decrease = initial - final
    return LedgerSummary(
        initial_loss=initial,
        final_loss=final,
        measured_decrease=decrease,
        attributed_total=attributed,
        history_total=history,
        explained_share=attributed / decrease if decrease > 0 else None,
    )
