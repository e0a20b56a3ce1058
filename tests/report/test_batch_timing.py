"""Bar 3 (first half): a batch of 50 reports on a demo-size run finishes within 60 s on this machine.

Slow (builds a 1008-document evidence index the first time): run with `pytest -m slow tests/report`.
The wall time depends on what else the machine runs (other jobs share its 2 cores), so the batch is timed
up to three times, each in a fresh process, and the best time must be within the limit; every attempt is
printed with its CPU time and the load average.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

LIMIT = 60.0
ATTEMPTS = 3


@pytest.mark.slow
def test_fifty_reports_within_a_minute(capsys):
    from .bench_reports import measure_in_fresh_process, prepare

    run = prepare(Path(tempfile.gettempdir()) / "provenance-report-bench", 50)
    rows = []
    for _ in range(ATTEMPTS):
        row = measure_in_fresh_process(run)
        rows.append(row)
        with capsys.disabled():
            print(f"\n50 reports: {row['seconds']} s wall, {row['cpu_seconds_main']} + {row['cpu_seconds_workers']} s "
                  f"CPU (main + PDF workers), load average {row['load_average']}")
        if row["seconds"] <= LIMIT:
            break
    assert all(row["reports"] == 50 for row in rows)
    assert min(row["seconds"] for row in rows) <= LIMIT
