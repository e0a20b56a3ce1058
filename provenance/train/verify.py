"""`provenance verify`: recompute every hash, then re-derive sampled steps' values by brute force.

The re-derivation restores the checkpoint before a sampled step, replays to it through the engine
(the loss must equal the record at every step), and computes that step's values with the independent
brute-force reference (``provenance.engine.reference``: one backward pass per row, flat float64
vectors, no layer rules or hooks) on a float64 copy of the model and optimizer. The recorded float32 values must agree within
``VALUE_RTOL`` of the step's largest value: float32 rounding explains ~1e-6 from step 2 on; a changed
value, target, batch or learning rate moves them by far more. Step 1 is ill-conditioned and gets
``STEP1_RTOL``: Adam's second moment is then this batch's squared gradient alone, so coordinates with a
tiny gradient g get an update of about lr * g / (|g| + eps), and float32 rounding of those tiny
gradients moves the values by up to ~1e-3 of the largest. Sampled steps are drawn from 2..steps.
"""

from __future__ import annotations

import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from provenance.errors import RunDirectoryError, VerificationError
from provenance.store.run_dir import RunDirectory
from provenance.store.tables import read_table
from provenance.store.verify import HashReport, verify_hashes
from provenance.store.checkpoint import load_checkpoint
from provenance.train.distributed import recorded_world_size
from provenance.train.loop import run_steps
from provenance.train.order import DataOrder
from provenance.train.model import build_model, build_optimizer
from provenance.train.prepare import prepare_from_run
from provenance.train.runtime import deterministic_runtime
from provenance.train.schedule import learning_rate
from provenance.train.trainer import engine_config, make_trajectory

VALUE_RTOL = 1e-3
STEP1_RTOL = 1e-2


@dataclass
class StepCheck:
    step: int
    n_values: int
    max_abs_error: float
    max_value: float

    @property
    def tolerance(self) -> float:
        return STEP1_RTOL if self.step == 1 else VALUE_RTOL

    @property
    def relative_error(self) -> float:
        return self.max_abs_error / self.max_value if self.max_value > 0 else self.max_abs_error


@dataclass
class VerifyReport:
    run: Path
    hashes: HashReport
    steps: list[StepCheck] = field(default_factory=list)
    note: str | None = None

    def summary(self) -> str:
        lines = [
            f"verify {self.run}: OK",
            f"  {self.hashes.files_checked} file hashes and {self.hashes.documents_checked} document hashes match "
            "the manifest",
        ]
        for check in self.steps:
            lines.append(
                f"  step {check.step}: {check.n_values} values re-derived by brute force, max relative "
                f"error {check.relative_error:.2e} (tolerance {check.tolerance:g})"
            )
        if self.note:
            lines.append(f"  note: {self.note}")
        return "\n".join(lines)


def verify_run(
    run_dir: str | Path, *, sample_steps: int = 2, steps: list[int] | None = None, progress: bool = True
) -> VerifyReport:
    """Raise VerificationError (naming each file) on any mismatch; return the report otherwise."""
    run = RunDirectory.open(run_dir)
    hashes = verify_hashes(run)
    if hashes.findings:
        raise VerificationError(
            f"{len(hashes.findings)} problem(s) in {run.path}:\n" + "\n".join(f"  {f}" for f in hashes.findings)
        )
    report = VerifyReport(run.path, hashes)
    manifest = run.read_manifest()
    total = manifest["config"]["train"]["steps"]
    if steps is None:
        rng = random.Random(manifest["seed"])
        pool = range(2, total + 1) if total >= 2 else range(1, total + 1)
        steps = sorted(rng.sample(pool, min(sample_steps, len(pool))))
    bad = [s for s in steps if not 1 <= s <= total]
    if bad:
        raise VerificationError(f"steps {bad} are outside the run's steps 1..{total}")
    if not steps:
        return report
    if len(read_table(run.targets_path, "targets")) == 0:
        report.note = "the run has no targets, so there are no values to re-derive"
        return report
    from provenance.engine import reference

    for step in steps:
        report.steps.append(rederive_step(run, manifest, step, reference, progress=progress))
    return report


