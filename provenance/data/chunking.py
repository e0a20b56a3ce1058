"""Cut tokenized documents into chunks: the players of In-Run Data Shapley.

A document becomes ``[<|endoftext|>] + tokens + [<|endoftext|>]``, split into windows of at most
``context_length`` tokens. A chunk never mixes two documents (short ones are padded by the batcher,
with attention and labels masked), so every value belongs to exactly one document. Token positions
(``start_token``, ``end_token``) count inside that sequence: the chunks of a document cover
``[0, n_tokens)`` exactly, in order, without overlap.

Tail rule: windows are cut greedily at ``context_length``. When that would leave a last piece of
fewer than ``MIN_TAIL_TOKENS`` tokens, it cannot join the previous (full) window without exceeding
``context_length``; instead the last full window and that piece are re-cut into two near-equal
windows (sizes ``ceil`` and ``floor`` of half their sum, both <= context_length). So no chunk is a
near-empty player (a 1-token chunk would carry no next-token loss at all), unless the whole
document is that short.
"""

from __future__ import annotations

from dataclasses import dataclass

from tokenizers import Tokenizer
from tqdm import tqdm

from provenance.data.corpus import Corpus
from provenance.data.tokenizer import eot_id
from provenance.errors import BatchError

MIN_TAIL_TOKENS = 8
_ENCODE_BATCH = 256


@dataclass(frozen=True)
class Chunk:
    """Tokens ``[start_token, end_token)`` of document ``doc_id`` (positions include the separators)."""

    chunk_id: int
    doc_id: str
    start_token: int
    end_token: int
    token_ids: list[int]

    @property
    def n_tokens(self) -> int:
        return self.end_token - self.start_token


def window_bounds(n_tokens: int, context_length: int) -> list[tuple[int, int]]:
    """The [start, end) windows of a sequence of ``n_tokens`` (see the tail rule above)."""
    if context_length < 2:
        raise BatchError(f"context_length must be >= 2 (got {context_length}): a chunk needs a token to predict")
    bounds = [(s, min(s + context_length, n_tokens)) for s in range(0, n_tokens, context_length)]
    if len(bounds) >= 2 and bounds[-1][1] - bounds[-1][0] < MIN_TAIL_TOKENS:
        start, end = bounds[-2][0], bounds[-1][1]
        middle = start + (end - start + 1) // 2
        bounds[-2:] = [(start, middle), (middle, end)]
    return bounds


def document_tokens(tokenizer: Tokenizer, texts: list[str]) -> list[list[int]]:
    """``[eot] + tokens + [eot]`` for each text (the user's tokenizer may use another eot id)."""
    eot = eot_id(tokenizer)
    encodings = tokenizer.encode_batch(texts, add_special_tokens=False)
    return [[eot, *enc.ids, eot] for enc in encodings]


def chunk_corpus(corpus: Corpus, tokenizer: Tokenizer, context_length: int, *, progress: bool = True) -> list[Chunk]:
    """All chunks, documents in corpus order and windows in text order; chunk_id = 0..n-1."""
    if context_length < 2:
        raise BatchError(f"context_length must be >= 2 (got {context_length}): a chunk needs a token to predict")
    chunks: list[Chunk] = []
    docs = corpus.documents
    with tqdm(total=len(docs), desc="chunking", unit="doc", disable=not progress) as bar:
        for first in range(0, len(docs), _ENCODE_BATCH):
            batch = docs[first : first + _ENCODE_BATCH]
            for doc, ids in zip(batch, document_tokens(tokenizer, [d.text for d in batch])):
                for start, end in window_bounds(len(ids), context_length):
                    chunks.append(Chunk(len(chunks), doc.doc_id, start, end, ids[start:end]))
            bar.update(len(batch))
    return chunks


def document_token_counts(chunks: list[Chunk]) -> dict[str, tuple[int, int]]:
    """doc_id -> (n_tokens including both separators, n_chunks), for corpus.parquet."""
    counts: dict[str, tuple[int, int]] = {}
    for chunk in chunks:
        tokens, n = counts.get(chunk.doc_id, (0, 0))
        counts[chunk.doc_id] = (tokens + chunk.n_tokens, n + 1)
    return counts
