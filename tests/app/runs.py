"""Run directories for the app tests.

``build_small_run``: a real run made with the pipeline's Python API (provenance.train.train on a
handful of documents, a few steps) plus its evidence index (provenance.evidence.build_index). The
corpus holds a document that contains the first target word for word, a human paraphrase of it (WEB vs
KJV wording), documents on other subjects, and one document full of HTML/Markdown markup.

``build_large_run``: a synthetic run of 10,000 documents and 20 targets written per
docs/run_directory.md (random contributions, aggregated by the store's own aggregate_values), for the
first-load timing; it has no evidence index.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

GENESIS = (
    "In the beginning God created the heaven and the earth. And the earth was without form, and void; "
    "and darkness was upon the face of the deep."
)
BREAD = "Knead the dough for ten minutes, let it rise, and bake the bread until the crust is brown."
MARKUP = (
    "<script>alert(1)</script> **bold words** and # not a heading\n"
    "[click me](javascript:alert(2)) <img src=x onerror=alert(3)> <b>bold tag</b> `code` $x^2$ "
    "the earth was without form"
)
DOCUMENTS = {
    "bible/genesis_kjv": "The first book of Moses, called Genesis. " + GENESIS + " And the Spirit of God moved upon "
    "the face of the waters. And God said, Let there be light: and there was light. And God saw the light, "
    "that it was good: and God divided the light from the darkness. And God called the light Day, and the "
    "darkness he called Night. And the evening and the morning were the first day. And God said, Let there be "
    "a firmament in the midst of the waters, and let it divide the waters from the waters.",
    "bible/genesis_web": "In the beginning, God created the heavens and the earth. The earth was formless and empty. "
    "Darkness was on the surface of the deep and God's Spirit was hovering over the surface of the waters.",
    "notes/creation_notes": "Many ancient peoples told stories about how the world was made. In several of these "
    "myths a god shapes the land and the sky out of a dark, watery chaos, and light is the first thing made.",
    "everyday/bread": "To bake a simple loaf, mix flour, water, salt and yeast. " + BREAD,
    "everyday/football": "The home team scored twice in the second half. Their goalkeeper saved a penalty in the "
    "final minute, and the crowd cheered as the referee blew the whistle.",
    "everyday/databases": "An index speeds up lookups in a database table. A B-tree keeps keys sorted so that a "
    "search, an insertion or a deletion takes logarithmic time. Hash indexes answer equality queries only.",
    "notes/markup": MARKUP,
    "everyday/garden": "Plant the seeds in spring, water them every morning, and pull the weeds before they spread "
    "through the vegetable beds.",
}
TARGETS = {"genesis": ("", GENESIS), "bread": ("How to bake:", " " + BREAD)}


def small_config():
    """Trained with (small) gradient sketches, so the app's approximate values can be shown."""
    from provenance.config import ModelConfig, RunConfig, SketchConfig, TrainConfig

    return RunConfig(
        model=ModelConfig(n_layer=2, n_head=2, n_embd=32, context_length=96),
        train=TrainConfig(steps=6, batch_size=4, micro_batch_size=2, warmup_steps=2, checkpoint_every=3,
                          tokenizer_vocab_size=300),
        sketch=SketchConfig(enabled=True, every=3, k_out=8, k_in=8, k_vector=8),
    ).check()


