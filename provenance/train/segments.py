"""Replay a recorded run in checkpoint segments: one range of steps per worker process, then merge.

A replay from checkpoint c_j to c_{j+1} needs nothing from the steps before c_j, so the segments of a run
can be replayed at once. Each worker restores its first checkpoint, replays its steps with the new
targets, checks every step's training loss against train_log.parquet (bit for bit) and its weights
against every checkpoint it reaches (and the final model), and hands its rows back as parquet files in a
private temporary folder; the caller merges them in step order and writes once. Consecutive segments
are grouped into at most ``workers`` blocks of about equal step counts, so each worker starts once.
Workers are local processes (``run_blocks``) or, under torchrun, the ranks themselves (``replay_on_ranks``).

Determinism: a worker runs with the thread count recorded in the manifest. Fewer threads do NOT
reproduce the recorded losses in general (measured: a 4-layer, 256-wide GPT-2 recorded on 2 threads
diverges at step 4 when replayed on 1; tiny models happened to agree), so the speed-up of N workers
on C cores is bounded by C / recorded threads. A run recorded on W ranks (torchrun) is replayed by W
processes per block (a gloo group each), because the sum over ranks is part of the recorded arithmetic.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from provenance import errors
from provenance.config import ConfigError
from provenance.errors import ProvenanceError, ReplayWorkerError, RunMismatchError
from provenance.store.checkpoint import RECORD_TABLES, load_checkpoint_weights, save_checkpoint
from provenance.store.run_dir import RunDirectory
from provenance.store.tables import read_table, write_table
from provenance.train.distributed import DistContext, gather_frames, recorded_world_size
from provenance.train.loop import Recorder, run_steps
from provenance.train.prepare import Prepared, prepare_from_run
from provenance.train.runtime import deterministic_runtime
from provenance.train.targets import TargetSpec
from provenance.train.trainer import checkpoint_state, make_trajectory

WORKER_POLL_SECONDS = 0.5


@dataclass(frozen=True)
class Block:
    """Steps first_step..last_step (inclusive), replayed from the checkpoint at first_step - 1."""

    index: int
    first_step: int
    last_step: int

    @property
    def start_checkpoint(self) -> int:
        return self.first_step - 1

    @property
    def n_steps(self) -> int:
        return self.last_step - self.first_step + 1


def plan_blocks(checkpoints: list[int], steps: int, workers: int) -> list[Block]:
    """Cut steps 1..steps at checkpoints into at most ``workers`` contiguous blocks of about equal size.

    A block can only start right after a checkpoint; with fewer checkpoints than workers, fewer blocks.
    """
    if workers < 1:
        raise ConfigError(f"workers must be >= 1 (got {workers})")
    starts = sorted({c for c in checkpoints if 0 <= c < steps})
    if not starts or starts[0] != 0:
        raise RunMismatchError("the run has no step-0 checkpoint; it cannot be replayed")
    n_blocks = min(workers, len(starts))
    cuts: list[int] = []  # checkpoints where a new block starts (besides 0)
    candidates = starts[1:]
    for k in range(1, n_blocks):
        ideal = k * steps / n_blocks
        free = [c for c in candidates if not cuts or c > cuts[-1]]
        # leave enough candidates for the remaining cuts
        remaining = n_blocks - 1 - k
        usable = free[: len(free) - remaining] if remaining else free
        if not usable:
            break
        cuts.append(min(usable, key=lambda c: (abs(c - ideal), c)))
    bounds = [0, *cuts, steps]
    return [Block(i, bounds[i] + 1, bounds[i + 1]) for i in range(len(bounds) - 1)]


def expected_losses(run: RunDirectory) -> dict[int, float]:
    log = read_table(run.train_log_path, "train_log")
    return dict(zip(log["step"].astype(int).tolist(), log["loss"].astype(float).tolist()))


def replay_range(
    run: RunDirectory,
    manifest: dict[str, Any],
    prepared: Prepared,
    target_batch: Any,
    target_ids: list[str],
    block: Block,
    *,
    dist: DistContext | None = None,
    on_step: Any = None,
    snapshot_step: int | None = None,
    snapshot_dir: Path | None = None,
    progress: bool = True,
) -> dict[str, pd.DataFrame] | None:
    """Replay one block with ``target_ids`` attached; the rows of its steps (rank 0), None on other ranks.

    Raises RunMismatchError at the first step whose loss, or checkpoint whose weights, differ from the
    record. snapshot_step: also save model/optimizer/state after that step (verify re-derives from it).
    """
    dist = dist or DistContext()
    expected = expected_losses(run)
    checkpoints = set(run.checkpoint_steps())
    total = prepared.config.train.steps
    recorded_threads = manifest["runtime"]["torch_num_threads"]
    with deterministic_runtime(recorded_threads):
        if torch.get_num_threads() != recorded_threads:
            raise ReplayWorkerError(
                f"this process runs {torch.get_num_threads()} CPU threads but the run was recorded with "
                f"{recorded_threads}; its losses would not be reproduced bit for bit"
            )
        traj = make_trajectory(prepared, target_batch, target_ids, run=run, checkpoint=block.start_checkpoint,
                               dist=dist)
        try:
            recorder = Recorder(list(target_ids), prepared.config.attribution.order) if dist.is_main else None

            def snapshot(step: int) -> None:
                if dist.is_main and snapshot_dir is not None and step == snapshot_step:
                    save_checkpoint(RunDirectory(snapshot_dir), step, traj.model, traj.optimizer,
                                    checkpoint_state(traj))

            def after_step(step: int) -> None:
                if step in checkpoints:
                    check_weights(load_checkpoint_weights(run, step), traj.model, f"checkpoint step {step}")
                    # the next block starts from this checkpoint's optimizer state: it must be the replayed one
                    check_optimizer_state(run, step, traj.optimizer)
                snapshot(step)
                if on_step is not None:
                    on_step(step)

            snapshot(block.start_checkpoint)
            run_steps(traj, block.first_step, block.last_step, recorder=recorder, expected_losses=expected,
                      after_step=after_step, desc=f"replay {run.run_id} {block.first_step}-{block.last_step}",
                      progress=progress)
            if block.last_step == total:
                from safetensors.torch import load_file

                check_weights(load_file(str(run.model_dir / "model.safetensors")), traj.model, "the final model")
        finally:
            traj.engine.close()
    return recorder.flush() if recorder is not None else None


def check_weights(saved: dict[str, torch.Tensor], model: torch.nn.Module, what: str) -> None:
    current = model.state_dict()
    for name, tensor in saved.items():
        if name not in current or not torch.equal(current[name], tensor):
            raise RunMismatchError(
                f"replayed weights differ from {what} at {name}; the replay is not the recorded run, "
                "so no values were written"
            )


def check_optimizer_state(run: RunDirectory, step: int, optimizer: torch.optim.Optimizer) -> None:
    from safetensors.torch import load_file

    path = run.checkpoint_dir(step) / "optimizer.safetensors"
    saved = load_file(str(path))
    current = {f"state.{index}.{key}": value for index, entry in optimizer.state_dict()["state"].items()
               for key, value in entry.items() if isinstance(value, torch.Tensor)}
    if saved.keys() != current.keys() or any(not torch.equal(current[k], saved[k]) for k in saved):
        raise RunMismatchError(
            f"replayed optimizer state differs from {path}; the replay is not the recorded run, so no values "
            "were written"
        )


# -- worker processes ------------------------------------------------------------------------------------


def _worker(spec: dict[str, Any], queue: Any) -> None:
    """Entry point of one worker process (one rank of one block); reports through ``queue``."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    block = Block(*spec["block"])
    rank, world = spec["rank"], spec["world_size"]
    import torch.distributed as tdist

    try:
        if world > 1:
            tdist.init_process_group("gloo", init_method=spec["rendezvous"], rank=rank, world_size=world)
        dist = DistContext(world, rank, "gloo" if world > 1 else None)
        run = RunDirectory(spec["run"])
        manifest = run.read_manifest()
        extra = [TargetSpec(**t) for t in spec["targets"]]
        prepared = prepare_from_run(run, manifest, extra_targets=extra)
        if spec["registered"]:
            batch, ids = prepared.target_batch, prepared.target_ids
        else:
            batch, ids = prepared.extra_target_batch, [t.target_id for t in extra]
        out = Path(spec["out"]) / f"block_{block.index:04d}"
        records = replay_range(
            run, manifest, prepared, batch, ids, block, dist=dist,
            on_step=(lambda step: queue.put(("step", block.index, rank, step, ""))) if rank == 0 else None,
            snapshot_step=spec.get("snapshot_step"), snapshot_dir=out / "snapshot", progress=False,
        )
        if records is not None:
            for name, frame in records.items():
                write_table(out / f"{name}.parquet", frame, name)
        queue.put(("done", block.index, rank, 0, ""))
    except ProvenanceError as exc:
        queue.put(("error", block.index, rank, type(exc).__name__, str(exc)))
    except BaseException as exc:  # reported, then the parent stops every worker
        queue.put(("error", block.index, rank, type(exc).__name__, traceback.format_exc(limit=8)))
    finally:
        if world > 1 and tdist.is_initialized():
            tdist.destroy_process_group()


