"""Everything a run needs before its first step: corpus, tokenizer, chunks (players), encoded targets.

``prepare_fresh`` validates the user's inputs (nothing is written yet); ``prepare_from_run`` rebuilds
the same setup from a run directory alone (corpus.parquet, tokenizer.json, targets.parquet) and checks
that the chunks it derives are the recorded ones, so resume, replay and verify train on exactly the
recorded players.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from tokenizers import Tokenizer

from provenance.config import ConfigError, RunConfig
from provenance.data import (
    Chunk,
    Corpus,
    CorpusReport,
    Document,
    chunk_corpus,
    document_token_counts,
    encode_targets,
    eot_id,
    load_corpus,
    load_tokenizer,
    make_lm_batch,
    save_tokenizer,
    train_tokenizer,
)
from provenance.engine import LMBatch
from provenance.errors import CorpusError, RunDirectoryError, RunMismatchError
from provenance.store.run_dir import RunDirectory
from provenance.store.tables import read_table
from provenance.train.targets import TargetSpec, check_targets, targets_from_frame

MIN_DOCUMENTS = 2


@dataclass
class Prepared:
    config: RunConfig
    corpus: Corpus
    tokenizer: Tokenizer
    tokenizer_source: str
    chunks: list[Chunk]
    targets: list[TargetSpec]
    target_batch: LMBatch | None
    extra_targets: list[TargetSpec] = field(default_factory=list)
    extra_target_batch: LMBatch | None = None

    @property
    def eos_id(self) -> int:
        return eot_id(self.tokenizer)

    @property
    def pad_id(self) -> int:
        return eot_id(self.tokenizer)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    @property
    def target_ids(self) -> list[str]:
        return [t.target_id for t in self.targets]

    @property
    def chunk_doc_ids(self) -> list[str]:
        return [c.doc_id for c in self.chunks]

    @property
    def corpus_sha256(self) -> str:
        return self.corpus.sha256

    @property
    def corpus_report(self) -> dict[str, Any]:
        return self.corpus.report.to_dict()

    @property
    def documents(self) -> pd.DataFrame:
        """corpus.parquet rows: the kept documents with their token and chunk counts."""
        counts = document_token_counts(self.chunks)
        docs = self.corpus.documents
        return pd.DataFrame(
            {
                "doc_id": [d.doc_id for d in docs],
                "source": [d.source for d in docs],
                "sha256": [d.sha256 for d in docs],
                "n_tokens": [counts.get(d.doc_id, (0, 0))[0] for d in docs],
                "n_chunks": [counts.get(d.doc_id, (0, 0))[1] for d in docs],
                "metadata": [json.dumps(d.metadata, sort_keys=True, ensure_ascii=False) for d in docs],
                "text": [d.text for d in docs],
            }
        )

    def chunks_frame(self) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "chunk_id": [c.chunk_id for c in self.chunks],
                "doc_id": [c.doc_id for c in self.chunks],
                "start_token": [c.start_token for c in self.chunks],
                "end_token": [c.end_token for c in self.chunks],
                "n_tokens": [c.n_tokens for c in self.chunks],
            }
        )

    def micro_batches(self, chunk_ids: list[int]) -> list[LMBatch]:
        """The step's chunks cut into micro-batches, each padded to its longest chunk."""
        size = self.config.train.micro_batch_size
        out = []
        for start in range(0, len(chunk_ids), size):
            picked = [self.chunks[c] for c in chunk_ids[start : start + size]]
            ids, mask, labels = make_lm_batch(
                picked, self.config.model.context_length, self.pad_id, pad_to_longest=True
            )
            out.append(LMBatch(ids, mask, labels))
        return out

    def save_tokenizer(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_tokenizer(self.tokenizer, path)


def encode_target_batch(tokenizer: Tokenizer, targets: list[TargetSpec], context_length: int) -> LMBatch | None:
    if not targets:
        return None
    rows = [{"id": t.target_id, "prompt": t.prompt, "text": t.text} for t in targets]
    ids, mask, labels = encode_targets(tokenizer, rows, context_length)
    return LMBatch(ids, mask, labels)


def _check_corpus_size(corpus: Corpus) -> None:
    if len(corpus) < MIN_DOCUMENTS:
        report = corpus.report
        dup = f" ({len(report.duplicates)} duplicates of it were left out)" if report.duplicates else ""
        raise CorpusError(
            f"corpus {report.path} has {len(corpus)} usable document{dup}; attribution ranks training "
            f"documents, so it needs at least {MIN_DOCUMENTS} distinct ones ({report.summary()})"
        )


def prepare_fresh(
    corpus: str | Path | Corpus,
    config: RunConfig,
    targets: list[TargetSpec],
    tokenizer: str | Path | Tokenizer | None = None,
    *,
    progress: bool = True,
) -> Prepared:
    """Load and check every input; raises a typed error before anything is written."""
    check_targets(list(targets))
    corpus = corpus if isinstance(corpus, Corpus) else load_corpus(corpus)
    _check_corpus_size(corpus)
    if tokenizer is None:
        tok = train_tokenizer(corpus, config.train.tokenizer_vocab_size)
        source = f"trained: byte-level BPE, vocab_size {config.train.tokenizer_vocab_size}"
    elif isinstance(tokenizer, Tokenizer):
        tok, source = tokenizer, "given (Python object)"
    else:
        tok, source = load_tokenizer(tokenizer), f"loaded from {tokenizer}"
    chunks = chunk_corpus(corpus, tok, config.model.context_length, progress=progress)
    if len(chunks) < config.train.batch_size:
        raise ConfigError(
            f"the corpus gives {len(chunks)} training chunks but one step takes batch_size="
            f"{config.train.batch_size}; lower --batch-size or add documents"
        )
    batch = encode_target_batch(tok, list(targets), config.model.context_length)
    return Prepared(config, corpus, tok, source, chunks, list(targets), batch)


def corpus_from_table(frame: pd.DataFrame, path: str) -> Corpus:
    docs = [
        Document(r.doc_id, r.source, json.loads(r.metadata), r.text, r.sha256)
        for r in frame.itertuples(index=False)
    ]
    report = CorpusReport(path=path, n_found=len(docs), n_kept=len(docs))
    return Corpus(documents=docs, report=report)


def prepare_from_run(
    run: RunDirectory, manifest: dict[str, Any], *, extra_targets: list[TargetSpec] | None = None
) -> Prepared:
    """Rebuild the recorded setup from the run directory; refuse it if it no longer matches."""
    config = RunConfig.from_json({k: v for k, v in manifest["config"].items() if k != "engine"})
    corpus = corpus_from_table(read_table(run.corpus_path, "corpus"), str(run.corpus_path))
    if corpus.sha256 != manifest["corpus"]["sha256"]:
        raise RunMismatchError(
            f"{run.corpus_path} no longer matches the corpus fingerprint in the manifest; "
            "run `provenance verify` to see which document changed"
        )
    if not run.tokenizer_path.is_file():
        raise RunDirectoryError(f"{run.tokenizer_path} is missing; the run cannot be replayed or resumed")
    tok = load_tokenizer(run.tokenizer_path)
    chunks = chunk_corpus(corpus, tok, config.model.context_length, progress=False)
    recorded = read_table(run.chunks_path, "chunks")
    derived = pd.DataFrame(
        {"chunk_id": [c.chunk_id for c in chunks], "doc_id": [c.doc_id for c in chunks],
         "start_token": [c.start_token for c in chunks], "end_token": [c.end_token for c in chunks]}
    )
    cols = ["chunk_id", "doc_id", "start_token", "end_token"]
    if len(recorded) != len(derived) or not recorded[cols].reset_index(drop=True).equals(derived[cols]):
        raise RunMismatchError(
            f"the chunks derived from {run.corpus_path} and {run.tokenizer_path} differ from "
            f"{run.chunks_path} (another tokenizers/provenance version?); the run cannot be replayed exactly"
        )
    targets = targets_from_frame(read_table(run.targets_path, "targets"))
    context = config.model.context_length
    extra = list(extra_targets or [])
    return Prepared(
        config, corpus, tok, manifest["tokenizer"].get("source", "run directory"), chunks, targets,
        encode_target_batch(tok, targets, context), extra, encode_target_batch(tok, extra, context),
    )
