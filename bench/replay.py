"""Wall time of replaying a recorded run with new targets: 1 worker (in process) vs 2 segment workers.

    nice -n 10 python bench/replay.py          # a run whose sequential replay takes about a minute or two
    python bench/replay.py --quick             # a small run, for a smoke check (start-up dominates)
    python bench/replay.py --json              # one JSON line: speedup_2_workers and the sizes used

The run is trained once (not timed) on one CPU thread: a worker must replay with the recorded thread
count to reproduce the losses bit for bit, so 2 workers of 1 thread is what a 2-core machine can run
without oversubscription. Each measurement is one `attribute()` call in a fresh Python process on a fresh
copy of the run, timed inside that process from the call to its return: the 2-worker time includes
starting the worker processes (one forkserver import of torch/transformers, then forks). The two
settings alternate (1, 2, 1, 2, ...) so both see the same machine load; the medians are reported.

On a busy Linux machine with autogroup scheduling (kernel.sched_autogroup_enabled = 1, recorded in the
output), all processes of one terminal session share one CPU share: 2 workers then get no more CPU than
1 while other sessions keep the cores busy, and the speed-up measured here drops to about 1 minus the
start-up; on idle cores it is bounded by T / (start-up + T/2) (docs/distributed.md).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SIZES = {
    "full": dict(n_layer=2, n_head=4, n_embd=128, context_length=64, batch_size=16, steps=300,
                 checkpoint_every=50, n_docs=400, vocab=1024, rounds=2),
    "quick": dict(n_layer=1, n_head=2, n_embd=32, context_length=32, batch_size=4, steps=24,
                  checkpoint_every=6, n_docs=40, vocab=300, rounds=1),
}
WORDS = ("river stone tree light dark king queen ship sea wind fire water earth sky moon sun bread salt road "
         "hill song bird field gold iron door north south rain snow cloud star night day bell horse").split()
TARGETS = [("late-1", "the king", " river stone tree light"), ("late-2", "", "ship sea wind fire")]

CHILD = """
import sys, time, json
from provenance.train import TargetSpec, attribute
def main():
    targets = [TargetSpec(*t) for t in json.loads(sys.argv[3])]
    started = time.perf_counter()
    attribute(sys.argv[1], targets, workers=int(sys.argv[2]), progress=False)
    print(json.dumps({"seconds": time.perf_counter() - started}))
if __name__ == "__main__":
    main()
"""


def write_corpus(folder: Path, n_docs: int, seed: int = 0) -> Path:
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n_docs):
        text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(30, 200)))
        (folder / f"doc{i:04d}.txt").write_text(text + ".\n", encoding="utf-8")
    return folder


def train_run(root: Path, size: dict) -> Path:
    from provenance.config import ModelConfig, RunConfig, TrainConfig
    from provenance.train import train

    config = RunConfig(
        model=ModelConfig(n_layer=size["n_layer"], n_head=size["n_head"], n_embd=size["n_embd"],
                          context_length=size["context_length"]),
        train=TrainConfig(steps=size["steps"], batch_size=size["batch_size"], micro_batch_size=size["batch_size"],
                          warmup_steps=min(20, size["steps"] // 4), checkpoint_every=size["checkpoint_every"],
                          tokenizer_vocab_size=size["vocab"]),
    ).check()
    run = root / "run"
    train(write_corpus(root / "corpus", size["n_docs"]), run, config, threads=1, progress=False)
    return run


def time_attribute(run: Path, workers: int, scratch: Path) -> float:
    copy = scratch / f"copy-{workers}"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(run, copy)
    try:
        done = subprocess.run([sys.executable, "-c", CHILD, str(copy), str(workers), json.dumps(TARGETS)],
                              capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise SystemExit(f"attribute with {workers} worker(s) failed:\n{done.stderr[-2000:]}")
        return float(json.loads(done.stdout.strip().splitlines()[-1])["seconds"])
    finally:
        shutil.rmtree(copy, ignore_errors=True)


def measure(size_name: str, rounds: int | None = None) -> dict:
    import pandas as pd

    from provenance.train.segments import plan_blocks
    from provenance.store.run_dir import RunDirectory

    size = SIZES[size_name]
    rounds = rounds or size["rounds"]
    scratch = Path(tempfile.mkdtemp(prefix="bench-replay-"))
    try:
        started = time.perf_counter()
        run = train_run(scratch, size)
        train_seconds = time.perf_counter() - started
        n_chunks = len(pd.read_parquet(run / "chunks.parquet"))
        checkpoints = RunDirectory(run).checkpoint_steps()
        blocks = plan_blocks(checkpoints, size["steps"], 2)
        load_before = os.getloadavg()[0]
        one, two = [], []
        for _ in range(rounds):
            one.append(time_attribute(run, 1, scratch))
            two.append(time_attribute(run, 2, scratch))
        load_after = os.getloadavg()[0]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    t1, t2 = statistics.median(one), statistics.median(two)
    return {
        "bench": "replay",
        "size": size_name,
        "speedup_2_workers": t1 / t2,
        "seconds_1_worker": t1,
        "seconds_2_workers": t2,
        "seconds_1_worker_all": one,
        "seconds_2_workers_all": two,
        "rounds": rounds,
        "train_seconds": train_seconds,
        "model": {k: size[k] for k in ("n_layer", "n_head", "n_embd", "context_length")},
        "steps": size["steps"],
        "batch_size": size["batch_size"],
        "checkpoints": checkpoints,
        "blocks_2_workers": [[b.first_step, b.last_step] for b in blocks],
        "n_documents": size["n_docs"],
        "n_chunks": n_chunks,
        "n_new_targets": len(TARGETS),
        "recorded_threads": 1,
        "cpu_count": os.cpu_count(),
        "sched_autogroup_enabled": _autogroup(),
        "load_average_before_after": [load_before, load_after],
    }


def _autogroup() -> int | None:
    try:
        return int(Path("/proc/sys/kernel/sched_autogroup_enabled").read_text().strip())
    except (OSError, ValueError):
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a small run (start-up dominates), for smoke checks")
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    parser.add_argument("--rounds", type=int, default=None, help="alternating 1/2-worker rounds (median)")
    args = parser.parse_args()
    result = measure("quick" if args.quick else "full", args.rounds)
    if args.json:
        print(json.dumps(result))
        return
    m = result["model"]
    print(f"replay of a {result['steps']}-step run (GPT-2 {m['n_layer']}x{m['n_embd']}, context "
          f"{m['context_length']}, batch {result['batch_size']}, {result['n_chunks']} chunks, checkpoints every "
          f"{result['checkpoints'][1] if len(result['checkpoints']) > 1 else '-'} steps, "
          f"{result['n_new_targets']} new targets, 1 thread per worker, {result['cpu_count']} cores)")
    print(f"{'workers':>8} {'median s':>10}  all rounds")
    for workers, key in ((1, "seconds_1_worker"), (2, "seconds_2_workers")):
        rounds = ", ".join(f"{s:.1f}" for s in result[f"{key}_all"])
        print(f"{workers:>8} {result[key]:>10.1f}  {rounds}")
    before, after = result["load_average_before_after"]
    print(f"speed-up with 2 workers: {result['speedup_2_workers']:.2f}x  (blocks {result['blocks_2_workers']}; "
          f"load average {before:.1f} -> {after:.1f}, sched_autogroup_enabled {result['sched_autogroup_enabled']})")


if __name__ == "__main__":
    main()
