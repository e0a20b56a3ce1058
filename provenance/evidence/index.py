"""`provenance index`: passages, embeddings, FAISS, BM25 and n-gram index in <run>/evidence/.

Layout (all written atomically; index.json last, so its presence means the index is complete):

    evidence/passages.parquet     doc_id, passage_id, start_char, end_char, text (offsets into the document)
    evidence/embeddings.npy       (n_passages, dim) float32, unit length, in passage_id order
    evidence/passages.faiss       faiss.write_index: IndexFlatIP (exact) or IndexHNSWFlat (approximate)
    evidence/ngrams.safetensors   sorted n-gram hashes of every document -> document (verbatim candidates)
    evidence/bm25/                bm25s index of the passages (npy + json, no pickle)
    evidence/index.json           embedder name + sha256, corpus sha256, parameters, sizes, timings
    evidence/shards/<key>/        embedding batches while a build runs; a rerun skips finished shards

The index is stale when the corpus hash recorded in index.json differs from the one corpus.parquet (or the
manifest) holds now; loading a stale or missing index raises EvidenceIndexError naming the fix.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
from tqdm import tqdm

from provenance.errors import EvidenceIndexError, RunDirectoryError
from provenance.evidence.assess import DocumentView
from provenance.evidence.encoder import Encoder, load_encoder
from provenance.evidence.labels import Thresholds, load_thresholds
from provenance.evidence.passages import DEFAULT_MAX_TOKENS, PassageParams, split_passages
from provenance.evidence.schema import IndexInfo
from provenance.evidence.spans import NgramIndex
from provenance.evidence.text import Words, words
from provenance.store import atomic
from provenance.store.hashing import combined_sha256, sha256_file, sha256_text
from provenance.store.run_dir import RunDirectory
from provenance.store.tables import read_table

INDEX_FORMAT = 1
EVIDENCE_DIR = "evidence"
SHARD_SIZE = 512
HNSW_M = 32
HNSW_EF_SEARCH = 128
PASSAGES_SCHEMA = pa.schema(
    [
        ("doc_id", pa.string()),
        ("passage_id", pa.int64()),
        ("start_char", pa.int64()),
        ("end_char", pa.int64()),
        ("text", pa.string()),
    ]
)


def index_command(run_dir: str | Path) -> str:
    return f"provenance index --run {run_dir}"


@dataclass(frozen=True)
class IndexParams:
    """Everything that shapes the index; a change means a rebuild."""

    max_tokens: int
    overlap_sentences: int
    min_span_words: int
    approximate: bool
    embedder_sha256: str

    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


def corpus_fingerprint(corpus: pd.DataFrame) -> str:
    """Hash of the sorted per-document hashes (the manifest's definition of the corpus hash)."""
    return combined_sha256(corpus["sha256"].astype(str).tolist())


def _read_corpus(run: RunDirectory) -> pd.DataFrame:
    corpus = read_table(run.corpus_path, "corpus")
    return corpus.reset_index(drop=True)


def _check_texts(corpus: pd.DataFrame, run: RunDirectory) -> None:
    """The passages are cut from the texts, the staleness check reads the hashes: they must agree."""
    bad = [d for d, t, h in zip(corpus["doc_id"], corpus["text"], corpus["sha256"]) if sha256_text(t) != h]
    if bad:
        raise RunDirectoryError(
            f"{run.corpus_path}: the text of {len(bad)} document(s) does not match its sha256 "
            f"(first: {bad[:3]}); the corpus table was edited or is corrupt; run `provenance verify --run {run.path}`"
        )


def _save_npy(path: Path, array: np.ndarray) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            np.save(handle, array, allow_pickle=False)

    atomic.atomic_write(path, write)


def build_index(
    run_dir: str | Path,
    embedder: str | Path | None = None,
    approximate: bool = False,
    batch_size: int = 64,
    progress: bool = True,
    *,
    force: bool = False,
    echo: Any = None,
) -> IndexInfo:
    """Build (or resume, or find up to date) the evidence index of a run. ``echo`` receives status lines."""
    say = echo or (lambda message: None)
    started = time.perf_counter()
    run = RunDirectory.open(run_dir, require_complete=False)
    manifest = run.read_manifest()
    corpus = _read_corpus(run)
    if corpus.empty:
        raise EvidenceIndexError(f"{run.corpus_path} has no documents; there is nothing to index")
    _check_texts(corpus, run)
    encoder = load_encoder(None if embedder is None else str(embedder))
    thresholds = load_thresholds()
    if encoder.sha256 != thresholds.embedder_sha256:
        say(
            f"note: the label thresholds were calibrated with {thresholds.embedder}, not {encoder.name}; "
            "similarity-based labels will not be calibrated (python -m provenance.evidence.calibrate --embedder PATH)"
        )
    params = IndexParams(
        max_tokens=min(DEFAULT_MAX_TOKENS, encoder.max_tokens),
        overlap_sentences=1,
        min_span_words=thresholds.min_span_words,
        approximate=bool(approximate),
        embedder_sha256=encoder.sha256,
    )
    folder = run.path / EVIDENCE_DIR
    corpus_sha = corpus_fingerprint(corpus)
    existing = _read_index_json(folder)
    if (
        not force
        and existing is not None
        and existing.get("corpus", {}).get("sha256") == corpus_sha
        and existing.get("params") == asdict(params)
    ):
        say(f"evidence index of {run.path} is up to date ({existing['n_passages']} passages)")
        return _info(run, existing, time.perf_counter() - started, up_to_date=True)

    # A rebuild: withdraw the old index first, so a crash never leaves index.json over new files.
    (folder / "index.json").unlink(missing_ok=True)
    folder.mkdir(parents=True, exist_ok=True)

    passage_params = PassageParams(params.max_tokens, params.overlap_sentences)
    rows = []
    texts = corpus["text"].tolist()
    for doc_id, text in tqdm(
        zip(corpus["doc_id"].tolist(), texts), total=len(texts), desc="passages", unit="doc", disable=not progress
    ):
        for start, end in split_passages(text, encoder.count_tokens, encoder.token_offsets, passage_params):
            rows.append((doc_id, len(rows), start, end, text[start:end]))
    passages = pd.DataFrame(rows, columns=PASSAGES_SCHEMA.names)
    if passages.empty:
        raise EvidenceIndexError(
            f"{run.corpus_path}: no document holds any words, so there is nothing to embed or match"
        )
    atomic.write_parquet(folder / "passages.parquet", passages, schema=PASSAGES_SCHEMA)
    say(f"{len(passages)} passages from {len(corpus)} documents (max {params.max_tokens} tokens each)")

    vectors = _embed_resumable(folder, params, passages["text"].tolist(), encoder, batch_size, progress, say)
    _save_npy(folder / "embeddings.npy", vectors)

    index_type, recall = _write_faiss(folder / "passages.faiss", vectors, approximate, say)

    doc_words = (words(t) for t in tqdm(texts, desc="n-grams", unit="doc", disable=not progress))
    ngrams = NgramIndex.build(doc_words, params.min_span_words)
    atomic.atomic_write(folder / "ngrams.safetensors", ngrams.save)
    _write_bm25(folder / "bm25", passages["text"].tolist())

    info = {
        "format": INDEX_FORMAT,
        "run_id": run.run_id,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "embedder": {"name": encoder.name, "sha256": encoder.sha256, "path": str(encoder.path),
                     "default": embedder is None, "dim": encoder.dim},
        "corpus": {"sha256": corpus_sha, "manifest_sha256": (manifest.get("corpus") or {}).get("sha256"),
                   "n_documents": len(corpus)},
        "n_passages": len(passages),
        "params": asdict(params),
        "index_type": index_type,
        "recall_at_10": recall,
        "thresholds_sha256": sha256_file(Path(__file__).with_name("thresholds.json")),
        "files": {name: sha256_file(folder / name) for name in ("passages.parquet", "embeddings.npy", "passages.faiss", "ngrams.safetensors")},
        "seconds": round(time.perf_counter() - started, 2),
    }
    atomic.write_json(folder / "index.json", info)
    shutil.rmtree(folder / "shards", ignore_errors=True)
    say(f"evidence index written to {folder} in {info['seconds']:.1f} s")
    return _info(run, info, time.perf_counter() - started)


def _embed_resumable(
    folder: Path, params: IndexParams, texts: list[str], encoder: Encoder, batch_size: int, progress: bool, say: Any
) -> np.ndarray:
    """Embed in shards of SHARD_SIZE passages, each saved when done; shards of an earlier, interrupted
    build with the same parameters and passages are reused."""
    key = hashlib.sha256((params.key() + "\x00" + "\x00".join(texts)).encode("utf-8")).hexdigest()[:16]
    shards = folder / "shards"
    if shards.is_dir():
        for old in shards.iterdir():
            if old.name != key:
                shutil.rmtree(old, ignore_errors=True)
    target = shards / key
    target.mkdir(parents=True, exist_ok=True)
    n_shards = (len(texts) + SHARD_SIZE - 1) // SHARD_SIZE
    done = {i for i in range(n_shards) if (target / f"{i:06d}.npy").is_file()}
    if done:
        say(f"resuming: {len(done)} of {n_shards} embedding shards already done")
    bar = tqdm(total=len(texts), desc="embed", unit="passage", disable=not progress)
    parts = []
    for i in range(n_shards):
        file = target / f"{i:06d}.npy"
        chunk = texts[i * SHARD_SIZE : (i + 1) * SHARD_SIZE]
        if i in done:
            part = np.load(file, allow_pickle=False)
            if part.shape != (len(chunk), encoder.dim):
                part = None
        else:
            part = None
        if part is None:
            part = encoder.encode(chunk, batch_size=batch_size)
            _save_npy(file, part)
        parts.append(part)
        bar.update(len(chunk))
    bar.close()
    return np.ascontiguousarray(np.concatenate(parts), dtype=np.float32)


def _write_faiss(path: Path, vectors: np.ndarray, approximate: bool, say: Any) -> tuple[str, float | None]:
    import faiss

    dim = vectors.shape[1]
    exact = faiss.IndexFlatIP(dim)
    exact.add(vectors)
    if not approximate:
        atomic.atomic_write(path, lambda tmp: faiss.write_index(exact, str(tmp)))
        return "flat-ip", None
    approx = faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
    approx.hnsw.efConstruction = 80
    approx.add(vectors)
    approx.hnsw.efSearch = HNSW_EF_SEARCH
    recall = recall_at_10(exact, approx, vectors)
    say(f"approximate index (HNSW, M={HNSW_M}, efSearch={HNSW_EF_SEARCH}): recall@10 vs exact = {recall:.4f}")
    atomic.atomic_write(path, lambda tmp: faiss.write_index(approx, str(tmp)))
    return "hnsw-ip", recall


def recall_at_10(exact: Any, approx: Any, vectors: np.ndarray, n_queries: int = 1000, seed: int = 0) -> float:
    """Share of the exact top-10 the approximate index also returns, over sampled passages as queries."""
    rng = np.random.default_rng(seed)
    picks = rng.choice(vectors.shape[0], size=min(n_queries, vectors.shape[0]), replace=False)
    queries = vectors[picks]
    k = min(10, vectors.shape[0])
    _, truth = exact.search(queries, k)
    _, found = approx.search(queries, k)
    hits = sum(len(set(t) & set(f)) for t, f in zip(truth.tolist(), found.tolist()))
    return round(hits / (len(picks) * k), 4)


def _write_bm25(folder: Path, texts: list[str]) -> None:
    import bm25s

    tokens = bm25s.tokenize(texts, stopwords="en", show_progress=False)
    retriever = bm25s.BM25()
    retriever.index(tokens, show_progress=False)
    tmp = atomic.staging_dir(folder)
    retriever.save(str(tmp), show_progress=False)
    atomic.publish_dir(tmp, folder)


def _read_index_json(folder: Path) -> dict | None:
    file = folder / "index.json"
    if not file.is_file():
        return None
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None


def _info(run: RunDirectory, data: dict, seconds: float, up_to_date: bool = False) -> IndexInfo:
    return IndexInfo(
        run_id=run.run_id,
        path=str(run.path / EVIDENCE_DIR),
        n_documents=int(data["corpus"]["n_documents"]),
        n_passages=int(data["n_passages"]),
        embedder=data["embedder"]["name"],
        embedder_sha256=data["embedder"]["sha256"],
        corpus_sha256=data["corpus"]["sha256"],
        index_type=data["index_type"],
        recall_at_10=data.get("recall_at_10"),
        seconds=round(seconds, 3),
        up_to_date=up_to_date,
    )


class EvidenceIndex:
    """A loaded evidence index: FAISS, passages, embeddings, n-grams, BM25, the corpus texts, the
    encoder and the label thresholds. Load once and reuse (the app caches it as a resource)."""

    def __init__(
        self,
        run: RunDirectory,
        info: dict,
        corpus: pd.DataFrame,
        passages: pd.DataFrame,
        embeddings: np.ndarray,
        faiss_index: Any,
        ngrams: NgramIndex,
        bm25: Any,
        encoder: Encoder,
        thresholds: Thresholds,
    ) -> None:
        self.run = run
        self.info = info
        self.doc_ids: list[str] = corpus["doc_id"].tolist()
        self.sources: list[str] = corpus["source"].tolist()
        self.texts: list[str] = corpus["text"].tolist()
        self.doc_index = {d: i for i, d in enumerate(self.doc_ids)}
        self.passage_doc = np.array([self.doc_index[d] for d in passages["doc_id"]], dtype=np.int64)
        self.passage_start = passages["start_char"].to_numpy(np.int64)
        self.passage_end = passages["end_char"].to_numpy(np.int64)
        # passages are stored document by document: offsets[d]:offsets[d+1] are document d's passages
        self.doc_offsets = np.searchsorted(self.passage_doc, np.arange(len(self.doc_ids) + 1))
        self.embeddings = embeddings
        self.faiss = faiss_index
        self.ngrams = ngrams
        self.bm25 = bm25
        self.encoder = encoder
        self.thresholds = thresholds
        self.params = PassageParams(info["params"]["max_tokens"], info["params"]["overlap_sentences"])
        self._words: dict[int, Words] = {}

    @property
    def run_id(self) -> str:
        return self.run.run_id

    @property
    def n_passages(self) -> int:
        return int(self.passage_doc.shape[0])

    def document_words(self, doc: int) -> Words:
        found = self._words.get(doc)
        if found is None:
            if len(self._words) > 4096:
                self._words.clear()
            found = self._words[doc] = words(self.texts[doc])
        return found

    def document_view(self, doc: int) -> DocumentView:
        a, b = int(self.doc_offsets[doc]), int(self.doc_offsets[doc + 1])
        ranges = tuple(zip(self.passage_start[a:b].tolist(), self.passage_end[a:b].tolist()))
        return DocumentView(self.texts[doc], self.document_words(doc), ranges, np.asarray(self.embeddings[a:b]))

    def passage_text(self, passage: int) -> str:
        doc = int(self.passage_doc[passage])
        return self.texts[doc][self.passage_start[passage] : self.passage_end[passage]]


def load_index(run_dir: str | Path, *, encoder: Encoder | None = None) -> EvidenceIndex:
    """Load the evidence index of a run; EvidenceIndexError if it is missing, stale or unreadable."""
    import bm25s
    import faiss

    run = RunDirectory.open(run_dir, require_complete=False)
    manifest = run.read_manifest()
    folder = run.path / EVIDENCE_DIR
    fix = index_command(run.path)
    info = _read_index_json(folder)
    if info is None:
        raise EvidenceIndexError(f"{run.path} has no (complete) evidence index in {folder}; build it with `{fix}`")
    if info.get("format") != INDEX_FORMAT:
        raise EvidenceIndexError(f"{folder}/index.json has format {info.get('format')!r}, expected {INDEX_FORMAT}; rebuild with `{fix} --force`")
    corpus = _read_corpus(run)
    current = corpus_fingerprint(corpus)
    recorded = info["corpus"]["sha256"]
    manifest_now = (manifest.get("corpus") or {}).get("sha256")
    if current != recorded or (manifest_now is not None and info["corpus"].get("manifest_sha256") not in (None, manifest_now)):
        raise EvidenceIndexError(
            f"the evidence index of {run.path} is stale: it was built for corpus {recorded[:12]}..., the run's "
            f"corpus is now {current[:12]}...; rebuild it with `{fix}`"
        )
    try:
        passages = read_passage_offsets(folder / "passages.parquet")
        embeddings = np.load(folder / "embeddings.npy", allow_pickle=False, mmap_mode="r")
        faiss_index = faiss.read_index(str(folder / "passages.faiss"))
        ngrams = NgramIndex.load(folder / "ngrams.safetensors")
        bm25 = bm25s.BM25.load(str(folder / "bm25"), mmap=False, allow_pickle=False)
    except (OSError, RuntimeError, ValueError, KeyError) as exc:
        raise EvidenceIndexError(f"the evidence index in {folder} is unreadable ({exc}); rebuild it with `{fix} --force`") from exc
    if len(passages) != info["n_passages"] or embeddings.shape[0] != len(passages) or faiss_index.ntotal != len(passages):
        raise EvidenceIndexError(f"the evidence index in {folder} is inconsistent (passage counts differ); rebuild it with `{fix} --force`")
    if isinstance(faiss_index, faiss.IndexHNSWFlat):
        faiss_index.hnsw.efSearch = HNSW_EF_SEARCH
    thresholds = load_thresholds()
    if thresholds.min_span_words != info["params"]["min_span_words"]:
        raise EvidenceIndexError(
            f"the n-gram index of {folder} uses {info['params']['min_span_words']}-word seeds, the label "
            f"thresholds {thresholds.min_span_words}; rebuild it with `{fix}`"
        )
    if encoder is None:
        encoder = load_encoder(None if info["embedder"].get("default") else info["embedder"]["path"])
    if encoder.sha256 != info["embedder"]["sha256"]:
        raise EvidenceIndexError(
            f"the index was built with embedder {info['embedder']['name']} (sha256 {info['embedder']['sha256'][:12]}...), "
            f"but the loaded embedder {encoder.name} has sha256 {encoder.sha256[:12]}...; rebuild with `{fix}` "
            "or pass the same --embedder"
        )
    return EvidenceIndex(run, info, corpus, passages, embeddings, faiss_index, ngrams, bm25, encoder, thresholds)


def read_passage_offsets(path: Path) -> pd.DataFrame:
    """doc_id, passage_id, start_char, end_char (the passage text is a slice of the document's text)."""
    import pyarrow.parquet as pq

    names = pq.read_schema(path).names
    missing = [c for c in PASSAGES_SCHEMA.names if c not in names]
    if missing:
        raise EvidenceIndexError(f"{path} lacks columns {missing}")
    return pq.read_table(path, columns=["doc_id", "passage_id", "start_char", "end_char"]).to_pandas()

