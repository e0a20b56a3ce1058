"""Session fixtures: one real tiny run (trained by the pipeline) with its evidence index, and one batch of
reports built from it at a fixed timestamp (tests read them; copy before changing anything)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from .fixture_runs import train_report_run  # noqa: E402

TIMESTAMP = "2026-01-31T12:00:00Z"


@pytest.fixture(scope="session")
def report_run(tmp_path_factory) -> Path:
    """A completed tiny run with an evidence index (read-only)."""
    from provenance.evidence.index import build_index

    base = tmp_path_factory.mktemp("report-runs")
    run = train_report_run(base / "rep", base / "corpus" / "corpus.jsonl")
    build_index(run, progress=False)
    return run


@pytest.fixture(scope="session")
def loaded_index(report_run):
    from provenance.evidence.index import load_index

    return load_index(report_run)


@pytest.fixture(scope="session")
def batch(report_run, loaded_index, tmp_path_factory):
    """Reports for every target of the run, plus the summary, at a fixed timestamp."""
    from provenance.report import ReportSettings, all_target_ids, write_reports

    out = tmp_path_factory.mktemp("reports")
    return write_reports(report_run, all_target_ids(report_run), out,
                         settings=ReportSettings(top_k=10, timestamp=TIMESTAMP), index=loaded_index, progress=False)


@pytest.fixture
def run_copy(report_run, tmp_path) -> Path:
    dest = tmp_path / report_run.name
    shutil.copytree(report_run, dest)
    return dest


def pdftotext(path: Path, layout: bool = True) -> str:
    args = ["pdftotext", "-enc", "UTF-8"] + (["-layout"] if layout else []) + [str(path), "-"]
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout


def page_count(path: Path) -> int:
    info = subprocess.run(["pdfinfo", str(path)], check=True, capture_output=True, text=True).stdout
    return int(next(line.split()[-1] for line in info.splitlines() if line.startswith("Pages:")))
