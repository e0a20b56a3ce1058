"""Gather a report's content from the run directory (store) and the evidence layer (evidence.query).

Nothing is recomputed here that those layers own: ranks, values and shares come from values.parquet
(through ``evidence.query``, or ``store.query.top_values`` when the run has no evidence index), the
evidence from ``evidence.query``, the ledger summary from the evidence layer. This module only reads,
selects and hashes. ``RunContext`` holds what every report of one run shares (manifest, corpus, hashes,
the loaded index), so a batch reads and hashes those once.
"""

from __future__ import annotations

import json
import shlex
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from provenance import __version__
from provenance.errors import EvidenceIndexError, ReportError, RunDirectoryError, TargetError
from provenance.evidence.schema import SHARE_DEFINITION, VALUE_DEFINITION, RankedDocument
from provenance.report.excerpts import excerpts_for
from provenance.report.fonts import load_fonts
from provenance.report.model import (
    EvidenceStatus,
    FileHash,
    ReportData,
    ReportRow,
    RunSummary,
    TargetInfo,
    Trajectory,
)
from provenance.report.settings import ReportSettings
from provenance.store.hashing import combined_sha256, sha256_file, target_sha256
from provenance.store.run_dir import RunDirectory
from provenance.store.tables import read_table

# Files whose hashes the chain-of-custody section lists: the inputs, the model and the values.
CUSTODY_FILES = (
    "corpus.parquet",
    "chunks.parquet",
    "targets.parquet",
    "tokenizer/tokenizer.json",
    "model/config.json",
    "model/model.safetensors",
    "contributions.parquet",
    "values.parquet",
    "ledger.parquet",
    "train_log.parquet",
)


@dataclass
class RunContext:
    """What every report of one run shares; open once per batch (or once per app session)."""

    run: RunDirectory
    path_text: str
    manifest: dict[str, Any]
    manifest_sha256: str
    corpus: pd.DataFrame  # indexed by doc_id: source, sha256, text
    targets: pd.DataFrame
    summary: RunSummary
    custody: tuple[FileHash, ...]
    index: Any  # provenance.evidence.index.EvidenceIndex | None
    evidence: EvidenceStatus
    step_values: pd.Series | None = None  # (target_id, doc_id, step) -> value, when preloaded for a batch

    @classmethod
    def open(
        cls,
        run_dir: str | Path,
        settings: ReportSettings = ReportSettings(),
        *,
        index: Any = None,
        progress: bool = False,
        echo: Callable[[str], None] | None = None,
    ) -> RunContext:
        """Open the run (refusing unfinished or newer-format runs), hash its files, load the evidence index.

        A missing or stale index does not stop the report: the evidence columns say why they are empty
        and how to fill them (or, with ``settings.build_index``, the index is built first)."""
        run = RunDirectory.open(run_dir)
        manifest = run.read_manifest()
        corpus = read_table(run.corpus_path, "corpus").set_index("doc_id", drop=False)
        targets = read_table(run.targets_path, "targets") if run.targets_path.is_file() else None
        if targets is None:
            raise RunDirectoryError(f"{run.targets_path} is missing; the run has no targets to report on")
        recorded = manifest.get("files") or {}
        custody = tuple(
            FileHash(rel, recorded.get(rel), sha256_file(run.path / rel) if (run.path / rel).is_file() else None)
            for rel in CUSTODY_FILES
            if rel in recorded or (run.path / rel).is_file()
        )
        summary = _run_summary(run, str(run_dir), manifest, corpus)
        if index is None:
            index, evidence = _load_evidence(run, settings, progress, echo)
        else:
            evidence = _evidence_status(index)
        return cls(
            run=run,
            path_text=str(run_dir),
            manifest=manifest,
            manifest_sha256=sha256_file(run.manifest_path),
            corpus=corpus,
            targets=targets,
            summary=summary,
            custody=custody,
            index=index,
            evidence=evidence,
        )

    def preload_contributions(self, target_ids: list[str]) -> None:
        """Read contributions.parquet once for a batch (per-target reads decode the whole file each time):
        the per-step value of every (target, document), summed over chunks, in the recorded order."""
        path = self.run.contributions_path
        if not path.is_file() or not target_ids:
            return
        column = _value_column(self.summary.value_order)
        frame = _read_rows(path, ["step", "doc_id", "target_id", column], [("target_id", "in", list(target_ids))])
        self.step_values = frame.groupby(["target_id", "doc_id", "step"], sort=True)[column].sum()

    def target_ids(self) -> list[str]:
        """Every registered target, in targets.parquet order."""
        return self.targets["target_id"].astype(str).tolist()


