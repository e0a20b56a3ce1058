"""Corpus ingestion and hashing, tokenizer, chunking (documents -> players) and batch tensors."""

from provenance.data.batching import IGNORE_INDEX, encode_target, encode_targets, make_lm_batch
from provenance.data.chunking import MIN_TAIL_TOKENS, Chunk, chunk_corpus, document_token_counts, window_bounds
from provenance.data.corpus import Corpus, CorpusReport, Document
from provenance.data.demo import load_demo_corpus, load_demo_targets
from provenance.data.ingest import load_corpus
from provenance.data.tokenizer import EOT_ID, EOT_TOKEN, eot_id, load_tokenizer, save_tokenizer, train_tokenizer

__all__ = [
    "EOT_ID",
    "EOT_TOKEN",
    "IGNORE_INDEX",
    "MIN_TAIL_TOKENS",
    "Chunk",
    "Corpus",
    "CorpusReport",
    "Document",
    "chunk_corpus",
    "document_token_counts",
    "encode_target",
    "encode_targets",
    "eot_id",
    "load_corpus",
    "load_demo_corpus",
    "load_demo_targets",
    "load_tokenizer",
    "make_lm_batch",
    "save_tokenizer",
    "train_tokenizer",
    "window_bounds",
]