def worker_context(mp: Any) -> Any:
    """forkserver with this module preloaded: torch and transformers are imported once (in the server,
    which has run no torch op, so no thread pool exists to be broken by fork) instead of once per worker;
    every worker then sets the recorded thread count itself. spawn where fork is unavailable."""
    if "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    context = mp.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    return context


def _error_class(name: str) -> type[ProvenanceError]:
    cls = getattr(errors, name, None)
    if cls is None and name == "ConfigError":
        cls = ConfigError
    return cls if isinstance(cls, type) and issubclass(cls, ProvenanceError) else ReplayWorkerError


def run_blocks(
    run: RunDirectory,
    blocks: list[Block],
    targets: list[TargetSpec],
    *,
    registered: bool = False,
    snapshot_step: int | None = None,
    progress: bool = True,
    timeout: float | None = None,
) -> Path:
    """Replay ``blocks`` at once in worker processes (W per block for a run recorded on W ranks).

    Returns a temporary folder holding block_NNNN/<table>.parquet (and block_NNNN/snapshot/); the caller
    deletes it. Any worker failure stops every worker, deletes the folder and raises the worker's error
    (same class) naming the block's steps. registered: replay with the run's own targets instead.
    """
    import torch.multiprocessing as mp
    from tqdm.auto import tqdm

    manifest = run.read_manifest()
    world = recorded_world_size(manifest)
    out = Path(tempfile.mkdtemp(prefix="provenance-replay-"))
    context = worker_context(mp)
    queue = context.Queue()
    processes: dict[tuple[int, int], Any] = {}
    target_dicts = [{"target_id": t.target_id, "prompt": t.prompt, "text": t.text} for t in targets]
    try:
        for block in blocks:
            for rank in range(world):
                spec = {
                    "run": str(run.path.resolve()), "block": (block.index, block.first_step, block.last_step),
                    "rank": rank, "world_size": world, "targets": target_dicts, "registered": registered,
                    "rendezvous": f"file://{out}/rendezvous_{block.index:04d}", "out": str(out),
                    "snapshot_step": snapshot_step,
                }
                proc = context.Process(target=_worker, args=(spec, queue), daemon=True)
                proc.start()
                processes[(block.index, rank)] = proc
        _wait(processes, queue, blocks, progress=progress, timeout=timeout, tqdm=tqdm, desc=f"replay {run.run_id}")
    except BaseException:
        for proc in processes.values():
            if proc.is_alive():
                proc.terminate()
        for proc in processes.values():
            proc.join(timeout=10)
        shutil.rmtree(out, ignore_errors=True)
        raise
    for proc in processes.values():
        proc.join(timeout=30)
    return out


