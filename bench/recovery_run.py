"""Train (or reuse) the recovery benchmark's run and build its evidence index.

The run lives in ``attribution_runs/<run id>/`` like any other; ``<run id>.bench.json`` beside it (not
inside: the manifest fingerprints every file of the run) records the benchmark's targets with their
sources (what the metrics are scored against) and the config. A reused
run must match the benchmark exactly (config, corpus hash, target texts), else it is refused.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from provenance.config import ModelConfig, RunConfig, TrainConfig
from provenance.errors import RunDirectoryError
from provenance.store import atomic
from provenance.store.run_dir import STATUS_COMPLETE, RunDirectory
from provenance.store.tables import read_table
from provenance.train.targets import TargetSpec
from provenance.train.trainer import train

from recovery_targets import Benchmark

BENCH_SUFFIX = ".bench.json"


def bench_record_path(run_path: Path) -> Path:
    return run_path.with_name(run_path.name + BENCH_SUFFIX)

THREADS = 1  # one thread: on the shared 2-core machine a second one oversubscribes (see train/demo.py)

# Sized by measurement (docs/recovery.md): ~2.5 s per step of 32 chunks with the 50 targets on one
# core at load 2-6, so 650 steps (~6.9 epochs of the ~3,000 chunks, as many epochs as the demo) were
# planned at ~27 min; at load 7-10 the measured run took 45 min (4.1 s per step).
# Model and learning rate are the demo's; lr scaled by sqrt(2) for the doubled batch.
FULL_CONFIG = RunConfig(
    model=ModelConfig(n_layer=2, n_head=4, n_embd=64, context_length=128),
    train=TrainConfig(
        steps=650, batch_size=32, micro_batch_size=32, lr=1.4e-3, min_lr=1.4e-4, warmup_steps=40,
        checkpoint_every=100, tokenizer_vocab_size=4096,
    ),
)
# The harder benchmark (recovery_targets.hard_spec: ~11,600 chunks): 1,100 steps of 32 = 3 epochs (the
# specific value reached its final recall after ~2 epochs on the default run). Estimated 1-2 h on the
# shared machine (112 targets: the target pass costs ~2x the default run's); measured 2,895 s (session 4, one thread, machine mostly idle).
HARD_CONFIG = RunConfig(
    model=FULL_CONFIG.model,
    train=TrainConfig(
        steps=1100, batch_size=32, micro_batch_size=32, lr=1.4e-3, min_lr=1.4e-4, warmup_steps=60,
        checkpoint_every=100, tokenizer_vocab_size=4096,
    ),
)
QUICK_CONFIG = RunConfig(
    model=ModelConfig(n_layer=1, n_head=2, n_embd=32, context_length=128),
    train=TrainConfig(
        steps=12, batch_size=16, micro_batch_size=16, lr=3e-3, min_lr=3e-4, warmup_steps=2,
        checkpoint_every=100, tokenizer_vocab_size=512,
    ),
)


def target_specs(bench: Benchmark) -> list[TargetSpec]:
    return [TargetSpec(t.target_id, "", t.text) for t in bench.targets]


def _bench_record(bench: Benchmark, config: RunConfig) -> dict[str, Any]:
    return {
        "config": config.to_json(),
        "corpus_sha256": bench.corpus.sha256,
        "n_documents": len(bench.corpus.documents),
        "targets": [t.to_json() for t in bench.targets],
    }


def check_reusable(run_path: Path, bench: Benchmark, config: RunConfig) -> RunDirectory:
    """The cached run, if it is complete and was trained for exactly this benchmark."""
    run = RunDirectory(run_path)
    if not run.exists():
        raise RunDirectoryError(f"--reuse: no benchmark run at {run_path}; run without --reuse to train it")
    manifest = run.read_manifest()
    if manifest.get("status") != STATUS_COMPLETE:
        raise RunDirectoryError(
            f"--reuse: the run at {run_path} is not complete (status {manifest.get('status')!r}); "
            f"resume it with `provenance train --resume --run {run_path}` or retrain without --reuse"
        )
    record_path = bench_record_path(run_path)
    if not record_path.is_file():
        raise RunDirectoryError(f"--reuse: {record_path} is missing; {run_path} is not a recovery benchmark run")
    recorded = json.loads(record_path.read_text(encoding="utf-8"))
    wanted = _bench_record(bench, config)
    same = {
        # settings added to RunConfig later get their defaults, so an older record still compares
        "config": RunConfig.from_json(recorded.get("config", {})) == config,
        "corpus_sha256": recorded.get("corpus_sha256") == wanted["corpus_sha256"],
        "targets": recorded.get("targets") == wanted["targets"],
    }
    for key, ok in same.items():
        if not ok:
            raise RunDirectoryError(
                f"--reuse: the run at {run_path} was trained for another benchmark ({key} differs); "
                "retrain without --reuse"
            )
    targets = read_table(run.targets_path, "targets")
    if dict(zip(targets["target_id"], targets["text"])) != {t.target_id: t.text for t in bench.targets}:
        raise RunDirectoryError(f"--reuse: the targets registered in {run_path} differ from the benchmark's")
    return run


def train_run(run_path: Path, bench: Benchmark, config: RunConfig, *, progress: bool = True,
              echo=print) -> RunDirectory:
    """Train the benchmark run from scratch (replacing an earlier benchmark run at the same path)."""
    if run_path.exists():
        if not bench_record_path(run_path).is_file() and any(run_path.iterdir()):
            raise RunDirectoryError(f"{run_path} exists and is not a recovery benchmark run; pick another --runs-dir")
        shutil.rmtree(run_path)
    bench_record_path(run_path).unlink(missing_ok=True)
    started = time.perf_counter()
    m, t = config.model, config.train
    echo(f"[recovery] training GPT-2 ({m.n_layer} layers, width {m.n_embd}) on {len(bench.corpus.documents)} "
         f"documents, {t.steps} steps of {t.batch_size} chunks, {len(bench.targets)} targets registered")
    run = train(bench.corpus, run_path, config, targets=target_specs(bench), threads=THREADS, progress=progress)
    atomic.write_text(bench_record_path(run_path), json.dumps(_bench_record(bench, config), indent=1))
    echo(f"[recovery] trained in {time.perf_counter() - started:.0f} s: {run_path}")
    return run


def ensure_index(run: RunDirectory, *, progress: bool = True) -> None:
    from provenance.evidence import build_index

    build_index(run.path, progress=progress)
