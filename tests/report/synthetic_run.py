"""A demo-size run directory written per docs/run_directory.md, for timing a batch of 50 reports.

Real documents (the shipped demo training subset, 1008 documents), 50 targets cut from them (so the
evidence finds verbatim spans), and synthetic contributions: ``steps`` steps of ``batch_size`` chunks with
random values per target, aggregated into values.parquet by the store's own ``aggregate_values`` and into
a ledger whose attributed sums are the steps' sums. No model is trained: the values are not meaningful,
the sizes are (values, contributions, ledger, corpus and index as large as the demo run's).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from provenance.store.hashing import combined_sha256, sha256_file, target_sha256
from provenance.store.tables import aggregate_values, write_table


def write_synthetic_run(path: Path, n_targets: int = 50, steps: int = 300, batch_size: int = 16,
                        seed: int = 0) -> Path:
    from provenance.data import load_demo_corpus

    rng = np.random.default_rng(seed)
    corpus = load_demo_corpus()
    docs = corpus.documents
    path.mkdir(parents=True, exist_ok=True)
    corpus_frame = pd.DataFrame({
        "doc_id": [d.doc_id for d in docs], "source": [d.source for d in docs], "sha256": [d.sha256 for d in docs],
        "n_tokens": [len(d.text.split()) for d in docs], "n_chunks": [1] * len(docs),
        "metadata": [json.dumps(d.metadata, sort_keys=True) for d in docs], "text": [d.text for d in docs],
    })
    write_table(path / "corpus.parquet", corpus_frame, "corpus")

    # targets: a sentence-sized slice of a random document each (verbatim evidence for that document)
    targets, sources = [], []
    for i in range(n_targets):
        doc = docs[int(rng.integers(len(docs)))]
        words = doc.text.split()
        start = int(rng.integers(max(1, len(words) - 25)))
        text = " ".join(words[start:start + 25])
        targets.append({"target_id": f"output-{i:02d}", "prompt": "", "text": text,
                        "sha256": target_sha256("", text), "registered": "before_training"})
        sources.append(doc.doc_id)
    write_table(path / "targets.parquet", pd.DataFrame(targets), "targets")
    target_ids = [t["target_id"] for t in targets]

    # contributions: each step draws batch_size documents; the target's source document gets a boost
    doc_ids = [d.doc_id for d in docs]
    rows_step, rows_doc, rows_target, rows_value = [], [], [], []
    for step in range(1, steps + 1):
        batch = rng.choice(len(docs), size=batch_size, replace=False)
        for t, target_id in enumerate(target_ids):
            values = rng.normal(0.0, 1e-3, size=batch_size)
            for k, d in enumerate(batch):
                rows_step.append(step)
                rows_doc.append(doc_ids[d])
                rows_target.append(target_id)
                rows_value.append(values[k] + (5e-3 if doc_ids[d] == sources[t] else 0.0))
    contributions = pd.DataFrame({"step": rows_step, "doc_id": rows_doc, "chunk_id": 0, "target_id": rows_target,
                                  "value_first_order": rows_value, "value_second_order": np.nan})
    write_table(path / "contributions.parquet", contributions, "contributions")
    write_table(path / "values.parquet", aggregate_values(contributions, doc_ids, target_ids, order=1), "values")

    sums = contributions.groupby(["step", "target_id"], sort=True)["value_first_order"].sum().reset_index()
    ledger = sums.rename(columns={"value_first_order": "attributed_sum"})
    ledger["attributed_sum_first_order"] = ledger["attributed_sum"]
    ledger["history_term"] = rng.normal(0.0, 1e-4, size=len(ledger))
    ledger["lr"] = 6e-4
    ledger["clip_factor"] = 1.0
    ledger = ledger.sort_values(["target_id", "step"])
    ledger["target_loss"] = 6.0 - ledger.groupby("target_id")["attributed_sum"].cumsum().shift(fill_value=0.0) * 0.9
    write_table(path / "ledger.parquet", ledger, "ledger")

    files = {name: sha256_file(path / name) for name in
             ("corpus.parquet", "targets.parquet", "contributions.parquet", "values.parquet", "ledger.parquet")}
    manifest = {
        "format_version": 1, "run_id": path.name, "created": "2026-01-01T00:00:00Z",
        "versions": {"provenance": "0.1.0"},
        "config": {"note": "synthetic run for the report benchmark (tests/report/synthetic_run.py)",
                   "train": {"steps": steps, "batch_size": batch_size, "seed": seed}},
        "seed": seed,
        "corpus": {"n_documents": len(docs), "n_chunks": len(docs), "sha256": combined_sha256(corpus_frame["sha256"])},
        "tokenizer": {}, "model": {"sha256": {}}, "files": files,
        "values": {"order": 1, "sign": "positive = lowered the target's loss", "unit": "nats per output token"},
        "status": "complete",
    }
    (path / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path