def _wait(processes, queue, blocks, *, progress, timeout, tqdm, desc) -> None:
    import queue as queue_module

    by_index = {b.index: b for b in blocks}
    pending = set(processes)
    started = time.monotonic()
    bar = tqdm(total=sum(b.n_steps for b in blocks), desc=f"{desc} ({len(blocks)} workers)", unit="step",
               disable=not progress, dynamic_ncols=True)
    try:
        while pending:
            try:
                kind, index, rank, detail, message = queue.get(timeout=WORKER_POLL_SECONDS)
            except queue_module.Empty:
                for key in sorted(pending):
                    proc = processes[key]
                    if not proc.is_alive() and proc.exitcode not in (0, None):
                        block = by_index[key[0]]
                        raise ReplayWorkerError(
                            f"replay worker for steps {block.first_step}..{block.last_step} (rank {key[1]}) died "
                            f"with exit code {proc.exitcode} before reporting; nothing was written"
                        )
                if timeout is not None and time.monotonic() - started > timeout:
                    raise ReplayWorkerError(
                        f"segment replay did not finish within {timeout:.0f} s; nothing was written"
                    )
                continue
            if kind == "step":
                bar.update(1)
            elif kind == "done":
                pending.discard((index, rank))
            else:
                block = by_index[index]
                raise _error_class(detail)(
                    f"segment steps {block.first_step}..{block.last_step}: {message}"
                )
    finally:
        bar.close()


