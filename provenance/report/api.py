"""The report API used by the CLI (`provenance report`) and the app's "Download PDF report" button.

    report = build_report("attribution_runs/demo", target_id="t1", settings=ReportSettings(top_k=10))
    report.pdf            # bytes, e.g. for st.download_button
    report.write("reports/")   # -> (pdf path, json path)
    batch = write_reports("attribution_runs/demo", all_target_ids("attribution_runs/demo"), "reports/")
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from tqdm import tqdm

from provenance.errors import ReportError
from provenance.report.collect import RunContext, collect
from provenance.report.document import render_report
from provenance.report.fonts import load_fonts
from provenance.report.model import ReportData
from provenance.report.settings import ReportSettings
from provenance.report.sidecar import dumps, file_stem, sidecar
from provenance.report.summary import SummaryEntry, render_summary, summary_json
from provenance.store import atomic
from provenance.store.hashing import sha256_bytes

SUMMARY_STEM = "summary"


@dataclass(frozen=True)
class Report:
    """One rendered report: the PDF bytes, the sidecar, and the data both were made from."""

    data: ReportData
    pdf: bytes
    sidecar: dict[str, Any]
    file_stem: str

    @property
    def pdf_name(self) -> str:
        return f"{self.file_stem}.pdf"

    @property
    def json_name(self) -> str:
        return f"{self.file_stem}.json"

    def sidecar_json(self) -> str:
        return dumps(self.sidecar)

    def write(self, out_dir: str | Path) -> tuple[Path, Path]:
        """Write ``<stem>.pdf`` and ``<stem>.json`` atomically into ``out_dir``."""
        folder = _out_folder(out_dir)
        pdf = atomic.write_bytes(folder / self.pdf_name, self.pdf)
        side = atomic.write_text(folder / self.json_name, self.sidecar_json())
        return pdf, side


@dataclass(frozen=True)
class BatchResult:
    """What `write_reports` wrote, and how long it took."""

    reports: tuple[Path, ...]  # the PDFs, in target order
    sidecars: tuple[Path, ...]
    summary_pdf: Path | None
    summary_json: Path | None
    seconds: float
    timings: dict[str, float] = field(default_factory=dict)  # seconds: open (hashes + index), collect, ...
    workers: int = 1  # processes that laid out the PDFs


def open_run(run_dir: str | Path, settings: ReportSettings = ReportSettings(), *, index: Any = None,
             progress: bool = False, echo: Callable[[str], None] | None = None) -> RunContext:
    """Open a run for reporting once (hashes its files, loads the evidence index); pass the context to
    ``build_report`` for every report of that run (the app can cache it)."""
    return RunContext.open(run_dir, settings.check(), index=index, progress=progress, echo=echo)


def build_report(
    run_dir: str | Path | None = None,
    target_id: str | None = None,
    *,
    text: str | None = None,
    settings: ReportSettings = ReportSettings(),
    index: Any = None,
    context: RunContext | None = None,
) -> Report:
    """Build one report (a registered target, or a free output text) in memory.

    Pass ``context`` (from ``open_run``) to reuse a run's hashes and index across reports; otherwise the
    run is opened here (``index``: an already loaded evidence index to reuse)."""
    settings = settings.resolved()
    if context is None:
        if run_dir is None:
            raise ReportError("pass run_dir (the run directory) or context (from open_run)")
        context = RunContext.open(run_dir, settings, index=index)
    data = collect(context, settings, target_id=target_id, text=text)
    pdf = render_report(data, load_fonts())
    stem = file_stem(data.target.target_id, data.target.text)
    return Report(data=data, pdf=pdf, sidecar=sidecar(data, f"{stem}.pdf", sha256_bytes(pdf)), file_stem=stem)


def write_reports(
    run_dir: str | Path,
    target_ids: list[str],
    out_dir: str | Path,
    *,
    settings: ReportSettings = ReportSettings(),
    index: Any = None,
    summary: bool = True,
    workers: int | None = None,
    progress: bool = True,
    echo: Callable[[str], None] | None = None,
) -> BatchResult:
    """One PDF + JSON per target, then (``summary``) a batch summary PDF + JSON, all in ``out_dir``.

    Every target id is checked before anything is written; one generated time is used for the whole
    batch (so the summary and the reports agree). ``workers``: processes that lay out the PDFs while
    this one gathers the evidence (default: up to 2, one per core; 1 = all in this process). The bytes
    do not depend on it."""
    started = time.perf_counter()
    if not target_ids:
        raise ReportError("no targets to report on: pass --target ID, --targets FILE or --all")
    settings = settings.resolved()
    context = RunContext.open(run_dir, settings, index=index, progress=progress, echo=echo)
    opened = time.perf_counter()
    known = set(context.target_ids())
    unknown = [t for t in target_ids if t not in known]
    if unknown:
        raise ReportError(
            f"{len(unknown)} target id(s) are not registered in {context.run.path}: {unknown[:10]}"
            f"{' ...' if len(unknown) > 10 else ''}; list the registered ones with "
            f"`provenance values --run {context.path_text}`"
        )
    duplicates = sorted({t for t in target_ids if target_ids.count(t) > 1})
    if duplicates:
        raise ReportError(f"target ids listed more than once: {duplicates[:10]}; list each once")
    stems = [file_stem(t) for t in target_ids]
    if len({s.casefold() for s in stems}) != len(stems):
        raise ReportError("two target ids map to the same report file name; rename one of them")
    folder = _out_folder(out_dir)
    fonts = load_fonts()
    if len(target_ids) > 1:
        context.preload_contributions(target_ids)
    entries: list[SummaryEntry] = []
    pdfs: list[Path] = []
    jsons: list[Path] = []
    collect_s = 0.0
    workers = _worker_count(workers, len(target_ids))
    bar = tqdm(total=len(target_ids), desc="reports", unit="report", disable=not progress)

    def finish(data: ReportData, stem: str, pdf: bytes) -> None:
        digest = sha256_bytes(pdf)
        pdfs.append(atomic.write_bytes(folder / f"{stem}.pdf", pdf))
        jsons.append(atomic.write_text(folder / f"{stem}.json", dumps(sidecar(data, f"{stem}.pdf", digest))))
        entries.append(SummaryEntry(data, f"{stem}.pdf", digest, f"{stem}.json"))
        bar.update(1)

    if workers <= 1:
        for target_id, stem in zip(target_ids, stems):
            t0 = time.perf_counter()
            data = collect(context, settings, target_id=target_id)
            collect_s += time.perf_counter() - t0
            finish(data, stem, render_report(data, fonts))
    else:
        # Collect (index, embedder) here while worker processes lay out the PDFs: the two halves overlap.
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                                 initializer=_init_worker) as pool:
            pending = []
            for target_id, stem in zip(target_ids, stems):
                t0 = time.perf_counter()
                data = collect(context, settings, target_id=target_id)
                collect_s += time.perf_counter() - t0
                pending.append((data, stem, pool.submit(_render_in_worker, data)))
            for data, stem, future in pending:
                finish(data, stem, future.result())
    bar.close()
    rendered = time.perf_counter()
    summary_pdf = summary_path = None
    if summary:
        generated = settings.timestamp or ""
        pdf = render_summary(entries, fonts, run_id=context.summary.run_id, run_path=context.path_text,
                             generated=generated, manifest_sha256=context.manifest_sha256)
        summary_pdf = atomic.write_bytes(folder / f"{SUMMARY_STEM}.pdf", pdf)
        body = summary_json(entries, context.summary.run_id, context.path_text, generated,
                            context.manifest_sha256, settings.to_json())
        body["pdf_sha256"] = sha256_bytes(pdf)
        summary_path = atomic.write_text(folder / f"{SUMMARY_STEM}.json", dumps(body))
    finished = time.perf_counter()
    return BatchResult(
        reports=tuple(pdfs),
        sidecars=tuple(jsons),
        summary_pdf=summary_pdf,
        summary_json=summary_path,
        seconds=finished - started,
        timings={"open": round(opened - started, 3), "collect": round(collect_s, 3),
                 "reports": round(rendered - opened, 3), "summary": round(finished - rendered, 3)},
        workers=workers,
    )


def _worker_count(workers: int | None, n_reports: int) -> int:
    if workers is not None:
        if workers < 1:
            raise ReportError(f"--workers must be at least 1 (got {workers})")
        return workers
    if n_reports < 4:
        return 1  # starting a worker process costs more than laying out a few reports
    return min(2, os.cpu_count() or 1)


def _init_worker() -> None:
    load_fonts()


def _render_in_worker(data: ReportData) -> bytes:
    return render_report(data, load_fonts())


def all_target_ids(run_dir: str | Path) -> list[str]:
    """Every registered target of a run, in targets.parquet order."""
    from provenance.store.query import list_targets

    return list_targets(run_dir)["target_id"].astype(str).tolist()


def read_target_list(path: str | Path) -> list[str]:
    """Target ids from a file: one id per line, or JSONL with an ``id`` (or ``target_id``) per line (the
    file given to `provenance attribute --targets`). Blank lines and lines starting with # are skipped."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ReportError(f"cannot read --targets {path}: {exc}") from exc
    ids: list[str] = []
    for number, line in enumerate(lines, 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.startswith("{"):
            try:
                record = json.loads(stripped)
            except json.JSONDecodeError as exc:
                raise ReportError(f"{path}:{number} is not valid JSON ({exc.msg})") from None
            value = record.get("id", record.get("target_id")) if isinstance(record, dict) else None
            if not isinstance(value, str) or not value:
                raise ReportError(f"{path}:{number} has no string \"id\" (or \"target_id\") field")
            ids.append(value)
        else:
            ids.append(stripped)
    if not ids:
        raise ReportError(f"{path} lists no target ids (one per line, or JSONL with an \"id\" field)")
    return ids


def _out_folder(out_dir: str | Path) -> Path:
    folder = Path(out_dir)
    if folder.exists() and not folder.is_dir():
        raise ReportError(f"--out {folder} exists and is not a folder; pass a folder for the reports")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ReportError(f"cannot create the output folder {folder}: {exc}") from exc
    return folder
