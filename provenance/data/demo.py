"""The shipped demo corpus (data/demo/ at the repository root; built by scripts/build_demo_corpus.py).

World English Bible chapters and fortunes (public domain / BSD). ``"demo"`` is the small training
subset listed in data/demo/demo_subset.txt (a GPT-2 trains on it on a CPU in minutes); ``"full"`` is
every shipped document. See data/demo/SOURCE.md for where each text comes from.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from provenance.data.corpus import Corpus, build_corpus
from provenance.data.ingest import jsonl_records
from provenance.errors import CorpusError

DEMO_DIR = Path(__file__).resolve().parent.parent.parent / "data" / "demo"
CORPUS_FILE = "corpus.jsonl.xz"
SUBSET_FILE = "demo_subset.txt"
TARGETS_FILE = "targets.jsonl"
SUBSETS = ("demo", "full")
MAX_DOCUMENT_BYTES = 1_000_000


def demo_file(name: str) -> Path:
    path = DEMO_DIR / name
    if not path.is_file():
        raise CorpusError(
            f"demo data file {path} not found: the demo corpus ships with the source repository "
            "(data/demo/), not with an installed package; run from a clone of the repository, or "
            "rebuild it with `python3 scripts/build_demo_corpus.py`"
        )
    return path


def demo_subset_ids() -> list[str]:
    """The doc ids of the demo training subset, in corpus order."""
    lines = demo_file(SUBSET_FILE).read_text(encoding="utf-8").splitlines()
    return [line for line in lines if line.strip()]


def load_demo_corpus(subset: str = "demo") -> Corpus:
    """The demo training subset (``"demo"``) or every shipped document (``"full"``)."""
    if subset not in SUBSETS:
        raise CorpusError(f"unknown demo subset {subset!r}; use one of {SUBSETS}")
    path = demo_file(CORPUS_FILE)
    records = jsonl_records(path)
    if subset == "demo":
        wanted = demo_subset_ids()
        keep = set(wanted)
        records_list = [r for r in records if r.doc_id in keep]
        missing = sorted(keep - {r.doc_id for r in records_list})
        if missing:
            raise CorpusError(
                f"{SUBSET_FILE} names {len(missing)} documents not in {CORPUS_FILE} (e.g. {missing[:3]}); "
                "the demo files are out of step: rebuild them with `python3 scripts/build_demo_corpus.py`"
            )
        return build_corpus(records_list, f"{path} (subset demo)", max_document_bytes=MAX_DOCUMENT_BYTES)
    return build_corpus(records, str(path), max_document_bytes=MAX_DOCUMENT_BYTES)


def load_demo_targets() -> list[dict[str, Any]]:
    """The demo's targets: ``{id, prompt, text, source_doc_id, kind, text_source, source_passage, note}``.

    kind: ``paraphrase`` (KJV wording of a passage the demo trains on, source_doc_id = that WEB
    chapter), ``topic`` (the same event told by another book; source_doc_id = the related chapter),
    ``unrelated`` (a fortune in no training set; source_doc_id = None).
    """
    path = demo_file(TARGETS_FILE)
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise CorpusError(f"{path}:{number} is not valid JSON ({exc.msg}); rebuild the demo files") from exc
    return rows
