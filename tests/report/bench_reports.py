"""Benchmark: a batch of 50 attribution reports (PDF + JSON each, plus the summary) on a demo-size run.

    python -m tests.report.bench_reports [--targets 50] [--work DIR] [--json]

Builds the synthetic run and its evidence index once (in --work, reused on later calls; not timed),
then times `write_reports` end to end in a fresh process: importing, opening the run (hashes, loading
the index and the embedder), every report, the summary. Prints a table, or one JSON line with --json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

LIMIT_SECONDS = 60.0


def prepare(work: Path, n_targets: int) -> Path:
    from provenance.evidence.index import build_index

    from tests.report.synthetic_run import write_synthetic_run

    run = work / f"synthetic-{n_targets}"
    if not (run / "manifest.json").is_file():
        write_synthetic_run(run, n_targets=n_targets)
    build_index(run, progress=False)  # up to date after the first call
    return run


def measure(run: Path, out: Path, workers: int | None) -> dict:
    """Time one batch in this process (call it in a fresh process: the embedder load counts)."""
    started = time.perf_counter()
    from provenance.report import ReportSettings, all_target_ids, write_reports

    cpu = time.process_time()
    result = write_reports(run, all_target_ids(run), out, settings=ReportSettings(timestamp="2026-01-31T12:00:00Z"),
                           workers=workers, progress=False)
    wall = time.perf_counter() - started
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    sizes = [p.stat().st_size for p in result.reports]
    return {
        "reports": len(result.reports),
        "workers": result.workers,
        "seconds": round(wall, 2),
        "cpu_seconds_main": round(time.process_time() - cpu, 2),
        "cpu_seconds_workers": round(children.ru_utime + children.ru_stime, 2),
        "open_seconds": result.timings["open"],
        "collect_seconds": result.timings["collect"],
        "reports_seconds": result.timings["reports"],
        "summary_seconds": result.timings["summary"],
        "mean_pdf_kb": round(sum(sizes) / len(sizes) / 1024, 1),
        "summary_kb": round(result.summary_pdf.stat().st_size / 1024, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "load_average": round(os.getloadavg()[0], 2),
        "limit_seconds": LIMIT_SECONDS,
    }


def measure_in_fresh_process(run: Path, workers: int | None = None) -> dict:
    """``measure`` in a new interpreter, so imports and the embedder load are part of the time."""
    command = [sys.executable, "-m", "tests.report.bench_reports", "--measure", str(run)]
    if workers is not None:
        command += ["--workers", str(workers)]
    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")])))
    child = subprocess.run(command, check=True, capture_output=True, text=True, cwd=root, env=env)
    return json.loads(child.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", type=int, default=50)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "provenance-report-bench")
    parser.add_argument("--workers", type=int, default=None, help="processes laying out PDFs (default: auto)")
    parser.add_argument("--json", action="store_true", help="print exactly one JSON line")
    parser.add_argument("--measure", type=Path, default=None, help=argparse.SUPPRESS)  # internal: child process
    args = parser.parse_args(argv)
    if args.measure is not None:
        with tempfile.TemporaryDirectory() as out:
            print(json.dumps(measure(args.measure, Path(out), args.workers)))
        return 0
    run = prepare(args.work, args.targets)
    row = measure_in_fresh_process(run, args.workers)
    if args.json:
        print(json.dumps(row))
    else:
        width = max(len(k) for k in row)
        print(f"batch of {row['reports']} reports on {run} (1008 documents, 300 steps)")
        for key, value in row.items():
            print(f"  {key:<{width}}  {value}")
        print("  OK" if row["seconds"] <= LIMIT_SECONDS else f"  SLOWER than {LIMIT_SECONDS:.0f} s")
    return 0 if row["seconds"] <= LIMIT_SECONDS else 1


if __name__ == "__main__":
    sys.exit(main())
