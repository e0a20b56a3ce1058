"""Smoke test of bench/engine_parts.py --quick: one JSON line with every piece of valuing a matmul weight, timed
for each of the model's matmul weights, and a valuing total that is the pieces' own sum."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "engine_parts.py"


def test_quick_json_lists_every_piece_and_sums_them():
    out = subprocess.run([sys.executable, str(BENCH), "--quick", "--json", "--targets", "2", "--reps", "1"],
                         capture_output=True, text=True, check=True, timeout=300)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    pieces = result["pieces_seconds"]
    assert set(pieces) == {"weight_grad_mm", "blocks_bmm", "sum_rows", "target_grads", "directions", "dots"}
    assert all(seconds > 0 for seconds in pieces.values())
    assert result["sizes"]["targets"] == 2 and result["sizes"]["size"] == "quick"
    # quick model: 2 layers x 4 Conv1D weights (c_attn, attn.c_proj, c_fc, mlp.c_proj) + the tied head
    assert sum(entry["weights"] for entry in result["per_shape_seconds"].values()) == 2 * 4 + 1
    expected = (pieces["blocks_bmm"] + pieces["sum_rows"] - pieces["weight_grad_mm"] + pieces["target_grads"]
                + pieces["directions"] + pieces["dots"])
    assert abs(result["valuing_seconds"] - expected) <= 5e-4  # each figure rounded to 0.1 ms
    assert result["plain_step_seconds"] > 0
    assert abs(result["valuing_x_plain"] - result["valuing_seconds"] / result["plain_step_seconds"]) < 0.01


def test_targets_below_one_is_rejected():
    out = subprocess.run([sys.executable, str(BENCH), "--quick", "--targets", "0"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 2 and "--targets must be >= 1" in out.stderr
