"""Data curation from a run's values: drop the documents that worked against the chosen targets.

The In-Run Data Shapley paper drops the part of the pretraining corpus whose value on a validation
set is negative and retrains. Here a run's values (values.parquet) are averaged over the chosen
targets, the documents are ranked, and a new corpus is written that `provenance train --corpus`
reads back with the same doc ids, sources, metadata and texts (so a curated run's documents keep
their ids and their sha256).

Which targets: ``validation`` = every target whose id starts with ``VALIDATION_PREFIX``
(``validation:``), the convention for held-out corpus text registered as targets; or explicit target
ids. The aggregate is the mean of the per-target values, i.e. the value on the mean validation loss
(nats per output token, positive = lowered it).

Outputs (each written atomically; none is written when any already exists):
- ``CORPUS`` (``.jsonl``): one ``{"id", "source", "metadata", "text"}`` object per kept document.
- ``<stem>.dropped.parquet``: the dropped documents with their values (``DROPPED_SCHEMA``).
- ``<stem>.curation.json``: what was done (run, targets, rule, counts, hashes).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from provenance.errors import CurationError, TargetError
from provenance.store import atomic
from provenance.store.hashing import sha256_file
from provenance.store.run_dir import RunDirectory, utc_now
from provenance.store.tables import read_table

VALIDATION_PREFIX = "validation:"
CORPUS_SUFFIX = ".jsonl"
DROPPED_SUFFIX = ".dropped.parquet"
SUMMARY_SUFFIX = ".curation.json"
DROPPED_SCHEMA = pa.schema(
    [
        ("doc_id", pa.string()),
        ("source", pa.string()),
        ("n_tokens", pa.int64()),
        ("value", pa.float64()),  # mean over the chosen targets of the document's value
        ("rank_from_bottom", pa.int64()),  # 1 = the lowest value of the whole corpus
    ]
)
_BOTTOM = re.compile(r"^bottom-(?P<number>\d+(?:\.\d*)?|\.\d+)(?P<percent>%?)$")


@dataclass(frozen=True)
class DropRule:
    """Which documents to drop: every negative-valued one, or the lowest-valued fraction."""

    kind: str  # "negative" or "bottom"
    fraction: float | None = None  # for "bottom": share of the documents, in (0, 1)

    @classmethod
    def parse(cls, spec: str) -> DropRule:
        """``negative``, ``bottom-0.16`` or ``bottom-16%``."""
        text = spec.strip().lower()
        if text == "negative":
            return cls("negative")
        match = _BOTTOM.match(text)
        if match:
            fraction = float(match["number"]) / (100.0 if match["percent"] else 1.0)
            if 0.0 < fraction < 1.0:
                return cls("bottom", fraction)
        raise CurationError(
            f"--drop {spec!r} is not a drop rule; use 'negative' (every document with a value < 0) or "
            "'bottom-FRACTION' with 0 < FRACTION < 1, e.g. 'bottom-0.16' or 'bottom-16%'"
        )

    def describe(self) -> str:
        return "value < 0" if self.kind == "negative" else f"lowest {self.fraction:.4g} of the documents"


@dataclass(frozen=True)
class CurationResult:
    """What `curate` wrote; the dropped documents (with values) are in ``dropped``."""

    corpus_path: Path
    dropped_path: Path
    summary_path: Path
    n_documents: int
    n_dropped: int
    n_kept: int
    tokens_dropped: int
    tokens_kept: int
    target_ids: tuple[str, ...]
    rule: str
    dropped: pd.DataFrame

    def summary(self) -> str:
        share = self.n_dropped / self.n_documents if self.n_documents else 0.0
        return (
            f"dropped {self.n_dropped} of {self.n_documents} documents ({share:.1%}; {self.tokens_dropped} of "
            f"{self.tokens_dropped + self.tokens_kept} tokens) by {self.rule}, values averaged over "
            f"{len(self.target_ids)} target(s); curated corpus: {self.corpus_path} ({self.n_kept} documents); "
            f"dropped list: {self.dropped_path}"
        )


def output_paths(out: str | Path) -> tuple[Path, Path, Path]:
    """(corpus, dropped list, summary) for ``--out``; the corpus must be a ``.jsonl`` file."""
    out = Path(out)
    if not out.name.lower().endswith(CORPUS_SUFFIX) or out.name.lower() == CORPUS_SUFFIX:
        raise CurationError(
            f"--out {out}: the curated corpus is written as JSONL; give a file name ending in .jsonl "
            "(e.g. curated.jsonl)"
        )
    stem = out.name[: -len(CORPUS_SUFFIX)]
    return out, out.with_name(stem + DROPPED_SUFFIX), out.with_name(stem + SUMMARY_SUFFIX)


def choose_targets(
    run: RunDirectory, targets: Sequence[str] | None = None, validation: bool = False
) -> list[str]:
    """The target ids to average over: explicit ids, or (default) the run's validation targets."""
    if targets and validation:
        raise CurationError("give either --target or --validation, not both")
    known = read_table(run.targets_path, "targets")["target_id"].tolist()
    if not known:
        raise CurationError(
            f"run {run.path} has no targets, so it has no values to curate by; train it with held-out "
            f"text registered as targets whose ids start with {VALIDATION_PREFIX!r} (or other targets)"
        )
    if targets:
        unknown = [t for t in targets if t not in known]
        if unknown:
            raise TargetError(
                f"target(s) {unknown} are not in run {run.path}; known targets: {_preview(known)}"
            )
        return list(dict.fromkeys(targets))
    chosen = [t for t in known if t.startswith(VALIDATION_PREFIX)]
    if not chosen:
        raise CurationError(
            f"run {run.path} has no validation targets (ids starting with {VALIDATION_PREFIX!r}); register "
            f"held-out text under such ids, or pick targets with --target (known: {_preview(known)})"
        )
    return chosen


