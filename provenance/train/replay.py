"""Attribute outputs generated after training: replay the recorded run with them as targets.

Training is deterministic given the manifest (seed, data order, config, thread count), so the run is
replayed from its step-0 checkpoint with the new targets registered. The replay proves it is the same
run: its training loss must equal the recorded one at every step and its weights must equal every saved
checkpoint; any difference is a hard error (RunMismatchError) and nothing is written. The new values are
then merged into the run's tables in one final write. With ``workers`` > 1 the checkpoint segments are
replayed at once in worker processes (provenance.train.segments), each checking its own steps' losses and
checkpoints; a run recorded on several ranks (torchrun) is replayed on as many processes per segment.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pandas as pd

from provenance.config import ConfigError
from provenance.errors import TargetError
from provenance.store.run_dir import STATUS_COMPLETE, RunDirectory
from provenance.store.tables import aggregate_values, read_table, write_table
from provenance.train import distributed
from provenance.train.distributed import recorded_world_size
from provenance.train.prepare import prepare_from_run
from provenance.train.segments import (
    Block,
    plan_blocks,
    read_block_records,
    replay_on_ranks,
    replay_range,
    run_blocks,
)
from provenance.train.targets import REGISTERED_REPLAY, TargetSpec, check_targets, targets_frame
from provenance.train.trainer import seal


def attribute(
    run_dir: str | Path, targets: list[TargetSpec], *, workers: int = 1, progress: bool = True
) -> pd.DataFrame:
    """Replay the whole recorded trajectory with ``targets``; returns their rows of values.parquet.

    workers: replay the checkpoint segments in this many processes at once (provenance.train.segments);
    1 replays in this process. A run recorded on W ranks is always replayed by W processes per worker.
    Under torchrun (WORLD_SIZE > 1) the ranks are the workers, one block of segments each, on any number
    of nodes; rank 0 writes and returns the values, the other ranks return None.
    """
    run = RunDirectory.open(run_dir)
    manifest = run.read_manifest()
    if workers < 1:
        raise ConfigError(f"--workers must be >= 1 (got {workers})")
    check_targets(list(targets), where="attribute targets")
    if not targets:
        raise TargetError("attribute needs at least one target")
    known = set(read_table(run.targets_path, "targets")["target_id"])
    clash = sorted(known & {t.target_id for t in targets})
    if clash:
        raise TargetError(
            f"target ids {clash} are already registered in {run.targets_path}; choose new ids "
            "(values of a registered target are already in values.parquet)"
        )
    prepared = prepare_from_run(run, manifest, extra_targets=list(targets))
    dist = distributed.current()
    if dist.enabled:
        if workers != 1:
            raise ConfigError("under torchrun the ranks are the workers; drop --workers")
        new = replay_on_ranks(run, manifest, prepared, list(targets), dist, progress=progress)
        return distributed.on_main(dist, lambda: _merge(run, prepared, targets, new),
                                   f"write the values into {run.path}")
    new = replay_records(run, manifest, prepared, list(targets), workers=workers, progress=progress)
    return _merge(run, prepared, targets, new)


def replay_records(
    run: RunDirectory, manifest: dict[str, Any], prepared: Any, targets: list[TargetSpec], *,
    workers: int = 1, progress: bool = True,
) -> dict[str, pd.DataFrame]:
    """The new targets' rows (train_log, contributions, ledger) of every step, by sequential replay in this
    process (workers=1, one-rank run) or by segment workers; identical either way."""
    steps = prepared.config.train.steps
    if workers == 1 and recorded_world_size(manifest) == 1:
        return replay_range(run, manifest, prepared, prepared.extra_target_batch,
                            [t.target_id for t in targets], Block(0, 1, steps), progress=progress)
    blocks = plan_blocks(run.checkpoint_steps(), steps, workers)
    folder = run_blocks(run, blocks, targets, progress=progress)
    try:
        return read_block_records(folder, blocks)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _merge(run: RunDirectory, prepared: Any, targets: list[TargetSpec], new: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Append the new targets' rows to the run's tables, recompute values, re-seal the manifest."""
    order = prepared.config.attribution.order
    all_targets = pd.concat(
        [read_table(run.targets_path, "targets"), targets_frame(targets, REGISTERED_REPLAY)], ignore_index=True
    )
    contributions = pd.concat(
        [read_table(run.contributions_path, "contributions"), new["contributions"]], ignore_index=True
    ).sort_values(["step", "chunk_id", "target_id"], kind="mergesort")
    ledger = pd.concat([read_table(run.ledger_path, "ledger"), new["ledger"]], ignore_index=True).sort_values(
        ["step", "target_id"], kind="mergesort"
    )
    values = aggregate_values(
        contributions, prepared.documents["doc_id"].tolist(), all_targets["target_id"].tolist(), order
    )
    # Each table is replaced atomically; the manifest (with the new hashes) is written last.
    write_table(run.contributions_path, contributions, "contributions")
    write_table(run.ledger_path, ledger, "ledger")
    write_table(run.values_path, values, "values")
    write_table(run.targets_path, all_targets, "targets")
    seal(run, status=STATUS_COMPLETE)
    ids = {t.target_id for t in targets}
    return values[values["target_id"].isin(ids)].reset_index(drop=True)
