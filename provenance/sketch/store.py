"""The sketch store: `<run>/sketches/`, safetensors only, read back memory-mapped.

    meta.json                       settings + fingerprints (model architecture, projections), status
    projections.safetensors         every Q matrix (so a query uses exactly the projections of training)
    projections_pca.safetensors     (projection "pca") the calibrated Q matrices, used by every segment
                                    after the calibration window; meta.json holds their sha256
    anchors/step_NNNNNN.safetensors weights and Adam second moments at each segment's anchor step
    segments/segment_NNNNN.safetensors  chunk_id (n,) int64, sketch (n, dim) float32: the sum over the
                                    segment's steps of each chunk's scaled row sketches

A segment is `every` steps; its rows are valued against the target gradient at its anchor (the weights
after step first-1 + every//2). Before reuse, the store's fingerprints must equal the model's and the
projection settings asked for, or SketchMismatchError says which differs.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from torch import nn

from provenance.errors import SketchMismatchError
from provenance.sketch.projection import Projections, matrices_sha256, model_fingerprint
from provenance.store import atomic

FORMAT_VERSION = 1
STATUS_TRAINING = "training"
STATUS_COMPLETE = "complete"
_SEGMENT = re.compile(r"segment_(\d+)\.safetensors$")
_ANCHOR = re.compile(r"step_(\d+)\.safetensors$")


def segment_bounds(index: int, every: int, last_step: int) -> tuple[int, int, int]:
    """(first step, last step, anchor step) of segment `index` (0-based); steps are 1-based."""
    first = index * every + 1
    last = min(last_step, first + every - 1)
    anchor = min(first - 1 + every // 2, last)
    return first, last, anchor


@dataclass(frozen=True)
class Segment:
    index: int
    first_step: int
    last_step: int
    anchor_step: int
    path: Path
    projection: str = "gaussian"  # which projection set sketched its rows ("pca" after calibration)


def calibration_steps(settings: dict[str, Any]) -> int:
    """Steps sketched with the Gaussian projections before the calibrated ones take over (0: never)."""
    return int(settings.get("calibration_steps", 0)) if settings.get("projection", "gaussian") == "pca" else 0


def segment_projection(first_step: int, settings: dict[str, Any]) -> str:
    calibration = calibration_steps(settings)
    return "pca" if calibration and first_step > calibration else "gaussian"


class SketchWriter:
    """Accumulates scaled row sketches per (segment, chunk) during training and writes each segment."""

    def __init__(self, folder: str | Path, model: nn.Module, projections: Projections, settings: dict[str, Any],
                 every: int, last_step: int):
        self.folder = Path(folder)
        self.model = model
        self.projections = projections
        self.every = every
        self.last_step = last_step
        self.meta = {
            "format_version": FORMAT_VERSION,
            "model_fingerprint": model_fingerprint(model),
            "projection_fingerprint": projections.fingerprint(),
            "settings": dict(settings),
            "every": every,
            "last_step": last_step,
            "dim": projections.dim,
            "dtype": "float32",
            "status": STATUS_TRAINING,
        }
        self._segment: int | None = None
        self._slots: dict[int, int] = {}
        self._acc: torch.Tensor | None = None
        self.settings = dict(settings)

    def save_pca(self, pca: Projections) -> None:
        """Store the calibrated projections (before any segment sketched with them is written)."""
        atomic.write_safetensors(self.folder / PCA_FILE, dict(pca.matrices))
        self.meta["pca_sha256"] = matrices_sha256(pca.matrices)
        atomic.write_json(self.folder / "meta.json", {**self.meta, "status": STATUS_TRAINING})

    def load_pca(self) -> Projections:
        """The calibrated projections of a resumed run, checked against meta.json."""
        return load_pca(self.folder, self.meta.get("pca_sha256"), self.projections)

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self, first_step: int, optimizer: torch.optim.Optimizer) -> None:
        """Fresh run (first_step 1) or resume: check/create meta, drop segments from first_step on."""
        if (first_step - 1) % self.every:
            raise SketchMismatchError(
                f"cannot resume sketches at step {first_step}: it is not a segment start (every {self.every})"
            )
        meta_path = self.folder / "meta.json"
        if meta_path.is_file():
            found = json.loads(meta_path.read_text(encoding="utf-8"))
            check_meta(found, self.meta, meta_path)
            if "pca_sha256" in found and first_step > calibration_steps(self.settings):
                self.meta["pca_sha256"] = found["pca_sha256"]
        elif first_step != 1:
            raise SketchMismatchError(f"{meta_path} is missing: the sketches of steps before {first_step} are lost")
        else:
            self.folder.mkdir(parents=True, exist_ok=True)
            atomic.write_safetensors(self.folder / "projections.safetensors",
                                     {k: v for k, v in self.projections.matrices.items()})
        for path in list((self.folder / "segments").glob("segment_*.safetensors")):
            if segment_bounds(int(_SEGMENT.search(path.name).group(1)), self.every, self.last_step)[0] >= first_step:
                path.unlink()
        atomic.write_json(meta_path, {**self.meta, "status": STATUS_TRAINING})
        self._begin_segment((first_step - 1) // self.every, optimizer)

    def _begin_segment(self, index: int, optimizer: torch.optim.Optimizer) -> None:
        self._segment, self._slots = index, {}
        self._acc = torch.zeros(0, self.projections.dim, dtype=torch.float64)
        first, _, anchor = segment_bounds(index, self.every, self.last_step)
        if anchor == first - 1:  # the anchor is the state before the segment's first step
            self._save_anchor(anchor, optimizer)

    def add(self, step: int, chunk_ids: list[int], scaled_rows: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        """Add one step's scaled row sketches (rows, dim); call after the optimizer step."""
        index = (step - 1) // self.every
        if index != self._segment:
            raise RuntimeError(f"step {step} is outside the current sketch segment {self._segment}")
        slots = []
        for chunk in chunk_ids:
            if chunk not in self._slots:
                self._slots[chunk] = len(self._slots)
            slots.append(self._slots[chunk])
        if len(self._slots) > self._acc.shape[0]:
            grown = torch.zeros(max(len(self._slots), 2 * self._acc.shape[0]), self.projections.dim, dtype=torch.float64)
            grown[: self._acc.shape[0]] = self._acc
            self._acc = grown
        self._acc.index_add_(0, torch.tensor(slots), scaled_rows.to(torch.float64))
        first, last, anchor = segment_bounds(index, self.every, self.last_step)
        if step == anchor:
            self._save_anchor(step, optimizer)
        if step == last:
            self._write_segment(index)
            if step < self.last_step:
                self._begin_segment(index + 1, optimizer)

    def finish(self) -> None:
        meta_path = self.folder / "meta.json"
        atomic.write_json(meta_path, {**self.meta, "status": STATUS_COMPLETE})

    # -- files -------------------------------------------------------------------------------------
    def _save_anchor(self, step: int, optimizer: torch.optim.Optimizer) -> None:
        tensors: dict[str, torch.Tensor] = {}
        optimizer_step = 0
        for name, p in self.model.named_parameters():
            tensors[f"param.{name}"] = p.detach()
            state = optimizer.state.get(p, {})
            if "exp_avg_sq" in state:
                tensors[f"exp_avg_sq.{name}"] = state["exp_avg_sq"].detach()
                optimizer_step = max(optimizer_step, int(float(state["step"])))
        group = optimizer.param_groups[0]
        metadata = {"step": str(step), "optimizer_step": str(optimizer_step),
                    "beta2": repr(float(group["betas"][1])), "eps": repr(float(group["eps"]))}
        atomic.write_safetensors(self.folder / "anchors" / f"step_{step:06d}.safetensors", tensors, metadata)

    def _write_segment(self, index: int) -> None:
        order = sorted(self._slots.items())
        chunk_ids = torch.tensor([c for c, _ in order], dtype=torch.int64)
        rows = self._acc[torch.tensor([s for _, s in order], dtype=torch.int64)].to(torch.float32)
        first, last, anchor = segment_bounds(index, self.every, self.last_step)
        atomic.write_safetensors(
            self.folder / "segments" / f"segment_{index:05d}.safetensors",
            {"chunk_id": chunk_ids, "sketch": rows},
            {"first_step": str(first), "last_step": str(last), "anchor_step": str(anchor),
             "projection": segment_projection(first, self.settings)},
        )


