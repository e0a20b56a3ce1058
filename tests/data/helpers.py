"""Small corpora and tokenizers for the data tests (built in tmp folders, no network)."""

from __future__ import annotations

import json
import random
from pathlib import Path

from provenance.data import Corpus, load_corpus

WORDS = (
    "the a river mountain light darkness seed sower field city king queen bread fish water stone "
    "house road tree fruit wind night day morning evening garden voice word people land sea sky "
    "walked spoke saw made gave took found called went came said built planted gathered"
).split()


def sample_texts(n: int, seed: int = 0) -> list[str]:
    """Deterministic English-like documents of varied length (a few words to a few hundred)."""
    rng = random.Random(seed)
    texts = []
    for i in range(n):
        sentences = []
        for _ in range(rng.choice([1, 2, 5, 12, 30])):
            words = [rng.choice(WORDS) for _ in range(rng.randint(3, 12))]
            sentences.append(" ".join(words).capitalize() + rng.choice([".", "!", "?", ";"]))
        tail = " Caf\u00e9, na\u00efve \u201cquotes\u201d \u2014 \u00e9t\u00e9."
        texts.append(f"Document {i}: " + " ".join(sentences) + tail)
    return texts


def make_corpus(tmp: Path, n: int = 40, seed: int = 0) -> Corpus:
    path = tmp / "sample.jsonl"
    with open(path, "w", encoding="utf-8") as handle:
        for i, text in enumerate(sample_texts(n, seed)):
            handle.write(json.dumps({"id": f"doc-{i:03d}", "text": text}) + "\n")
    return load_corpus(path)