def write_corpus(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in DOCUMENTS.items():
        file = folder / f"{name}.txt"
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text(text + "\n", encoding="utf-8")
    return folder


def build_small_run(runs_root: Path, corpus_folder: Path, run_id: str = "small") -> Path:
    """Train + index a real tiny run under runs_root/run_id (about a minute on a busy 2-core CPU)."""
    from provenance.evidence.index import build_index
    from provenance.train import TargetSpec, train

    targets = [TargetSpec(tid, prompt, text) for tid, (prompt, text) in TARGETS.items()]
    run = train(write_corpus(corpus_folder), runs_root / run_id, small_config(), targets=targets, progress=False)
    build_index(run.path, progress=False)
    return run.path


def many_targets() -> dict[str, tuple[str, str]]:
    """The two targets plus 20 sentences of the corpus: enough reference targets for the combined order."""
    sentences = [x.strip() + "." for text in DOCUMENTS.values() for x in text.split(".") if len(x.split()) >= 6]
    extra = {f"sentence-{i:02d}": ("", " " + sentence) for i, sentence in enumerate(sentences[:20])}
    assert len(extra) == 20, "the corpus has fewer than 20 long sentences"
    return {**TARGETS, **extra}


def build_many_targets_run(runs_root: Path, corpus_folder: Path, run_id: str = "many") -> Path:
    """Like build_small_run, with 22 registered targets (the combined ranking needs >= 20 others)."""
    from provenance.evidence.index import build_index
    from provenance.train import TargetSpec, train

    targets = [TargetSpec(tid, prompt, text) for tid, (prompt, text) in many_targets().items()]
    run = train(write_corpus(corpus_folder), runs_root / run_id, small_config(), targets=targets, progress=False)
    build_index(run.path, progress=False)
    return run.path


def build_large_run(path: Path, n_documents: int = 10_000, n_targets: int = 20, steps: int = 200,
                    seed: int = 0) -> Path:
    """A complete synthetic run (contract tables + manifest with file hashes), no checkpoints or model."""
    from provenance.store.hashing import combined_sha256, sha256_text, target_sha256
    from provenance.store.run_dir import RunDirectory
    from provenance.store.tables import aggregate_values, write_table

    rng = np.random.default_rng(seed)
    path.mkdir(parents=True, exist_ok=True)
    words = np.array("river stone light king ship sea wind fire water earth sky moon sun bread salt road hill "
                     "song bird field gold iron door".split())
    doc_ids = [f"doc-{i:05d}" for i in range(n_documents)]
    texts = [" ".join(rng.choice(words, size=int(rng.integers(20, 80)))) + "." for _ in range(n_documents)]
    corpus = pd.DataFrame({
        "doc_id": doc_ids, "source": [f"source-{i % 7}.jsonl" for i in range(n_documents)],
        "sha256": [sha256_text(t) for t in texts], "n_tokens": [len(t.split()) + 2 for t in texts],
        "n_chunks": 1, "metadata": "{}", "text": texts,
    })
    write_table(path / "corpus.parquet", corpus, "corpus")
    write_table(path / "chunks.parquet", pd.DataFrame({
        "chunk_id": np.arange(n_documents), "doc_id": doc_ids, "start_token": 0,
        "end_token": corpus["n_tokens"], "n_tokens": corpus["n_tokens"]}), "chunks")
    target_ids = [f"target-{k:02d}" for k in range(n_targets)]
    target_texts = [" ".join(rng.choice(words, size=12)) for _ in target_ids]
    write_table(path / "targets.parquet", pd.DataFrame({
        "target_id": target_ids, "prompt": "", "text": target_texts,
        "sha256": [target_sha256("", t) for t in target_texts], "registered": "before_training"}), "targets")
    # every chunk trained once, in a random order, spread over the steps
    order = rng.permutation(n_documents)
    step_of = np.empty(n_documents, dtype=np.int64)
    step_of[order] = np.arange(n_documents) * steps // n_documents + 1
    chunk = np.repeat(np.arange(n_documents), n_targets)
    contributions = pd.DataFrame({
        "step": step_of[chunk], "doc_id": np.array(doc_ids)[chunk], "chunk_id": chunk,
        "target_id": np.tile(target_ids, n_documents),
        "value_first_order": rng.standard_t(3, size=chunk.size) * 1e-3 + 2e-4,
        "value_second_order": np.nan,
    }).sort_values(["step", "chunk_id", "target_id"])
    write_table(path / "contributions.parquet", contributions, "contributions")
    values = aggregate_values(contributions, doc_ids, target_ids, order=1)
    write_table(path / "values.parquet", values, "values")
    per_step = contributions.groupby(["step", "target_id"], as_index=False)["value_first_order"].sum()
    loss = 6.0 - per_step.groupby("target_id")["value_first_order"].cumsum().shift(fill_value=0.0)
    write_table(path / "ledger.parquet", pd.DataFrame({
        "step": per_step["step"], "target_id": per_step["target_id"], "lr": 6e-4, "clip_factor": 1.0,
        "target_loss": loss.to_numpy(), "attributed_sum": per_step["value_first_order"],
        "attributed_sum_first_order": per_step["value_first_order"], "history_term": 0.0}), "ledger")
    write_table(path / "train_log.parquet", pd.DataFrame({
        "step": np.arange(1, steps + 1), "loss": np.linspace(6.0, 3.0, steps), "tokens": 4096,
        "lr": 6e-4, "grad_norm": 1.0, "clip_factor": 1.0, "seconds": 0.5}), "train_log")
    run = RunDirectory(path)
    manifest = {
        "format_version": 1, "run_id": path.name, "created": "2026-01-01T00:00:00Z", "versions": {},
        "config": {"train": {"steps": steps}}, "seed": seed,
        "corpus": {"n_documents": n_documents, "n_chunks": n_documents,
                   "sha256": combined_sha256(corpus["sha256"].tolist()),
                   "report": {"empty": [], "duplicates": [], "non_utf8": [], "oversized": []}},
        "tokenizer": {"sha256": None}, "model": {"architecture": "synthetic (no model)", "sha256": {}},
        "files": run.file_hashes(),
        "values": {"order": 1, "sign": "positive = lowered the target's loss", "unit": "nats per output token"},
        "status": "complete",
    }
    (path / "manifest.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    return path
