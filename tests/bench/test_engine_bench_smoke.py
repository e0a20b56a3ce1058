"""Smoke test of bench/engine.py --quick: it runs, prints one JSON line with the fields issue 3 names, and the
peak reported with --memory-repeats, and the time ratio reported with --time-repeats, are the medians of the
per-process samples it lists."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "engine.py"


def test_quick_json_reports_the_issue_fields_and_median_peaks():
    out = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--json", "--reps", "1", "--no-torch-func", "--modes",
         "second_order", "--memory-steps", "2", "--memory-repeats", "2", "--live-memory"],
        capture_output=True, text=True, check=True, timeout=600,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    for key in ("first_order_ratio", "second_order_ratio", "targets16_ratio", "peak_memory_ratio",
                "torch_func_ratio", "sizes"):
        assert key in result
    assert result["second_order_ratio"] > 0
    assert result["sizes"]["size"] == "quick" and result["sizes"]["memory_repeats"] == 2
    samples = result["peak_memory_samples_mb"]
    for kind, reported in (("peak", result["peak_memory_mb"]), ("live", result["live_peak_memory_mb"])):
        assert set(samples[kind]) == {"plain", "second_order"}
        for mode, values in samples[kind].items():
            assert len(values) == 2 and all(v > 0 for v in values)
            assert abs(reported[mode] - statistics.median(values)) <= 0.1  # both rounded to 0.1 MB
    ratio = result["peak_memory_mb"]["second_order"] / result["peak_memory_mb"]["plain"]
    assert abs(result["peak_memory_ratio_second_order"] - ratio) < 1e-3


def test_time_repeats_report_the_median_of_per_process_ratios():
    out = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--json", "--reps", "2", "--no-torch-func", "--no-memory",
         "--modes", "first_order", "--time-repeats", "3"],
        capture_output=True, text=True, check=True, timeout=600,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    samples = result["time_ratio_samples"]
    assert set(samples) == {"first_order"} and len(samples["first_order"]) == 3
    assert all(r > 0 for r in samples["first_order"])
    assert abs(result["first_order_ratio"] - statistics.median(samples["first_order"])) <= 1e-4  # both rounded
    assert result["sizes"]["time_repeats"] == 3
    assert result["routes_first_order"]  # the children's routes reach the report
    assert result["time_ratios_after_other"]["first_order"] > 0  # the untimed-for-ratio first steps, reported


def test_quick_defaults_to_the_issue_configurations_under_a_minute():
    """--quick alone: the issue's configurations (plain, first and second order, 16 targets, torch.func), their
    peaks without the live-allocator diagnostic (bar 3: under a minute on the CI machine; ~40 s here)."""
    out = subprocess.run([sys.executable, str(BENCH), "--quick", "--json"], capture_output=True, text=True,
                         check=True, timeout=600)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert set(result["step_seconds"]) == {"plain", "first_order", "second_order", "targets16", "torch_func"}
    assert set(result["peak_memory_mb"]) == set(result["step_seconds"]) and result["live_peak_memory_mb"] == {}
    assert result["torch_func_ratio"] > 0 and result["peak_memory_ratio"] > 0


def test_time_repeats_below_one_is_rejected_before_any_step():
    out = subprocess.run([sys.executable, str(BENCH), "--quick", "--time-repeats", "0"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "--time-repeats must be >= 1" in out.stderr
