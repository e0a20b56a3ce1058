"""Wiring for the trainer: sketch every step of a run into `<run>/sketches/` (config.SketchConfig).

The trainer's Recorder already sees (step, chunk ids, StepResult) after each optimizer step, so the
sketch session rides on it (SketchingRecorder) and on the engine's observer hook; the update path of
training is untouched.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from provenance.config import ConfigError
from provenance.errors import SketchMismatchError
from provenance.sketch.observer import CovarianceSketch, RowSketcher, adam_scales
from provenance.sketch.projection import Projections
from provenance.sketch.query import sketch_settings
from provenance.sketch.store import SketchWriter, calibration_steps
from provenance.train.loop import Recorder


class SketchSession:
    """Observer + writer for one training session (fresh or resumed).

    Projection "pca": steps 1..calibration_steps are sketched with the Gaussian projections while a
    CovarianceSketch observes the same backward passes; after the last calibration step the calibrated
    projections are stored and sketch every later step (each segment records which set it used)."""

    def __init__(self, folder: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, engine: Any,
                 sketch_config: Any, last_step: int):
        settings = sketch_settings(sketch_config)
        self.model, self.optimizer, self.engine = model, optimizer, engine
        self.projections = Projections.from_settings(model, settings)
        adam_scales(optimizer, model, self.projections, 1.0)  # refuses a non-Adam optimizer up front
        self.calibration_steps = calibration_steps(settings)
        if self.calibration_steps and self.calibration_steps >= last_step:
            raise ConfigError(f"sketch calibration_steps ({self.calibration_steps}) must be below the run's "
                              f"{last_step} steps: the calibrated projections would sketch nothing")
        self.sketcher = RowSketcher(model, self.projections)
        self.writer = SketchWriter(folder, model, self.projections, settings, settings["every"], last_step)
        self._remove = engine.add_observer(self.sketcher.observe)
        self.covariance: CovarianceSketch | None = None
        self._remove_covariance: Any = None

    def start(self, first_step: int) -> None:
        self.writer.start(first_step, self.optimizer)
        if not self.calibration_steps:
            return
        if first_step == 1:
            self.covariance = CovarianceSketch(self.model, self.projections, seed=self.projections.seed)
            self._remove_covariance = self.engine.add_observer(self.covariance.observe)
        elif first_step > self.calibration_steps:
            self._use(self.writer.load_pca())
        else:
            raise SketchMismatchError(
                f"cannot resume sketches at step {first_step}: it is inside the calibration window "
                f"(steps 1..{self.calibration_steps}), whose covariances are not stored; restart the run"
            )

    def _use(self, projections: Projections) -> None:
        """Sketch the following steps with `projections` (same layout, so the same store)."""
        self._remove()
        self.sketcher = RowSketcher(self.model, projections)
        self._remove = self.engine.add_observer(self.sketcher.observe)

    def after_step(self, step: int, chunk_ids: list[int], result: Any) -> None:
        rows = self.sketcher.take()
        if rows.shape[0] != len(chunk_ids):
            raise RuntimeError(f"sketched {rows.shape[0]} rows at step {step}, the step had {len(chunk_ids)}")
        scale = adam_scales(self.optimizer, self.model, self.projections, float(result.clip_factor))
        self.writer.add(step, list(chunk_ids), rows.to(torch.float64) * scale, self.optimizer)
        if self.covariance is not None and step == self.calibration_steps:
            self._remove_covariance()
            pca = self.covariance.projections_pca()
            self.covariance = self._remove_covariance = None
            self.writer.save_pca(pca)
            self._use(pca)

    def finish(self) -> None:
        self.writer.finish()

    def close(self) -> None:
        self._remove()
        if self._remove_covariance is not None:
            self._remove_covariance()
            self._remove_covariance = None


@dataclass
class SketchingRecorder(Recorder):
    """The trainer's Recorder that also hands each step to a SketchSession."""

    session: SketchSession | None = None

    def add(self, step: int, chunk_ids: list[int], doc_ids: list[str], result: Any, seconds: float) -> None:
        super().add(step, chunk_ids, doc_ids, result, seconds)
        if self.session is not None:
            self.session.after_step(step, chunk_ids, result)


def start_session(folder: str | Path, traj: Any, config: Any, first_step: int,
                  recorder: Recorder | None) -> tuple[Recorder | None, SketchSession]:
    """Attach a sketch session to a trajectory (single process only) and wrap the trainer's recorder."""
    from provenance.errors import SketchMismatchError

    dist = getattr(traj, "dist", None)
    if dist is not None and getattr(dist, "enabled", False):
        raise SketchMismatchError(
            "sketches are stored by single-process runs only (each rank sees only its shard of a step's rows); "
            "train without torchrun or with sketch.enabled off"
        )
    calibration = calibration_steps(sketch_settings(config.sketch))
    if calibration > config.train.checkpoint_every:
        raise ConfigError(
            f"sketch calibration_steps ({calibration}) must not exceed train.checkpoint_every "
            f"({config.train.checkpoint_every}): a resume inside the calibration window could not be sketched"
        )
    session = SketchSession(folder, traj.model, traj.optimizer, traj.engine, config.sketch, config.train.steps)
    try:
        session.start(first_step)
    except BaseException:
        session.close()
        raise
    if recorder is None:
        return recorder, session
    wrapped = SketchingRecorder(recorder.target_ids, recorder.order, session=session)
    return wrapped, session


class _FanOut(Recorder):
    """A K = 0 recorder handing each replayed step to several sketch sessions."""

    def __init__(self, sessions: list[SketchSession]):
        super().__init__([], 1)
        self.sessions = sessions

    def add(self, step: int, chunk_ids: list[int], doc_ids: list[str], result: Any, seconds: float) -> None:
        for session in self.sessions:
            session.after_step(step, chunk_ids, result)


def sketch_by_replay(run_dir: str | Path, stores: dict[str | Path, Any], *, progress: bool = True) -> list[Path]:
    """Write sketch stores for a recorded run by replaying it from step 0: `stores` maps a new folder to
    its settings (a SketchConfig or a sketch_settings dict). The replay is the training update path, loss
    checked bit for bit against train_log.parquet, so the sketches are those training would have stored.
    For runs trained without sketches, or to compare settings (bench/posthoc.py); one replay serves all."""
    from provenance.store.run_dir import RunDirectory
    from provenance.train.loop import run_steps
    from provenance.train.prepare import prepare_from_run
    from provenance.train.runtime import deterministic_runtime
    from provenance.train.segments import expected_losses
    from provenance.train.trainer import make_trajectory

    run = RunDirectory.open(run_dir)
    manifest = run.read_manifest()
    prepared = prepare_from_run(run, manifest)
    steps = prepared.config.train.steps
    folders = [Path(f) for f in stores]
    for folder in folders:
        if folder.exists():
            raise SketchMismatchError(f"{folder} exists; sketch_by_replay writes new stores only (remove it first)")
    with deterministic_runtime(manifest["runtime"]["torch_num_threads"]):
        traj = make_trajectory(prepared, None, [], run=run, checkpoint=0)
        sessions: list[SketchSession] = []
        try:
            for folder, settings in zip(folders, stores.values()):
                sessions.append(SketchSession(folder, traj.model, traj.optimizer, traj.engine, settings, steps))
                sessions[-1].start(1)
            run_steps(traj, 1, steps, recorder=_FanOut(sessions), expected_losses=expected_losses(run),
                      desc=f"sketch {run.run_id}", progress=progress)
            for session in sessions:
                session.finish()
        finally:
            for session in sessions:
                session.close()
            traj.engine.close()
    return folders