def collect(context: RunContext, settings: ReportSettings, *, target_id: str | None = None,
            text: str | None = None) -> ReportData:
    """The content of one report: a registered target (``target_id``) or a free output text (``text``)."""
    if (target_id is None) == (text is None):
        raise ReportError("pass exactly one of a target id (--target) or an output text (--text-file)")
    settings = settings.resolved()
    target = _target_info(context, target_id, text)
    notes: list[str] = []
    if target.sha256 is not None and target.sha256 != target.sha256_now:
        notes.append(
            f"targets.parquet records sha256 {target.sha256} for this target, but its prompt and text hash to "
            f"{target.sha256_now}: the targets table was edited; run `provenance verify --run {context.path_text}`"
        )
    if context.index is not None:
        from provenance.evidence.answer import query

        result = query(context.run.path, text=text, target_id=target_id, top_k=settings.top_k,
                       index=context.index, align_top=settings.align_top)
        rows = tuple(_row(context, r) for r in result.rows)
        against = tuple(_row(context, r) for r in result.worked_against)
        query_text, attributed, ledger = result.text, result.attributed, result.ledger
        notes.extend(result.notes)
        attribute_command = result.attribute_command
        if target.target_id is None and result.target_id is not None:
            target = _target_info(context, result.target_id, None)  # the text is a registered target
    else:
        if target.target_id is None:
            raise ReportError(
                f"a free text can only be reported with evidence, and {context.run.path} has no usable evidence "
                f"index ({context.evidence.message}); build it with `provenance index --run {context.path_text}`"
            )
        rows, against, attributed = _rows_without_index(context, target.target_id, settings.top_k)
        query_text = target.text
        ledger = _ledger(context, target.target_id) if attributed else None
        attribute_command = None
        if not attributed:
            notes.append(f"target {target.target_id!r} is registered but has no values yet")
    counts = _value_counts(context, target.target_id) if attributed else (0, 0, 0)
    trajectories = (
        _trajectories(context, target.target_id, rows[: settings.chart_documents]) if attributed else ()
    )
    documents = {r.doc_id: str(context.corpus.at[r.doc_id, "text"]) for r in rows if r.doc_id in context.corpus.index}
    excerpts = excerpts_for(rows, query_text, documents, settings.excerpts) if context.index is not None else ()
    if attributed and not context.run.contributions_path.is_file():
        notes.append("contributions.parquet is missing: the value-over-training chart is left out")
    return ReportData(
        settings=settings,
        tool_version=__version__,
        run=context.summary,
        target=target,
        query_text=query_text,
        attributed=attributed,
        rows=rows,
        worked_against=against,
        n_positive=counts[0],
        n_negative=counts[1],
        n_zero=counts[2],
        ledger=ledger,
        trajectories=trajectories,
        step_range=_step_range(context, target.target_id) if attributed else None,
        excerpts=excerpts,
        evidence=context.evidence,
        custody=context.custody,
        manifest_sha256=context.manifest_sha256,
        reproduce_command=reproduce_command(context.path_text, target.target_id, settings),
        verify_command=f"provenance verify --run {shlex.quote(context.path_text)}",
        attribute_command=attribute_command,
        notes=tuple(notes),
        share_definition=SHARE_DEFINITION,
        value_definition=VALUE_DEFINITION,
        fonts=dict(sorted(load_fonts().files.items())),
    )


def reproduce_command(run_path: str, target_id: str | None, settings: ReportSettings) -> str:
    """The command that rebuilds this report byte for byte (the output folder does not change the bytes)."""
    parts = ["provenance", "report", "--run", run_path]
    parts += ["--target", target_id] if target_id is not None else ["--text-file", "OUTPUT.txt"]
    parts += ["--top-k", str(settings.top_k), "--excerpts", str(settings.excerpts),
              "--chart-documents", str(settings.chart_documents), "--align-top", str(settings.align_top),
              "--timestamp", settings.timestamp or "NOW"]
    return " ".join(shlex.quote(p) for p in parts)


