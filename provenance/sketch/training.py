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

from provenance.sketch.observer import RowSketcher, adam_scales
from provenance.sketch.projection import Projections
from provenance.sketch.query import sketch_settings
from provenance.sketch.store import SketchWriter
from provenance.train.loop import Recorder


class SketchSession:
    """Observer + writer for one training session (fresh or resumed)."""

    def __init__(self, folder: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, engine: Any,
                 sketch_config: Any, last_step: int):
        settings = sketch_settings(sketch_config)
        self.model, self.optimizer = model, optimizer
        self.projections = Projections.build(model, settings["k_out"], settings["k_in"], settings["k_vector"],
                                             settings["seed"])
        adam_scales(optimizer, model, self.projections, 1.0)  # refuses a non-Adam optimizer up front
        self.sketcher = RowSketcher(model, self.projections)
        self.writer = SketchWriter(folder, model, self.projections, settings, settings["every"], last_step)
        self._remove = engine.add_observer(self.sketcher.observe)

    def start(self, first_step: int) -> None:
        self.writer.start(first_step, self.optimizer)

    def after_step(self, step: int, chunk_ids: list[int], result: Any) -> None:
        rows = self.sketcher.take()
        if rows.shape[0] != len(chunk_ids):
            raise RuntimeError(f"sketched {rows.shape[0]} rows at step {step}, the step had {len(chunk_ids)}")
        scale = adam_scales(self.optimizer, self.model, self.projections, float(result.clip_factor))
        self.writer.add(step, list(chunk_ids), rows.to(torch.float64) * scale, self.optimizer)

    def finish(self) -> None:
        self.writer.finish()

    def close(self) -> None:
        self._remove()


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