def document_values(run_dir: str | Path, target_ids: Sequence[str]) -> pd.DataFrame:
    """One row per document of the run: doc_id, source, n_tokens, value (mean over ``target_ids``).

    Documents keep the run's corpus order. Every document of the corpus is present (the values table
    lists every (document, target) pair; a document never trained on has value 0).
    """
    run = RunDirectory.open(run_dir)
    if not target_ids:
        raise CurationError("no targets chosen; pass --target ID or --validation")
    values = read_table(run.values_path, "values", filters=[("target_id", "in", list(target_ids))])
    found = set(values["target_id"])
    missing = [t for t in target_ids if t not in found]
    if missing:
        raise CurationError(
            f"{run.values_path} has no values for target(s) {missing}; the run's values table is incomplete "
            "(rerun `provenance attribute` for them or `provenance verify` the run)"
        )
    corpus = read_table(run.corpus_path, "corpus")[["doc_id", "source", "n_tokens"]]
    mean = values.groupby("doc_id", sort=False)["value"].mean()
    frame = corpus.assign(value=corpus["doc_id"].map(mean))
    if frame["value"].isna().any():
        absent = frame.loc[frame["value"].isna(), "doc_id"].tolist()
        raise CurationError(
            f"{run.values_path} lacks values for {len(absent)} documents of the corpus (e.g. {absent[:3]}); "
            "the run is corrupt: check it with `provenance verify`"
        )
    return frame.reset_index(drop=True)


def select_dropped(values: pd.DataFrame, rule: DropRule) -> pd.DataFrame:
    """The rows of ``values`` to drop, lowest value first (ties broken by doc_id, so reproducible)."""
    ordered = values.sort_values(["value", "doc_id"], kind="mergesort").reset_index(drop=True)
    ordered["rank_from_bottom"] = np.arange(1, len(ordered) + 1, dtype=np.int64)
    if rule.kind == "negative":
        chosen = ordered[ordered["value"] < 0.0]
    elif rule.kind == "bottom" and rule.fraction is not None and 0.0 < rule.fraction < 1.0:
        chosen = ordered.head(int(round(rule.fraction * len(ordered))))
    else:
        raise CurationError(f"drop rule {rule} is not valid; build it with DropRule.parse('negative' or 'bottom-F')")
    return chosen.reset_index(drop=True)