# -- run and target ---------------------------------------------------------------------------------------
def _run_summary(run: RunDirectory, path_text: str, manifest: dict, corpus: pd.DataFrame) -> RunSummary:
    config = manifest.get("config") or {}
    model_cfg = config.get("model") or {}
    corpus_meta = manifest.get("corpus") or {}
    tokenizer = manifest.get("tokenizer") or {}
    values_meta = manifest.get("values") or {}
    model_meta = manifest.get("model") or {}
    return RunSummary(
        run_id=str(manifest.get("run_id") or run.run_id),
        path=path_text,
        status=str(manifest.get("status")),
        created=manifest.get("created"),
        format_version=int(manifest.get("format_version", 0)),
        architecture=model_meta.get("architecture"),
        model_shape={k: model_cfg[k] for k in ("n_layer", "n_head", "n_embd", "context_length") if k in model_cfg},
        n_parameters=_count_parameters(run.model_dir / "model.safetensors"),
        model_sha256=dict(sorted((model_meta.get("sha256") or {}).items())),
        n_documents=len(corpus),
        n_chunks=corpus_meta.get("n_chunks"),
        corpus_sha256=corpus_meta.get("sha256"),
        corpus_sha256_now=combined_sha256(corpus["sha256"].astype(str).tolist()),
        tokenizer_sha256=tokenizer.get("sha256") or None,
        vocab_size=tokenizer.get("vocab_size"),
        value_order=values_meta.get("order"),
        value_sign=values_meta.get("sign"),
        value_unit=values_meta.get("unit"),
        seed=manifest.get("seed"),
        versions=dict(sorted((manifest.get("versions") or {}).items())),
        config=config,
    )


def _count_parameters(path: Path) -> int | None:
    """Elements of the tensors in a safetensors file, read from its JSON header (no weights loaded)."""
    if not path.is_file():
        return None
    try:
        with open(path, "rb") as handle:
            (size,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(size))
    except (OSError, struct.error, ValueError):
        return None
    total = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        count = 1
        for dim in entry.get("shape", []):
            count *= int(dim)
        total += count
    return total


def _target_info(context: RunContext, target_id: str | None, text: str | None) -> TargetInfo:
    if target_id is None:
        return TargetInfo(None, "", text or "", None, target_sha256("", text or ""), None)
    match = context.targets[context.targets["target_id"] == target_id]
    if match.empty:
        known = context.target_ids()
        raise TargetError(
            f"target {target_id!r} is not registered in {context.run.path} (registered: {known[:10]}"
            f"{' ...' if len(known) > 10 else ''}); list them with `provenance values --run {context.path_text}`"
        )
    row = match.iloc[0]
    prompt, body = str(row["prompt"]), str(row["text"])
    return TargetInfo(target_id, prompt, body, str(row["sha256"]), target_sha256(prompt, body), str(row["registered"]))


# -- evidence index -----------------------------------------------------------------------------------
def _load_evidence(run: RunDirectory, settings: ReportSettings, progress: bool,
                   echo: Callable[[str], None] | None) -> tuple[Any, EvidenceStatus]:
    from provenance.evidence.index import build_index, load_index

    try:
        index = load_index(run.path)
    except (EvidenceIndexError, RunDirectoryError) as exc:
        if not settings.build_index:
            return None, EvidenceStatus(
                available=False,
                message=f"no evidence: {exc}. Evidence labels, similarities and excerpts are left out of this "
                "report; build the index (or pass --build-index) and re-run the report to include them.",
            )
        if echo:
            echo(f"building the evidence index of {run.path} ({exc})")
        build_index(run.path, progress=progress, echo=echo)
        index = load_index(run.path)
    return index, _evidence_status(index)


def _evidence_status(index: Any) -> EvidenceStatus:
    info = index.info
    return EvidenceStatus(
        available=True,
        message=f"evidence from the index in {index.run.path / 'evidence'} ({info.get('index_type')}, "
        f"{info.get('n_passages')} passages, embedder {info['embedder']['name']})",
        embedder=info["embedder"]["name"],
        embedder_sha256=info["embedder"]["sha256"],
        index_corpus_sha256=info["corpus"]["sha256"],
        thresholds_sha256=info.get("thresholds_sha256"),
        index_type=info.get("index_type"),
    )


# -- rows ---------------------------------------------------------------------------------------------
def _doc_sha(context: RunContext, doc_id: str) -> str | None:
    return str(context.corpus.at[doc_id, "sha256"]) if doc_id in context.corpus.index else None