def check_meta(found: dict[str, Any], expected: dict[str, Any], where: Path | str) -> None:
    """Refuse sketches whose model, projections or segment settings differ from what is asked."""
    if found.get("format_version") != FORMAT_VERSION:
        raise SketchMismatchError(
            f"{where}: sketch format {found.get('format_version')!r}, this version reads {FORMAT_VERSION}; "
            "re-create the sketches (train with sketch.enabled) or upgrade provenance"
        )
    for key, what in (("settings", "sketch settings (seed, k_out, k_in, k_vector, every)"),
                      ("model_fingerprint", "model architecture"), ("every", "segment length"),
                      ("dim", "sketch size"), ("projection_fingerprint", "projection layout")):
        if found.get(key) != expected.get(key):
            raise SketchMismatchError(
                f"{where}: the stored sketches were made for another {what} ({key}: stored "
                f"{_short(found.get(key))}, expected {_short(expected.get(key))}); they cannot be reused here. "
                "Query the run the sketches belong to, or re-create them with this model and settings"
            )


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True) if not isinstance(value, str) else value
    return text if len(text) <= 80 else text[:77] + "..."


def memmap_tensor(path: Path, name: str) -> np.ndarray:
    """A tensor of a safetensors file as a read-only numpy memmap (no copy; pages load on use)."""
    with open(path, "rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(length))
    info = header[name]
    dtype = {"F32": np.float32, "F64": np.float64, "I64": np.int64, "F16": np.float16}[info["dtype"]]
    begin, end = info["data_offsets"]
    shape = tuple(info["shape"])
    if end == begin:
        return np.zeros(shape, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=8 + length + begin, shape=shape)


PCA_FILE = "projections_pca.safetensors"


def load_pca(folder: Path, expected_sha256: str | None, gaussian: Projections) -> Projections:
    """The calibrated projections of a store, refused unless their hash is the one meta.json recorded."""
    path = folder / PCA_FILE
    if expected_sha256 is None or not path.is_file():
        raise SketchMismatchError(
            f"{folder}: projection 'pca' but the calibrated projections ({PCA_FILE} and its sha256 in meta.json) "
            "are missing; the calibration window did not finish or the store is damaged"
        )
    matrices = load_projection_matrices(path)
    if set(matrices) != set(gaussian.matrices):
        raise SketchMismatchError(f"{path} holds other projections than this model's slots; the store is damaged")
    if matrices_sha256(matrices) != expected_sha256:
        raise SketchMismatchError(f"{path} differs from the calibrated projections recorded in meta.json "
                                  "(a modified file); the sketches cannot be reused with it")
    try:
        return gaussian.with_matrices(matrices, "pca")
    except ValueError as exc:
        raise SketchMismatchError(f"{path}: {exc}; the store is damaged") from exc


class SketchStore:
    """A completed store, opened for queries after its metadata check."""

    def __init__(self, folder: Path, meta: dict[str, Any], projections: Projections,
                 pca: Projections | None = None):
        self.folder = folder
        self.meta = meta
        self.projections = projections  # the Gaussian set (every segment of a "gaussian" store)
        self.pca = pca  # the calibrated set of a "pca" store
        self.segments = self._segments()
        self._mapped: dict[Path, tuple[np.ndarray, np.ndarray]] = {}

    def projections_for(self, segment: Segment) -> Projections:
        """The projections that sketched this segment's rows (a query must project its target with them)."""
        if segment.projection == "pca":
            if self.pca is None:
                raise SketchMismatchError(f"{segment.path} was sketched with calibrated projections the store lacks")
            return self.pca
        return self.projections

    @classmethod
    def open(cls, folder: str | Path, model: nn.Module, settings: dict[str, Any]) -> "SketchStore":
        """Open `folder` for `model` and the expected settings; refuse any mismatch."""
        folder = Path(folder)
        meta_path = folder / "meta.json"
        if not meta_path.is_file():
            raise SketchMismatchError(
                f"{folder} holds no sketches (meta.json missing); train with sketch.enabled "
                "(provenance train --sketch) to store them, or use exact replay (provenance attribute)"
            )
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("status") != STATUS_COMPLETE:
            raise SketchMismatchError(f"{folder}: the sketches are incomplete (status {meta.get('status')!r}); "
                                      "finish or resume the training run first")
        projections = Projections.from_settings(model, settings)
        expected = {"format_version": FORMAT_VERSION, "model_fingerprint": model_fingerprint(model),
                    "projection_fingerprint": projections.fingerprint(), "settings": dict(settings),
                    "every": settings["every"], "dim": projections.dim}
        check_meta(meta, expected, meta_path)
        stored = load_projection_matrices(folder / "projections.safetensors")
        if set(stored) != set(projections.matrices) or any(
            not torch.equal(stored[k], projections.matrices[k]) for k in stored
        ):
            raise SketchMismatchError(
                f"{folder}/projections.safetensors differs from the projections of seed {settings['seed']} "
                "for this model (another torch version's random generator, or a modified file); the sketches "
                "cannot be reused with these projections"
            )
        pca = load_pca(folder, meta.get("pca_sha256"), projections) if calibration_steps(settings) else None
        return cls(folder, meta, projections, pca)

    def _segments(self) -> list[Segment]:
        out = []
        for path in sorted((self.folder / "segments").glob("segment_*.safetensors")):
            index = int(_SEGMENT.search(path.name).group(1))
            first, last, anchor = segment_bounds(index, self.meta["every"], self.meta["last_step"])
            out.append(Segment(index, first, last, anchor, path, segment_projection(first, self.meta["settings"])))
        expected = -(-self.meta["last_step"] // self.meta["every"])
        if [s.index for s in out] != list(range(expected)):
            raise SketchMismatchError(f"{self.folder}/segments: expected segments 0..{expected - 1}, found "
                                      f"{[s.index for s in out]}; the store is damaged")
        return out

    def anchor_path(self, step: int) -> Path:
        path = self.folder / "anchors" / f"step_{step:06d}.safetensors"
        if not path.is_file():
            raise SketchMismatchError(f"{path} is missing; the store is damaged")
        return path

    def rows(self, segment: Segment) -> tuple[np.ndarray, np.ndarray]:
        """(chunk_id (n,), sketch (n, dim)) of a segment, memory-mapped once and kept mapped: a fresh mapping
        per query would fault every page in again (measured ~10x slower dots than on mapped pages)."""
        mapped = self._mapped.get(segment.path)
        if mapped is None:
            mapped = self._mapped[segment.path] = (memmap_tensor(segment.path, "chunk_id"),
                                                   memmap_tensor(segment.path, "sketch"))
        return mapped

    @property
    def n_rows(self) -> int:
        return sum(int(self.rows(s)[0].shape[0]) for s in self.segments)

    def nbytes(self) -> int:
        return sum(f.stat().st_size for f in self.folder.rglob("*.safetensors"))


def load_projection_matrices(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise SketchMismatchError(f"{path} is missing; the sketch store is damaged")
    with safe_open(str(path), framework="pt") as handle:
        return {key: handle.get_tensor(key) for key in handle.keys()}


def load_anchor(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, str]]:
    """(weights, exp_avg_sq by parameter name, metadata) of one anchor."""
    weights, second = {}, {}
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
        for key in handle.keys():
            kind, name = key.split(".", 1)
            (weights if kind == "param" else second)[name] = handle.get_tensor(key)
    return weights, second, metadata