def write_subset(
    run_dir: str | Path,
    dropped: pd.DataFrame,
    out: str | Path,
    info: dict[str, Any],
) -> tuple[Path, Path, Path]:
    """Write the run's corpus minus ``dropped`` (rows with doc_id, source, n_tokens, value, rank_from_bottom).

    ``info`` goes into the summary JSON. Refuses to overwrite; on any error removes what it wrote.
    """
    run = RunDirectory.open(run_dir)
    corpus_path, dropped_path, summary_path = output_paths(out)
    lacking = [c for c in DROPPED_SCHEMA.names if c not in dropped.columns]
    if lacking:
        raise CurationError(f"the dropped documents lack columns {lacking}; build them with select_dropped")
    existing = [str(p) for p in (corpus_path, dropped_path, summary_path) if p.exists()]
    if existing:
        raise CurationError(f"output already exists: {existing}; choose another --out or remove them")
    corpus = read_table(run.corpus_path, "corpus")
    unknown = sorted(set(dropped["doc_id"]) - set(corpus["doc_id"]))
    if unknown:
        raise CurationError(f"documents {unknown[:3]} to drop are not in {run.corpus_path}")
    drop_ids = set(dropped["doc_id"])
    kept = corpus[~corpus["doc_id"].isin(drop_ids)]
    if kept.empty:
        raise CurationError(
            f"the rule drops all {len(corpus)} documents of run {run.path}; nothing would be left to train on "
            "(use a smaller bottom-FRACTION)"
        )
    written: list[Path] = []
    try:
        atomic.atomic_write(corpus_path, lambda tmp: _write_jsonl(tmp, kept))
        written.append(corpus_path)
        atomic.write_parquet(dropped_path, dropped[DROPPED_SCHEMA.names].reset_index(drop=True), DROPPED_SCHEMA)
        written.append(dropped_path)
        manifest = run.read_manifest()
        summary = {
            **info,
            "run": str(run.path),
            "run_id": manifest.get("run_id"),
            "run_corpus_sha256": manifest.get("corpus", {}).get("sha256"),
            "values_order": manifest.get("values", {}).get("order"),
            "n_documents": int(len(corpus)),
            "n_dropped": int(len(drop_ids)),
            "n_kept": int(len(kept)),
            "tokens_dropped": int(corpus.loc[corpus["doc_id"].isin(drop_ids), "n_tokens"].sum()),
            "tokens_kept": int(kept["n_tokens"].sum()),
            "corpus_file": corpus_path.name,
            "corpus_file_sha256": sha256_file(corpus_path),
            "dropped_file": dropped_path.name,
            "created": utc_now(),
        }
        atomic.write_json(summary_path, summary)
        written.append(summary_path)
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise
    return corpus_path, dropped_path, summary_path


def curate(
    run_dir: str | Path,
    drop: str | DropRule,
    out: str | Path,
    *,
    targets: Sequence[str] | None = None,
    validation: bool = False,
) -> CurationResult:
    """Rank the run's documents by their value on the chosen targets and write the curated corpus."""
    rule = drop if isinstance(drop, DropRule) else DropRule.parse(drop)
    output_paths(out)  # refuse a bad --out before reading anything
    run = RunDirectory.open(run_dir)
    target_ids = choose_targets(run, targets, validation)
    values = document_values(run.path, target_ids)
    dropped = select_dropped(values, rule)
    info = {
        "rule": asdict(rule),
        "rule_text": rule.describe(),
        "targets": "validation" if not targets else "explicit",
        "target_ids": target_ids,
        "value": "mean over the chosen targets of the document's value (nats per output token; "
                 "positive = lowered the target's loss)",
        "dropped_value_sum": float(dropped["value"].sum()),
    }
    corpus_path, dropped_path, summary_path = write_subset(run.path, dropped, out, info)
    summary = json.loads(summary_path.read_text(encoding="utf-8"))
    return CurationResult(
        corpus_path=corpus_path,
        dropped_path=dropped_path,
        summary_path=summary_path,
        n_documents=summary["n_documents"],
        n_dropped=summary["n_dropped"],
        n_kept=summary["n_kept"],
        tokens_dropped=summary["tokens_dropped"],
        tokens_kept=summary["tokens_kept"],
        target_ids=tuple(target_ids),
        rule=rule.describe(),
        dropped=dropped,
    )


def _write_jsonl(path: Path, documents: pd.DataFrame) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as handle:
        for row in documents.itertuples(index=False):
            record = {"id": row.doc_id, "source": row.source, "metadata": json.loads(row.metadata), "text": row.text}
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")


def _preview(items: Sequence[str], limit: int = 8) -> str:
    more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
    return f"{list(items[:limit])}{more}"
