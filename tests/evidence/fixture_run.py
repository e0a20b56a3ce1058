"""A fixture run directory written by hand per docs/run_directory.md (until a real tiny run is shipped).

The corpus has one document per kind of evidence the tests look for: a document that contains the
target text word for word, a human paraphrase of it (WEB vs KJV wording of the same verses), documents
on the same topic, unrelated ones, and one with a negative value.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from provenance.store.hashing import combined_sha256, sha256_text, target_sha256  # noqa: E402
from provenance.store.tables import write_table  # noqa: E402

TARGET_TEXT = (
    "In the beginning God created the heaven and the earth. And the earth was without form, and void; "
    "and darkness was upon the face of the deep."
)
DOCS = {
    # contains TARGET_TEXT verbatim, inside other text
    "bible:kjv-genesis": (
        "bible-kjv.txt",
        "The first book of Moses, called Genesis. " + TARGET_TEXT + " And the Spirit of God moved upon the "
        "face of the waters. And God said, Let there be light: and there was light.",
    ),
    # the same verses in the World English Bible: a human paraphrase
    "bible:web-genesis": (
        "bible-web.txt",
        "In the beginning, God created the heavens and the earth. The earth was formless and empty. "
        "Darkness was on the surface of the deep and God's Spirit was hovering over the surface of the waters.",
    ),
    # same topic (creation), different text
    "notes:creation": (
        "notes.txt",
        "Many ancient peoples told stories about how the world was made. In several of these myths a god "
        "shapes the land and the sky out of a dark, watery chaos, and light is the first thing created.",
    ),
    "cooking:bread": (
        "cooking.txt",
        "To bake a simple loaf, mix flour, water, salt and yeast. Knead the dough for ten minutes, let it "
        "rise for an hour, shape it, and bake it at two hundred and twenty degrees until the crust is brown.",
    ),
    "sports:football": (
        "sports.txt",
        "The home team scored twice in the second half. Their goalkeeper saved a penalty in the final "
        "minute, and the crowd cheered as the referee blew the whistle to end the match.",
    ),
    "tech:databases": (
        "tech.txt",
        "An index speeds up lookups in a database table. A B-tree keeps keys sorted so that a search, an "
        "insertion or a deletion takes logarithmic time.\n\nHash indexes answer equality queries only.",
    ),
}
# value, rank and share for TARGET_ID (rank 1 = largest value; share over positive values)
VALUES = {
    "bible:kjv-genesis": 0.30,
    "bible:web-genesis": 0.15,
    "notes:creation": 0.05,
    "cooking:bread": 0.0,
    "sports:football": -0.02,
    "tech:databases": -0.01,
}
TARGET_ID = "genesis-1"
UNATTRIBUTED_TARGET_ID = "registered-later"
LEDGER_LOSSES = [5.0, 4.0, 3.5]  # target loss before steps 1, 2, 3
LEDGER_ATTRIBUTED = [0.8, 0.4, 0.2]
LEDGER_HISTORY = [0.1, 0.05, 0.0]


def write_run(path: Path, docs: dict[str, tuple[str, str]] = DOCS, attributed: bool = True) -> Path:
    """Write a run directory with the files the evidence code reads."""
    path.mkdir(parents=True, exist_ok=True)
    rows = []
    for doc_id, (source, text) in docs.items():
        rows.append({"doc_id": doc_id, "source": source, "sha256": sha256_text(text), "n_tokens": len(text.split()),
                     "n_chunks": 1, "metadata": "{}", "text": text})
    corpus = pd.DataFrame(rows)
    write_table(path / "corpus.parquet", corpus, "corpus")
    (path / "tokenizer").mkdir(exist_ok=True)
    (path / "tokenizer" / "tokenizer.json").write_text("{}", encoding="utf-8")
    targets = pd.DataFrame(
        [
            {"target_id": TARGET_ID, "prompt": "", "text": TARGET_TEXT, "sha256": target_sha256("", TARGET_TEXT),
             "registered": "before_training"},
            {"target_id": UNATTRIBUTED_TARGET_ID, "prompt": "", "text": "How to bake bread at home.",
             "sha256": target_sha256("", "How to bake bread at home."), "registered": "replay"},
        ]
    )
    write_table(path / "targets.parquet", targets, "targets")
    if attributed:
        ordered = sorted(VALUES.items(), key=lambda kv: (-kv[1], kv[0]))
        positive = sum(v for v in VALUES.values() if v > 0)
        values = pd.DataFrame(
            [
                {"doc_id": d, "target_id": TARGET_ID, "value": v, "value_first_order": v, "value_second_order": None,
                 "rank": i + 1, "share": v / positive if v > 0 else 0.0}
                for i, (d, v) in enumerate(ordered)
            ]
        )
        write_table(path / "values.parquet", values, "values")
        ledger = pd.DataFrame(
            [
                {"step": s + 1, "target_id": TARGET_ID, "lr": 1e-3, "clip_factor": 1.0, "target_loss": loss,
                 "attributed_sum": a, "attributed_sum_first_order": a, "history_term": h}
                for s, (loss, a, h) in enumerate(zip(LEDGER_LOSSES, LEDGER_ATTRIBUTED, LEDGER_HISTORY))
            ]
        )
        write_table(path / "ledger.parquet", ledger, "ledger")
    manifest = {
        "format_version": 1,
        "run_id": path.name,
        "created": "2026-01-01T00:00:00Z",
        "versions": {},
        "config": {},
        "seed": 0,
        "corpus": {"n_documents": len(docs), "sha256": combined_sha256(corpus["sha256"].tolist()),
                   "report": {"empty": [], "duplicates": [], "non_utf8": [], "oversized": []}},
        "tokenizer": {"sha256": ""},
        "model": {"sha256": {}},
        "files": {},
        "values": {"order": 1, "sign": "positive = lowered the target's loss", "unit": "nats per output token"},
        "status": "complete",
    }
    (path / "manifest.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    return path