def rederive_step(run: RunDirectory, manifest: dict[str, Any], step: int, reference: Any,
                  *, progress: bool = True) -> StepCheck:
    prepared = prepare_from_run(run, manifest)
    cfg = prepared.config
    start = max((s for s in run.checkpoint_steps() if s < step), default=None)
    if start is None:
        raise RunDirectoryError(f"no checkpoint before step {step} in {run.checkpoints_dir}; cannot re-derive it")
    log = read_table(run.train_log_path, "train_log")
    expected = dict(zip(log["step"].astype(int), log["loss"].astype(float)))
    if recorded_world_size(manifest) > 1:
        # The sum over ranks is part of the recorded arithmetic: W worker processes replay start+1..step
        # (checking each loss, the sampled step's included) and hand over the state before the step.
        model, optimizer, chunk_ids = _state_before_step_on_ranks(run, prepared, start, step, progress)
        ref = _reference(prepared, model, optimizer, chunk_ids, step, reference, manifest)
        loss = expected[step]
    else:
        with deterministic_runtime(manifest["runtime"]["torch_num_threads"]):
            traj = make_trajectory(prepared, prepared.target_batch, prepared.target_ids, run=run, checkpoint=start)
            try:
                if step - 1 > start:
                    run_steps(traj, start + 1, step - 1, expected_losses=expected,
                              desc=f"verify: replay to step {step}", progress=progress)
                chunk_ids = traj.order.next_batch()
                ref = _reference(prepared, traj.model, traj.optimizer, chunk_ids, step, reference, manifest)
                # The real step, through the engine, must give the recorded loss.
                lr = learning_rate(step, cfg.train)
                for group in traj.optimizer.param_groups:
                    group["lr"] = lr
                loss = float(traj.engine.step(prepared.micro_batches(chunk_ids)).loss)
            finally:
                traj.engine.close()
    if loss != expected[step]:
        raise VerificationError(
            f"train_log.parquet: step {step} has loss {expected[step]!r} but replaying it gives {loss!r}"
        )
    recorded = read_table(run.contributions_path, "contributions")
    recorded = recorded[recorded["step"] == step]
    column = "value_second_order" if cfg.attribution.order == 2 else "value_first_order"
    brute = ref["values_second" if cfg.attribution.order == 2 else "values_first"].detach().numpy()
    table = recorded.pivot(index="chunk_id", columns="target_id", values=column)
    if sorted(table.index) != sorted(chunk_ids):
        raise VerificationError(
            f"contributions.parquet: step {step} lists chunks {sorted(table.index)} but the replayed batch is "
            f"{sorted(chunk_ids)}"
        )
    mine = table.loc[chunk_ids, prepared.target_ids].to_numpy(dtype=np.float64)
    err = float(np.abs(mine - brute).max())
    scale = float(np.abs(brute).max())
    check = StepCheck(step, int(mine.size), err, scale)
    if err > check.tolerance * scale + 1e-12:
        raise VerificationError(
            f"contributions.parquet: the values of step {step} differ from the brute-force re-derivation "
            f"(max abs error {err:.3e}, largest value {scale:.3e})"
        )
    return check


def _reference(prepared: Any, model: Any, optimizer: Any, chunk_ids: list[int], step: int, reference: Any,
               manifest: dict[str, Any]) -> Any:
    """Brute-force values of the step's whole batch on a float64 copy of the model and optimizer, under the
    engine settings the run recorded (e.g. its Adam denominator), not this version's defaults."""
    cfg = prepared.config
    # A clean copy (no engine hooks); the copy's optimizer state is cast to float64 on load.
    model64 = build_model(cfg.model, prepared.vocab_size, cfg.train.seed, prepared.eos_id)
    model64.load_state_dict(model.state_dict())
    model64.double()
    optimizer64 = build_optimizer(model64, cfg.train)
    optimizer64.load_state_dict(optimizer.state_dict())
    for group in optimizer64.param_groups:
        group["lr"] = learning_rate(step, cfg.train)
    return reference.reference_values(
        model64, optimizer64, prepared.micro_batches(chunk_ids), prepared.target_batch,
        config=engine_config(cfg, manifest.get("config", {}).get("engine")),
        dtype=torch.float64,
    )


def _state_before_step_on_ranks(run: RunDirectory, prepared: Any, start: int, step: int,
                                progress: bool) -> tuple[Any, Any, list[int]]:
    """Model, optimizer and the step's chunk ids after step - 1 of a run recorded on several ranks."""
    from provenance.train.segments import Block, run_blocks

    cfg = prepared.config
    folder = run_blocks(run, [Block(0, start + 1, step)], [], registered=True, snapshot_step=step - 1,
                        progress=progress)
    try:
        model = build_model(cfg.model, prepared.vocab_size, cfg.train.seed, prepared.eos_id)
        optimizer = build_optimizer(model, cfg.train)
        state = load_checkpoint(RunDirectory(folder / "block_0000" / "snapshot"), step - 1, model, optimizer)
        order = DataOrder(len(prepared.chunks), cfg.train.batch_size, cfg.train.seed)
        order.load_state_dict(state["data_order"])
        return model, optimizer, order.next_batch()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