def read_block_records(folder: Path, blocks: list[Block]) -> dict[str, pd.DataFrame]:
    """The rows every block wrote, concatenated in step order."""
    frames: dict[str, list[pd.DataFrame]] = {name: [] for name in RECORD_TABLES}
    for block in sorted(blocks, key=lambda b: b.first_step):
        for name in RECORD_TABLES:
            path = folder / f"block_{block.index:04d}" / f"{name}.parquet"
            if not path.is_file():
                raise ReplayWorkerError(f"the worker for steps {block.first_step}..{block.last_step} wrote no {name}")
            frames[name].append(read_table(path, name))
    return {name: pd.concat(parts, ignore_index=True) for name, parts in frames.items()}


def replay_on_ranks(
    run: RunDirectory, manifest: dict[str, Any], prepared: Prepared, targets: list[TargetSpec], dist: DistContext,
    *, progress: bool = True,
) -> dict[str, pd.DataFrame] | None:
    """Under torchrun: rank m replays block m of the run's segments (as many blocks as ranks, fewer when
    checkpoints are scarce) on its own, checking its losses and checkpoints; the rows reach rank 0 as
    parquet bytes. Returns every step's rows on rank 0, None on the others. A run recorded on several
    ranks is refused here (its replay needs rank groups: replay it with `attribute` in one process)."""
    world = recorded_world_size(manifest)
    if world > 1:
        raise RunMismatchError(
            f"run {run.path} was recorded on {world} ranks; replay it with `provenance attribute` as one "
            f"process (it starts {world} processes per worker), not under torchrun"
        )
    blocks = plan_blocks(run.checkpoint_steps(), prepared.config.train.steps, dist.world_size)
    mine = blocks[dist.rank] if dist.rank < len(blocks) else None
    records, error = None, None
    if mine is not None:
        try:
            # each rank replays alone: the single-process arithmetic the run was recorded with
            records = replay_range(run, manifest, prepared, prepared.extra_target_batch,
                                   [t.target_id for t in targets], mine, progress=progress and dist.is_main)
        except ProvenanceError as exc:
            error = type(exc)(f"segment steps {mine.first_step}..{mine.last_step}: {exc}")
        except BaseException as exc:  # raised below, once every rank knows
            error = exc
    if not dist.agree(error is None):
        if error is not None:
            raise error
        raise ReplayWorkerError(
            "another rank's segment failed (its error is in that rank's output); nothing was written"
        )
    gathered = gather_frames(records, dist)
    if not dist.is_main:
        return None
    parts = [g for g in gathered if g is not None]
    return {name: pd.concat([g[name] for g in parts], ignore_index=True) for name in RECORD_TABLES}
