"""CLI command `report` (a thin shell; provenance/cli.py calls ``register(app)``)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

DEFAULT_OUT = Path("reports")


def register(app: typer.Typer) -> None:
    """Add `report` to the provenance command line."""
    app.command("report")(report)


def report(
    run: str = typer.Option(..., "--run", help="Run directory (path, or an id under ./attribution_runs/)."),
    target: Optional[str] = typer.Option(None, "--target", help="One registered target id."),
    all_targets: bool = typer.Option(False, "--all", help="Every registered target of the run (+ a batch summary)."),
    targets: Optional[Path] = typer.Option(
        None, "--targets", help="File of target ids: one per line, or the JSONL given to `attribute` (+ a summary)."
    ),
    text_file: Optional[Path] = typer.Option(
        None, "--text-file", help="An output text that is not a registered target (evidence only, no values)."
    ),
    top_k: int = typer.Option(20, "--top-k", min=1, help="Documents in the ranked table."),
    out: Path = typer.Option(DEFAULT_OUT, "--out", help="Folder for the PDFs and JSON sidecars."),
    timestamp: Optional[str] = typer.Option(
        None, "--timestamp", help="'Generated' time, ISO-8601 (e.g. 2026-01-31T12:00:00Z); fix it for identical bytes."
    ),
    excerpts: int = typer.Option(5, "--excerpts", min=0, help="Top documents shown with evidence side by side."),
    chart_documents: int = typer.Option(5, "--chart-documents", min=0, help="Documents drawn in value over training."),
    align_top: int = typer.Option(3, "--align-top", min=0, help="Top rows aligned sentence by sentence."),
    build_index: bool = typer.Option(
        False, "--build-index", help="Build the evidence index first if it is missing (else report without evidence)."
    ),
    summary: bool = typer.Option(True, "--summary/--no-summary", help="Write summary.pdf/.json for --all/--targets."),
    workers: Optional[int] = typer.Option(
        None, "--workers", min=1,
        help="Processes laying out PDFs (default: up to 2 when there are 4+ reports); the bytes do not change.",
    ),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
) -> None:
    """PDF attribution reports (one per output, JSON sidecar each, batch summary) built from a run."""
    from provenance.cli import domain_errors, resolve_run
    from provenance.errors import ReportError
    from provenance.report.api import all_target_ids, build_report, read_target_list, write_reports
    from provenance.report.settings import ReportSettings

    chosen = [name for name, used in (("--target", target is not None), ("--all", all_targets),
                                      ("--targets", targets is not None), ("--text-file", text_file is not None)) if used]
    path = resolve_run(run)
    with domain_errors():
        if len(chosen) != 1:
            raise ReportError(
                "pass exactly one of --target ID, --all, --targets FILE or --text-file FILE"
                + (f" (got {', '.join(chosen)})" if chosen else "")
            )
        settings = ReportSettings(top_k=top_k, timestamp=timestamp, excerpts=excerpts, chart_documents=chart_documents,
                                  align_top=align_top, build_index=build_index).resolved()
        if text_file is not None:
            try:
                text = text_file.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise ReportError(f"cannot read --text-file {text_file}: {exc}") from exc
            built = build_report(path, text=text, settings=settings)
            pdf, side = built.write(out)
            typer.echo(f"wrote {pdf} and {side}")
            return
        ids = [target] if target is not None else (all_target_ids(path) if all_targets else read_target_list(targets))
        result = write_reports(path, ids, out, settings=settings, summary=summary and target is None,
                               workers=workers, progress=not quiet, echo=None if quiet else typer.echo)
    timings = ", ".join(f"{k} {v:.1f} s" for k, v in result.timings.items())
    extra = f" and {result.summary_pdf.name}" if result.summary_pdf else ""
    typer.echo(f"wrote {len(result.reports)} report(s) (PDF + JSON){extra} to {out} in {result.seconds:.1f} s ({timings})")
