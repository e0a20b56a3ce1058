"""Train a GPT-2 with the attribution engine attached and write the run directory; resume a killed run.

Fresh run: every input is validated (corpus, targets, tokenizer, chunk count, target lengths) before the
run directory appears; the directory is then published in one rename with its step-0 checkpoint, so a
bad input leaves nothing behind. Checkpoints every N steps carry model, optimizer, RNG, data cursor and
the rows recorded since the previous checkpoint; the run is marked complete only after every table,
the final model and the manifest's hashes are written.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from provenance import RUN_FORMAT_VERSION
from provenance.config import RunConfig
from provenance.errors import RunDirectoryError, RunMismatchError
from provenance.store import atomic
from provenance.store.checkpoint import (
    load_checkpoint,
    load_records,
    rng_state_from_list,
    rng_state_to_list,
    save_checkpoint,
)
from provenance.store.hashing import sha256_file
from provenance.store.run_dir import (
    STATUS_COMPLETE,
    STATUS_TRAINING,
    VALUES_META,
    RunDirectory,
    software_versions,
    utc_now,
)
from provenance.store.tables import aggregate_values, read_table, write_table
from provenance.train import distributed
from provenance.train.distributed import DistContext
from provenance.train.loop import Recorder, Trajectory, run_steps
from provenance.train.model import build_model, build_optimizer
from provenance.train.order import DataOrder
from provenance.train.prepare import Prepared, prepare_fresh, prepare_from_run
from provenance.train.runtime import deterministic_runtime
from provenance.train.targets import REGISTERED_BEFORE, TargetSpec, targets_frame


# Engine settings that fix how training sums its gradients (so a replay is bit-identical) or what a value
# means: a replay takes them from the run's manifest, not from this version's defaults.
RECORDED_ENGINE_SETTINGS = (
    "memory_budget_mb", "keep_rows_mb", "weight_gradients", "adam_denominator", "contiguous_grads"
)
# What a run recorded before a setting existed was trained with (so its replay stays bit-identical).
SETTINGS_BEFORE_RECORDED = {"contiguous_grads": False}


def engine_config(config: RunConfig, recorded: dict[str, Any] | None = None) -> Any:
    """The engine's settings for a run; `recorded`: the manifest's config["engine"] of an existing run."""
    from provenance.engine import EngineConfig

    settings: dict[str, Any] = {"keep_rows_mb": float(config.attribution.keep_rows_mb)}
    settings.update({key: recorded[key] for key in RECORDED_ENGINE_SETTINGS if recorded and key in recorded})
    if recorded:
        settings.update({key: value for key, value in SETTINGS_BEFORE_RECORDED.items() if key not in recorded})
    return EngineConfig(
        order=config.attribution.order,
        max_grad_norm=config.train.max_grad_norm or None,
        loss_reduction=config.attribution.loss_reduction,
        **settings,
    )


def make_trajectory(
    prepared: Prepared,
    target_batch: Any,
    target_ids: list[str],
    *,
    run: RunDirectory | None = None,
    checkpoint: int | None = None,
    dist: DistContext | None = None,
) -> Trajectory:
    """Model (seeded init), optimizer, data order and engine; restored from a checkpoint when given.

    The engine is attached only after the optimizer state is loaded: optimizer.load_state_dict replaces
    the param-group dicts, and the engine must read the groups the real update uses.
    dist: the ranks sharing each step (torchrun); the engine then sums gradients over them.
    """
    dist = dist or DistContext()
    from provenance.engine import AttributionEngine, CausalLMTask

    cfg = prepared.config
    model = build_model(cfg.model, prepared.vocab_size, cfg.train.seed, prepared.eos_id)
    optimizer = build_optimizer(model, cfg.train)
    order = DataOrder(len(prepared.chunks), cfg.train.batch_size, cfg.train.seed)
    state = None
    if checkpoint is not None:
        if run is None:
            raise ValueError("make_trajectory: a checkpoint needs its run directory")
        state = load_checkpoint(run, checkpoint, model, optimizer)
    recorded = run.read_manifest().get("config", {}).get("engine") if run is not None and run.exists() else None
    engine = AttributionEngine(model, optimizer, engine_config(cfg, recorded), task=CausalLMTask(),
                               process_group=dist.process_group)
    try:
        engine.set_targets(target_batch)
    except BaseException:
        engine.close()
        raise
    traj = Trajectory(
        config=cfg,
        model=model,
        optimizer=optimizer,
        engine=engine,
        order=order,
        chunk_batches=prepared.micro_batches,
        chunk_doc_ids=prepared.chunk_doc_ids,
        target_ids=list(target_ids),
        dist=dist,
    )
    if state is not None:
        restore_state(traj, state)
    return traj


def checkpoint_state(traj: Trajectory) -> dict[str, Any]:
    return {
        "data_order": traj.order.state_dict(),
        "rng": {"torch_cpu": rng_state_to_list(torch.get_rng_state())},
        "scheduler": {"kind": "warmup_cosine", "note": "lr is a pure function of the step"},
        "target_ids": list(traj.target_ids),
    }


def restore_state(traj: Trajectory, state: dict[str, Any]) -> None:
    traj.order.load_state_dict(state["data_order"])
    torch.set_rng_state(rng_state_from_list(state["rng"]["torch_cpu"]))


def _manifest(run_id: str, prepared: Prepared, num_threads: int, dist: DistContext) -> dict[str, Any]:
    cfg = prepared.config
    return {
        "format_version": RUN_FORMAT_VERSION,
        "run_id": run_id,
        "created": utc_now(),
        "versions": software_versions(),
        "config": {**cfg.to_json(), "engine": engine_config(cfg).to_json()},
        "seed": cfg.train.seed,
        "corpus": {
            "n_documents": len(prepared.documents),
            "n_chunks": len(prepared.chunks),
            "sha256": prepared.corpus_sha256,
            "report": prepared.corpus_report,
        },
        "tokenizer": {"sha256": None, "vocab_size": prepared.vocab_size, "source": prepared.tokenizer_source},
        "model": {"architecture": "GPT2LMHeadModel", "sha256": {}},
        "files": {},
        "values": {"order": cfg.attribution.order, **VALUES_META},
        "runtime": {"torch_num_threads": num_threads, "deterministic_algorithms": True, "dtype": "float32",
                    "world_size": dist.world_size, "backend": dist.backend},
        "status": STATUS_TRAINING,
    }


def _write_setup(run: RunDirectory, prepared: Prepared, manifest: dict[str, Any]) -> None:
    write_table(run.corpus_path, prepared.documents, "corpus")
    write_table(run.chunks_path, prepared.chunks_frame(), "chunks")
    write_table(run.targets_path, targets_frame(prepared.targets, REGISTERED_BEFORE), "targets")
    prepared.save_tokenizer(run.tokenizer_path)
    manifest["tokenizer"]["sha256"] = sha256_file(run.tokenizer_path)
    run.write_manifest(manifest)


def train(
    corpus: str | Path | Any,
    run_dir: str | Path,
    config: RunConfig | None = None,
    *,
    targets: list[TargetSpec] | None = None,
    tokenizer: str | Path | None = None,
    threads: int | None = None,
    progress: bool = True,
) -> RunDirectory:
    """Pretrain from scratch with the engine attached; returns the completed run directory.

    corpus: a path load_corpus understands (folder, .jsonl, .parquet, HF dataset folder) or a Corpus.
    targets: registered before training; more can be attributed later by replay (provenance.train.attribute).
    tokenizer: a tokenizer.json to use instead of training a byte-level BPE on the corpus.
    """
    config = (config or RunConfig()).check()
    run = RunDirectory(run_dir)
    dist = distributed.current()  # several ranks under torchrun (WORLD_SIZE > 1), else one process
    distributed.check_world_size(config, dist.world_size)
    with deterministic_runtime(threads) as threads:

        def publish() -> tuple[Prepared, Trajectory]:
            if run.path.exists() and any(run.path.iterdir()):
                raise RunDirectoryError(
                    f"{run.path} already exists; resume it with --resume, choose another --run, or delete it"
                )
            prepared = prepare_fresh(corpus, config, targets or [], tokenizer, progress=progress and dist.rank == 0)
            traj = make_trajectory(prepared, prepared.target_batch, prepared.target_ids, dist=dist)
            try:
                # Publish the run directory (setup + step-0 checkpoint) in one rename: all inputs are valid.
                staging = atomic.staging_dir(run.path)
                try:
                    staged = RunDirectory(staging)
                    _write_setup(staged, prepared, _manifest(run.run_id, prepared, threads, dist))
                    save_checkpoint(staged, 0, traj.model, traj.optimizer, checkpoint_state(traj))
                    atomic.publish_dir(staging, run.path)
                except BaseException:
                    shutil.rmtree(staging, ignore_errors=True)
                    raise
            except BaseException:
                traj.engine.close()
                raise
            return prepared, traj

        # Rank 0 validates the inputs and publishes the run; the other ranks then start from exactly what
        # it recorded (corpus, tokenizer, chunks, targets, step-0 checkpoint).
        published = distributed.on_main(dist, publish, f"create the run directory {run.path}")
        if published is not None:
            prepared, traj = published
        else:
            prepared = prepare_from_run(run, run.read_manifest())
            traj = make_trajectory(prepared, prepared.target_batch, prepared.target_ids, run=run, checkpoint=0,
                                   dist=dist)
        try:
            _train_from(run, traj, prepared, start_step=1, progress=progress)
        finally:
            traj.engine.close()
    return run


def resume(run_dir: str | Path, config: RunConfig | None = None, *, progress: bool = True) -> RunDirectory:
    """Continue a killed run from its latest checkpoint; the result equals an uninterrupted run."""
    run = RunDirectory.open(run_dir, require_complete=False)
    manifest = run.read_manifest()
    if manifest.get("status") == STATUS_COMPLETE:
        raise RunDirectoryError(f"run {run.path} is already complete; nothing to resume")
    recorded = RunConfig.from_json({k: v for k, v in manifest["config"].items() if k != "engine"})
    if config is not None and config != recorded:
        raise RunMismatchError(
            f"the settings given differ from those recorded in {run.manifest_path}: "
            f"{_config_diff(recorded, config)}; resume without changing settings"
        )
    steps = run.checkpoint_steps()
    if not steps:
        raise RunDirectoryError(
            f"run {run.path} has no checkpoint to resume from ({run.checkpoints_dir} is missing or empty); "
            "start the run again"
        )
    last = steps[-1]
    dist = distributed.current()
    recorded_world = distributed.recorded_world_size(manifest)
    if recorded_world != dist.world_size:
        raise RunMismatchError(
            f"run {run.path} was recorded on {recorded_world} rank(s) and this is {dist.world_size}; resume it "
            f"with the same number: torchrun --nproc_per_node {recorded_world} ... (or one process for 1)"
        )
    prepared = prepare_from_run(run, manifest)
    with deterministic_runtime(manifest["runtime"]["torch_num_threads"]):
        state = json.loads((run.checkpoint_dir(last) / "state.json").read_text(encoding="utf-8"))
        if state.get("target_ids") != prepared.target_ids:
            raise RunMismatchError(
                f"checkpoint step {last} was taken with targets {state.get('target_ids')}, "
                f"the run lists {prepared.target_ids}"
            )
        _check_records_cover(run, last)
        traj = make_trajectory(prepared, prepared.target_batch, prepared.target_ids, run=run, checkpoint=last,
                               dist=dist)
        try:
            _train_from(run, traj, prepared, start_step=last + 1, progress=progress)
        finally:
            traj.engine.close()
    return run


def _config_diff(a: RunConfig, b: RunConfig) -> str:
    flat_a, flat_b = _flatten(asdict(a)), _flatten(asdict(b))
    return ", ".join(f"{k}: recorded {flat_a.get(k)!r}, given {flat_b.get(k)!r}"
                     for k in sorted(set(flat_a) | set(flat_b)) if flat_a.get(k) != flat_b.get(k))


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in d.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _check_records_cover(run: RunDirectory, last: int) -> None:
    logged = load_records(run, last)["train_log"]["step"].tolist()
    missing = sorted(set(range(1, last + 1)) - set(logged))
    if missing:
        raise RunDirectoryError(
            f"run {run.path}: the records of steps {missing[0]}..{missing[-1]} are missing (a checkpoint "
            f"folder was deleted; available: {run.checkpoint_steps()}); the run cannot be resumed exactly"
        )


def _train_from(run: RunDirectory, traj: Trajectory, prepared: Prepared, start_step: int, progress: bool) -> None:
    cfg = prepared.config.train
    dist = traj.dist
    # Every rank trains; only rank 0 records and writes (the values it records cover every rank's rows).
    recorder = Recorder(traj.target_ids, prepared.config.attribution.order) if dist.is_main else None
    sketches = None  # projected-gradient sketches for approximate queries (provenance.sketch, docs/posthoc.md)
    if prepared.config.sketch.enabled:
        from provenance.sketch.training import start_session

        recorder, sketches = start_session(run.path / "sketches", traj, prepared.config, start_step, recorder)

    def after_step(step: int) -> None:
        if recorder is not None and step % cfg.checkpoint_every == 0 and step < cfg.steps:
            save_checkpoint(run, step, traj.model, traj.optimizer, checkpoint_state(traj), recorder.flush())

    try:
        if start_step <= cfg.steps:
            run_steps(traj, start_step, cfg.steps, recorder=recorder, after_step=after_step,
                      desc=f"train {run.run_id}", progress=progress)
    finally:
        if sketches is not None:
            sketches.close()

    def write() -> None:
        if sketches is not None:
            sketches.finish()
        earlier = load_records(run, cfg.steps)  # every checkpoint's segment, this session's included
        tail = recorder.flush()
        records = {name: _concat(earlier[name], tail[name]) for name in tail}
        finalize(run, prepared, traj.model, records)

    distributed.on_main(dist, write, f"finish the run directory {run.path}")


def _concat(a: pd.DataFrame, b: pd.DataFrame) -> pd.DataFrame:
    parts = [x for x in (a, b) if len(x)]
    return pd.concat(parts, ignore_index=True) if parts else a


def finalize(run: RunDirectory, prepared: Prepared, model: torch.nn.Module, records: dict[str, pd.DataFrame]) -> None:
    """Write the root tables and the final model, then mark the run complete with every file's hash."""
    steps = prepared.config.train.steps
    logged = sorted(records["train_log"]["step"].tolist())
    if logged != list(range(1, steps + 1)):
        raise RunDirectoryError(
            f"run {run.path}: the train log covers steps {logged[:3]}...{logged[-3:]} instead of 1..{steps}; "
            "a checkpoint's records are missing"
        )
    write_table(run.train_log_path, records["train_log"].sort_values("step", kind="mergesort"), "train_log")
    contributions = records["contributions"].sort_values(["step", "chunk_id", "target_id"], kind="mergesort")
    write_table(run.contributions_path, contributions, "contributions")
    write_table(run.ledger_path, records["ledger"].sort_values(["step", "target_id"], kind="mergesort"), "ledger")
    values = aggregate_values(contributions, prepared.documents["doc_id"].tolist(), prepared.target_ids,
                              prepared.config.attribution.order)
    write_table(run.values_path, values, "values")
    save_final_model(run, model)
    # The checkpoints keep their records/ segments: a run killed anywhere before seal() can resume.
    seal(run, status=STATUS_COMPLETE)


def save_final_model(run: RunDirectory, model: Any) -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    staging = atomic.staging_dir(run.model_dir)
    try:
        model.save_pretrained(staging, safe_serialization=True)
        atomic.publish_dir(staging, run.model_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def seal(run: RunDirectory, status: str) -> dict[str, Any]:
    """Record the hash of every file (and the model's) in the manifest, then write it."""
    manifest = run.read_manifest()
    files = run.file_hashes()
    manifest["files"] = files
    manifest["model"]["sha256"] = {k: v for k, v in files.items() if k.startswith("model/")}
    manifest["tokenizer"]["sha256"] = files.get("tokenizer/tokenizer.json")
    manifest["status"] = status
    manifest["updated"] = utc_now()
    run.write_manifest(manifest)
    return manifest


def read_values(run: RunDirectory) -> pd.DataFrame:
    return read_table(run.values_path, "values")
