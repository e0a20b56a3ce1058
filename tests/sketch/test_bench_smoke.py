"""`python bench/posthoc.py --quick --json` runs end to end and prints one JSON object with the bars' keys."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_posthoc_bench_quick_json():
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "posthoc.py"), "--quick", "--json"],
                         capture_output=True, text=True, timeout=600, cwd=ROOT, check=True)
    lines = [line for line in out.stdout.splitlines() if line.strip()]
    assert len(lines) == 1
    result = json.loads(lines[0])
    for key in ("median_spearman", "median_top10_overlap", "query_latency_s", "overhead_ratio", "sizes"):
        assert key in result
    for key in ("median_spearman", "query_latency_s", "overhead_ratio"):
        assert math.isfinite(result[key])
    assert -1 <= result["median_spearman"] <= 1 and 0 <= result["median_top10_overlap"] <= 1
    assert result["query_latency_s"] > 0 and result["overhead_ratio"] > 0
    assert result["n_targets"] == 2 and len(result["per_target"]) == 2
    assert result["latency"]["stored_rows"] == 2000
