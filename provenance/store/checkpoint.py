"""Checkpoints without pickle: weights and optimizer tensors in safetensors, the rest in JSON.

A checkpoint folder is written under a temporary name and renamed into place in one step, so a run
killed mid-save leaves the previous checkpoint intact. ``records/`` inside a checkpoint holds the
tables (train log, contributions, ledger) of the steps since the previous checkpoint, so that a
resumed run has every row of the steps it does not redo; the run's root tables are their
concatenation (plus the steps after the last checkpoint) once the run completes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from provenance.errors import RunDirectoryError
from provenance.store import atomic
from provenance.store.run_dir import RunDirectory
from provenance.store.tables import read_table, write_table

RECORD_TABLES = ("train_log", "contributions", "ledger")


def rng_state_to_list(state: torch.Tensor) -> list[int]:
    return [int(x) for x in state.tolist()]


def rng_state_from_list(values: list[int]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.uint8)


def _optimizer_to_files(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, entry in sd["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{index}.{key}"] = value
            else:
                scalars.setdefault(str(index), {})[key] = value
    groups = []
    for group in sd["param_groups"]:
        groups.append({k: (list(v) if isinstance(v, tuple) else v) for k, v in group.items()})
    return tensors, {"param_groups": groups, "scalar_state": scalars, "class": type(optimizer).__name__}


def _optimizer_from_files(
    optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]
) -> None:
    if meta.get("class") != type(optimizer).__name__:
        raise RunDirectoryError(
            f"checkpoint optimizer is {meta.get('class')}, the run uses {type(optimizer).__name__}"
        )
    state: dict[int, dict[str, Any]] = {}
    for name, tensor in tensors.items():
        _, index, key = name.split(".", 2)
        state.setdefault(int(index), {})[key] = tensor
    for index, entry in meta.get("scalar_state", {}).items():
        state.setdefault(int(index), {}).update(entry)
    groups = []
    for group in meta["param_groups"]:
        groups.append({k: (tuple(v) if k == "betas" else v) for k, v in group.items()})
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def save_checkpoint(
    run: RunDirectory,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
    records: dict[str, pd.DataFrame] | None = None,
) -> Path:
    """Write checkpoints/step_NNNNNN/ atomically (temp folder, fsync, one rename)."""
    final = run.checkpoint_dir(step)
    tmp = atomic.staging_dir(final)
    try:
        atomic.write_safetensors(tmp / "model.safetensors", model.state_dict())
        opt_tensors, opt_meta = _optimizer_to_files(optimizer)
        atomic.write_safetensors(tmp / "optimizer.safetensors", opt_tensors)
        atomic.write_json(tmp / "optimizer.json", opt_meta)
        for name, frame in (records or {}).items():
            write_table(tmp / "records" / f"{name}.parquet", frame, name)
        atomic.write_json(tmp / "state.json", {**state, "step": step})
        atomic.publish_dir(tmp, final)
    except BaseException:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise RunDirectoryError(f"{path} is missing; the checkpoint is incomplete")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise RunDirectoryError(f"{path} is not a readable safetensors file ({exc}); the checkpoint is corrupt") from exc


def load_checkpoint(
    run: RunDirectory, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None
) -> dict[str, Any]:
    """Restore weights (and optimizer state) from a checkpoint; returns its state.json."""
    folder = run.checkpoint_dir(step)
    if not (folder / "state.json").is_file():
        raise RunDirectoryError(
            f"checkpoint {folder} is missing; it is needed to {'resume' if optimizer else 'replay'} "
            f"this run. Available checkpoints: {run.checkpoint_steps() or 'none'}"
        )
    state = json.loads((folder / "state.json").read_text(encoding="utf-8"))
    weights = _load_safetensors(folder / "model.safetensors")
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise RunDirectoryError(
            f"{folder / 'model.safetensors'} does not fit the model (missing {missing[:3]}, "
            f"unexpected {unexpected[:3]})"
        )
    if optimizer is not None:
        meta_path = folder / "optimizer.json"
        if not meta_path.is_file():
            raise RunDirectoryError(f"{meta_path} is missing; the checkpoint is incomplete")
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        _optimizer_from_files(optimizer, _load_safetensors(folder / "optimizer.safetensors"), meta)
    return state


def load_checkpoint_weights(run: RunDirectory, step: int) -> dict[str, torch.Tensor]:
    return _load_safetensors(run.checkpoint_dir(step) / "model.safetensors")


def load_records(run: RunDirectory, up_to_step: int) -> dict[str, pd.DataFrame]:
    """Concatenate the record segments of every checkpoint up to ``up_to_step``."""
    frames: dict[str, list[pd.DataFrame]] = {name: [] for name in RECORD_TABLES}
    for step in run.checkpoint_steps():
        if step > up_to_step:
            break
        folder = run.checkpoint_dir(step) / "records"
        for name in RECORD_TABLES:
            path = folder / f"{name}.parquet"
            if path.is_file():
                frames[name].append(read_table(path, name))
    out = {}
    for name, parts in frames.items():
        parts = [p for p in parts if len(p)]
        if parts:
            out[name] = pd.concat(parts, ignore_index=True)
        else:
            from provenance.store.tables import empty_frame

            out[name] = empty_frame(name)
    return out
