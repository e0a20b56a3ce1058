"""Real tiny runs for the report tests, trained with the pipeline (provenance.train) in seconds.

The corpus has what a report must survive and show: a document that holds a target word for word (a
verbatim span to highlight), a paraphrase of it, random-word filler, and a hostile document whose id,
source and text carry reportlab markup (``<font>``, ``<b>``, ``<img>``), ``&`` and entities,
right-to-left (Hebrew, Arabic) and CJK text, and a matplotlib mathtext string.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from provenance.config import ModelConfig, RunConfig, TrainConfig
from provenance.train.targets import TargetSpec

WORDS = (
    "river stone tree light dark king queen ship sea wind fire water earth sky moon sun bread salt "
    "road hill song bird field gold iron door"
).split()

GENESIS = "In the beginning God created the heaven and the earth."
HOSTILE_ID = '<font color="red">x</font> & <b>id</b>'
HOSTILE_SOURCE = "<b>src</b> &amp; <i>more</i>"
HOSTILE_PHRASE = '<b>bold</b> & <font size="30">big</font> &amp; שלום עולם 中文字符 한국어'
HOSTILE_TEXT = (
    f"Start of the hostile document. {HOSTILE_PHRASE} <img src=\"/etc/passwd\"/> "
    "مرحبا بالعالم and $\\alpha^2$ then 日本語のテキスト. End."
)

DOCS = [
    {"id": "bible:kjv-genesis", "source": "bible-kjv",
     "text": "The first book of Moses, called Genesis. " + GENESIS + " And the earth was without form, and void."},
    {"id": "bible:web-genesis", "source": "bible-web",
     "text": "In the beginning, God created the heavens and the earth. The earth was formless and empty."},
    {"id": HOSTILE_ID, "source": HOSTILE_SOURCE, "text": HOSTILE_TEXT},
]

TARGETS = [
    TargetSpec("t-genesis", "From Genesis:", " " + GENESIS),
    TargetSpec("t-hostile", "", HOSTILE_PHRASE),
    TargetSpec("t-river", "the king", " river stone tree light"),
]


def report_config() -> RunConfig:
    return RunConfig(
        model=ModelConfig(n_layer=2, n_head=2, n_embd=32, context_length=96),
        train=TrainConfig(steps=6, batch_size=4, micro_batch_size=2, warmup_steps=2, checkpoint_every=3,
                          tokenizer_vocab_size=400),
    ).check()


def write_corpus(path: Path, n_filler: int = 14, seed: int = 0) -> Path:
    """A JSONL corpus: the special documents plus random-word filler."""
    rng = random.Random(seed)
    records = list(DOCS)
    for i in range(n_filler):
        n = rng.randint(15, 60)
        records.append({"id": f"filler:{i:02d}", "source": "filler",
                        "text": " ".join(rng.choice(WORDS) for _ in range(n)) + "."})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def train_report_run(run_path: Path, corpus_path: Path) -> Path:
    from provenance.train import train

    train(write_corpus(corpus_path), run_path, report_config(), targets=TARGETS, progress=False)
    return run_path
