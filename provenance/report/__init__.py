"""Attribution reports as PDF (reportlab + matplotlib), with a JSON sidecar and a batch summary.

Public API (docs/reports.md)::

    build_report(run_dir, target_id, *, text=None, settings=ReportSettings(), index=None, context=None) -> Report
    write_reports(run_dir, target_ids, out_dir, *, settings=..., index=None, summary=True) -> BatchResult
    open_run(run_dir, settings, *, index=None) -> RunContext   # reuse hashes and index across reports
    all_target_ids(run_dir) -> list[str];  read_target_list(path) -> list[str]

Built only from the run directory (provenance.store) and the evidence layer (provenance.evidence).
Heavy modules (reportlab, matplotlib, the evidence index) load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from provenance.report.settings import ReportSettings

if TYPE_CHECKING:
    from provenance.report.api import (
        BatchResult,
        Report,
        all_target_ids,
        build_report,
        open_run,
        read_target_list,
        write_reports,
    )
    from provenance.report.collect import RunContext

_LAZY = {
    "BatchResult": "provenance.report.api",
    "Report": "provenance.report.api",
    "all_target_ids": "provenance.report.api",
    "build_report": "provenance.report.api",
    "open_run": "provenance.report.api",
    "read_target_list": "provenance.report.api",
    "write_reports": "provenance.report.api",
    "RunContext": "provenance.report.collect",
}

__all__ = ["ReportSettings", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'provenance.report' has no attribute {name!r}")
