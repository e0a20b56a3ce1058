"""Attribute outputs generated after training: replay the recorded run with them as targets.

Training is deterministic given the manifest (seed, data order, config, thread count), so the run is
replayed from its step-0 checkpoint with the new targets registered. The replay proves it is the same
run: its training loss must equal the recorded one at every step and its weights must equal every saved
checkpoint; any difference is a hard error (RunMismatchError) and nothing is written. The new values are
then merged into the run's tables in one final write.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import torch

from provenance.errors import RunMismatchError, TargetError
from provenance.store.checkpoint import load_checkpoint_weights
from provenance.store.run_dir import STATUS_COMPLETE, RunDirectory
from provenance.store.tables import aggregate_values, read_table, write_table
from provenance.train.loop import Recorder, run_steps
from provenance.train.prepare import prepare_from_run
from provenance.train.runtime import deterministic_runtime
from provenance.train.targets import REGISTERED_REPLAY, TargetSpec, check_targets, targets_frame
from provenance.train.trainer import make_trajectory, seal


def attribute(
    run_dir: str | Path, targets: list[TargetSpec], *, progress: bool = True
) -> pd.DataFrame:
    """Replay the whole recorded trajectory with ``targets``; returns their rows of values.parquet."""
    run = RunDirectory.open(run_dir)
    manifest = run.read_manifest()
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
    new_ids = [t.target_id for t in targets]
    train_log = read_table(run.train_log_path, "train_log")
    expected = dict(zip(train_log["step"].astype(int).tolist(), train_log["loss"].astype(float).tolist()))
    checkpoints = [s for s in run.checkpoint_steps() if s > 0]
    steps = prepared.config.train.steps

    with deterministic_runtime(manifest["runtime"]["torch_num_threads"]):
        traj = make_trajectory(prepared, prepared.extra_target_batch, new_ids, run=run, checkpoint=0)
        try:
            recorder = Recorder(new_ids, prepared.config.attribution.order)

            def after_step(step: int) -> None:
                if step in checkpoints:
                    _check_weights(run, step, traj.model)

            run_steps(traj, 1, steps, recorder=recorder, expected_losses=expected, after_step=after_step,
                      desc=f"replay {run.run_id}", progress=progress)
            _check_final_weights(run, traj.model)
        finally:
            traj.engine.close()

    new = recorder.flush()
    return _merge(run, prepared, targets, new)


def _check_weights(run: RunDirectory, step: int, model: torch.nn.Module) -> None:
    saved = load_checkpoint_weights(run, step)
    _compare_weights(saved, model, f"checkpoint step {step}")


def _check_final_weights(run: RunDirectory, model: torch.nn.Module) -> None:
    from safetensors.torch import load_file

    _compare_weights(load_file(str(run.model_dir / "model.safetensors")), model, "the final model")


def _compare_weights(saved: dict[str, torch.Tensor], model: torch.nn.Module, what: str) -> None:
    current = model.state_dict()
    for name, tensor in saved.items():
        if name not in current or not torch.equal(current[name], tensor):
            raise RunMismatchError(
                f"replayed weights differ from {what} at {name}; the replay is not the recorded run, "
                "so no values were written"
            )


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
