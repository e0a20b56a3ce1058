"""Evidence for one (output, document) pair: the single code path the query, the app's side-by-side panel
and the calibration share, so the labels measured on the calibration data are the labels users see."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from provenance.evidence.encoder import Encoder
from provenance.evidence.labels import Thresholds, content_words, pair_features
from provenance.evidence.passages import PassageParams, split_passages
from provenance.evidence.schema import Evidence, PassagePair, VerbatimSpan
from provenance.evidence.text import Words, sentences, words

MAX_SPANS_SHOWN = 5


@dataclass(frozen=True)
class PreparedOutput:
    """An output text cut into embedder-sized windows, embedded once, reused against every document."""

    text: str
    words: Words
    content: np.ndarray
    windows: tuple[tuple[int, int], ...]
    vectors: np.ndarray  # (n_windows, dim), unit length


def prepare_output(text: str, encoder: Encoder, params: PassageParams = PassageParams()) -> PreparedOutput:
    windows = split_passages(text, encoder.count_tokens, encoder.token_offsets, params) or [(0, len(text))]
    vectors = encoder.encode([text[a:b] for a, b in windows])
    return prepared_from_vectors(text, windows, vectors)


def prepared_from_vectors(text: str, windows: list[tuple[int, int]], vectors: np.ndarray) -> PreparedOutput:
    found = words(text)
    return PreparedOutput(text, found, content_words(found), tuple(windows), vectors)


@dataclass(frozen=True)
class DocumentView:
    """A document as the evidence needs it: text, words, passage ranges and their vectors."""

    text: str
    words: Words
    passages: tuple[tuple[int, int], ...]
    vectors: np.ndarray  # (n_passages, dim)


def assess(output: PreparedOutput, document: DocumentView, thresholds: Thresholds) -> Evidence:
    """Label and scores of one pair (no aligned sentences: those need the encoder, see align_sentences)."""
    best_passage = None
    passage_words = document.words
    similarity = 0.0
    if document.passages and document.vectors.shape[0]:
        sims = output.vectors @ document.vectors.T
        window, passage = np.unravel_index(int(np.argmax(sims)), sims.shape)
        similarity = float(sims[window, passage])
        start, end = document.passages[passage]
        out_start, out_end = output.windows[window]
        passage_words = _slice_words(document.words, start, end)
        best_passage = PassagePair(
            output_text=output.text[out_start:out_end],
            document_text=document.text[start:end],
            document_start_char=int(start),
            document_end_char=int(end),
            similarity=similarity,
        )
    features, match = pair_features(
        output.words, document.words, similarity, thresholds.min_span_words, passage_words
    )
    label, score = thresholds.label(features)
    shown = []
    for span in match.spans[:MAX_SPANS_SHOWN]:
        o_start, o_end = output.words.char_range(span.out_start, span.out_start + span.length)
        d_start, d_end = document.words.char_range(span.doc_start, span.doc_start + span.length)
        shown.append(VerbatimSpan(output.text[o_start:o_end], span.length, o_start, o_end, d_start, d_end))
    return Evidence(
        label=label,
        similarity=similarity,
        longest_span_tokens=features.longest,
        span_coverage=features.coverage,
        best_passage=best_passage,
        spans=tuple(shown),
        score=score,
        overlap=features.overlap,
        n_output_words=features.n_output_words,
    )


def _slice_words(found: Words, start: int, end: int) -> Words:
    part = found.in_chars(start, end)
    return Words(found.hashes[part], found.starts[part], found.ends[part])


def align_sentences(
    output_text: str, passage: PassagePair, encoder: Encoder, max_pairs: int = 8
) -> tuple[PassagePair, ...]:
    """For each output sentence, the most similar sentence of the best passage (in output order)."""
    return align_many(output_text, [passage], encoder, max_pairs)[0]


def align_many(
    output_text: str, passages: list[PassagePair], encoder: Encoder, max_pairs: int = 8
) -> list[tuple[PassagePair, ...]]:
    """align_sentences for several passages with one embedder call (the query's latency budget)."""
    out_sents = sentences(output_text)[:max_pairs]
    doc_sents = [sentences(p.document_text) for p in passages]
    if not out_sents:
        return [() for _ in passages]
    texts = [output_text[a:b] for a, b in out_sents]
    for passage, sents in zip(passages, doc_sents):
        texts.extend(passage.document_text[a:b] for a, b in sents)
    vectors = encoder.encode(texts)
    out_vec, cursor = vectors[: len(out_sents)], len(out_sents)
    aligned = []
    for passage, sents in zip(passages, doc_sents):
        if not sents:
            aligned.append(())
            continue
        sims = out_vec @ vectors[cursor : cursor + len(sents)].T
        cursor += len(sents)
        pairs = []
        for i, (a, b) in enumerate(out_sents):
            j = int(np.argmax(sims[i]))
            c, d = sents[j]
            pairs.append(
                PassagePair(
                    output_text=output_text[a:b],
                    document_text=passage.document_text[c:d],
                    document_start_char=passage.document_start_char + c,
                    document_end_char=passage.document_start_char + d,
                    similarity=float(sims[i, j]),
                )
            )
        aligned.append(tuple(pairs))
    return aligned