def _row(context: RunContext, ranked: RankedDocument) -> ReportRow:
    return ReportRow(
        rank=ranked.rank,
        doc_id=ranked.doc_id,
        source=ranked.source,
        value=ranked.value,
        share=ranked.value_share,
        cumulative_share=ranked.cumulative_share,
        doc_sha256=_doc_sha(context, ranked.doc_id),
        evidence=ranked.evidence,
    )


def _rows_without_index(
    context: RunContext, target_id: str, top_k: int
) -> tuple[tuple[ReportRow, ...], tuple[ReportRow, ...], bool]:
    """The ranking from values.parquet (store.query.top_values) when there is no evidence to add."""
    from provenance.store.query import top_values

    try:
        frame = top_values(context.run.path, target_id, None)
    except TargetError:
        return (), (), False  # registered, not attributed yet
    positive = frame[frame["value"] > 0].head(top_k)
    negative = frame[frame["value"] < 0].sort_values(["value", "doc_id"], kind="mergesort").head(top_k)

    def make(row: Any, against: bool) -> ReportRow:
        return ReportRow(
            rank=int(row.rank), doc_id=str(row.doc_id), source=str(row.source), value=float(row.value),
            share=0.0 if against else float(row.share),
            cumulative_share=None if against else float(row.cumulative_share),
            doc_sha256=_doc_sha(context, str(row.doc_id)), evidence=None,
        )

    rows = tuple(make(r, False) for r in positive.itertuples(index=False))
    against = tuple(make(r, True) for r in negative.itertuples(index=False))
    return rows, against, True


def _ledger(context: RunContext, target_id: str):
    from provenance.evidence.answer import ledger_summary  # the evidence layer owns this arithmetic

    return ledger_summary(context.run, target_id)


def _read_target_rows(path: Path, target_id: str, columns: list[str], extra: list | None = None) -> pd.DataFrame:
    return _read_rows(path, columns, [("target_id", "=", target_id)] + (extra or []))


def _read_rows(path: Path, columns: list[str], filters: list) -> pd.DataFrame:
    try:
        return pq.read_table(path, columns=columns, filters=filters).to_pandas()
    except (pa.ArrowInvalid, OSError) as exc:
        raise RunDirectoryError(f"{path} is not a readable parquet file ({exc}); the run is corrupt") from exc


def _value_counts(context: RunContext, target_id: str | None) -> tuple[int, int, int]:
    """How many documents have a positive, a negative and a zero value for the target."""
    if target_id is None or not context.run.values_path.is_file():
        return 0, 0, 0
    values = _read_target_rows(context.run.values_path, target_id, ["value"])["value"]
    return int((values > 0).sum()), int((values < 0).sum()), int((values == 0).sum())


def _step_range(context: RunContext, target_id: str | None) -> tuple[int, int] | None:
    """First and last step the ledger recorded for the target (the x range of value over training)."""
    if target_id is None or not context.run.ledger_path.is_file():
        return None
    steps = _read_target_rows(context.run.ledger_path, target_id, ["step"])["step"]
    return (int(steps.min()), int(steps.max())) if len(steps) else None


def _value_column(order: int | None) -> str:
    return "value_second_order" if order == 2 else "value_first_order"


def _trajectories(context: RunContext, target_id: str | None, rows: tuple[ReportRow, ...]) -> tuple[Trajectory, ...]:
    """Each top document's value accumulated step by step (summed over its chunks), from contributions.parquet."""
    path = context.run.contributions_path
    if target_id is None or not rows or not path.is_file():
        return ()
    doc_ids = [r.doc_id for r in rows]
    if context.step_values is not None:
        per_target = context.step_values
        if target_id not in per_target.index.get_level_values(0):
            per_step = per_target.iloc[:0].droplevel(0)
        else:
            per_step = per_target.loc[target_id]
    else:
        column = _value_column(context.summary.value_order)
        frame = _read_target_rows(path, target_id, ["step", "doc_id", column], [("doc_id", "in", doc_ids)])
        per_step = frame.groupby(["doc_id", "step"], sort=True)[column].sum()
    present = set(per_step.index.get_level_values(0))
    out = []
    for row in rows:
        if row.doc_id not in present:
            out.append(Trajectory(row.rank, row.doc_id, (), ()))
            continue
        series = per_step.loc[row.doc_id].sort_index().cumsum()
        out.append(Trajectory(row.rank, row.doc_id, tuple(int(s) for s in series.index),
                              tuple(float(v) for v in series.to_numpy())))
    return tuple(out)

