"""The training loop: every update goes through the attribution engine (K = 0 targets included).

One step reads top to bottom: pick the step's chunks from the data order, cut them into micro-batches,
set the step's learning rate, let the engine do forward/backward/clipping/values/AdamW, record.
The same function drives a fresh run, a resumed run, a replay and verify's re-derivation, so there is
exactly one update path.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from provenance.config import RunConfig
from provenance.errors import NonFiniteLossError, RunMismatchError
from provenance.store.tables import empty_frame
from provenance.train.distributed import DistContext
from provenance.train.order import DataOrder
from provenance.train.schedule import learning_rate


@dataclass
class Trajectory:
    """Everything that advances a run by one step; built fresh, from a checkpoint, or for replay."""

    config: RunConfig
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    engine: Any  # provenance.engine.AttributionEngine
    order: DataOrder
    chunk_batches: Callable[[list[int]], list[Any]]  # chunk ids -> micro-batches (LMBatch)
    chunk_doc_ids: list[str]
    target_ids: list[str]
    dist: DistContext = field(default_factory=DistContext)  # ranks sharing each step (torchrun)


@dataclass
class Recorder:
    """Collects the rows of train_log, contributions and ledger for the steps run since the last flush."""

    target_ids: list[str]
    order: int
    _log: list[dict[str, Any]] = field(default_factory=list)
    _contrib: list[pd.DataFrame] = field(default_factory=list)
    _ledger: list[pd.DataFrame] = field(default_factory=list)

    def add(self, step: int, chunk_ids: list[int], doc_ids: list[str], result: Any, seconds: float) -> None:
        self._log.append(
            {
                "step": step,
                "loss": float(result.loss),
                "tokens": int(result.n_tokens),
                "lr": float(result.lr),
                "grad_norm": float(result.grad_norm),
                "clip_factor": float(result.clip_factor),
                "seconds": seconds,
            }
        )
        k = len(self.target_ids)
        if k == 0:
            return
        first = result.values_first.detach().to(torch.float64).cpu().numpy()
        second = (
            result.values_second.detach().to(torch.float64).cpu().numpy()
            if result.values_second is not None
            else np.full_like(first, np.nan)
        )
        rows = len(chunk_ids)
        if first.shape != (rows, k):
            raise RunMismatchError(f"engine returned values of shape {first.shape}, expected {(rows, k)}")
        self._contrib.append(
            pd.DataFrame(
                {
                    "step": np.full(rows * k, step, dtype=np.int64),
                    "doc_id": np.repeat(np.asarray(doc_ids, dtype=object), k),
                    "chunk_id": np.repeat(np.asarray(chunk_ids, dtype=np.int64), k),
                    "target_id": np.tile(np.asarray(self.target_ids, dtype=object), rows),
                    "value_first_order": first.reshape(-1),
                    "value_second_order": second.reshape(-1),
                }
            )
        )
        recorded = second if self.order == 2 else first
        self._ledger.append(
            pd.DataFrame(
                {
                    "step": np.full(k, step, dtype=np.int64),
                    "target_id": list(self.target_ids),
                    "lr": np.full(k, float(result.lr)),
                    "clip_factor": np.full(k, float(result.clip_factor)),
                    "target_loss": result.target_loss.detach().to(torch.float64).cpu().numpy(),
                    "attributed_sum": recorded.sum(axis=0),
                    "attributed_sum_first_order": first.sum(axis=0),
                    "history_term": _as_numpy(result.history_term, k),
                }
            )
        )

    def flush(self) -> dict[str, pd.DataFrame]:
        """Return the collected rows as tables and start empty."""
        frames = {
            "train_log": pd.DataFrame(self._log) if self._log else empty_frame("train_log"),
            "contributions": pd.concat(self._contrib, ignore_index=True) if self._contrib else empty_frame("contributions"),
            "ledger": pd.concat(self._ledger, ignore_index=True) if self._ledger else empty_frame("ledger"),
        }
        self._log, self._contrib, self._ledger = [], [], []
        return frames


def _as_numpy(value: Any, k: int) -> np.ndarray:
    if value is None:
        return np.full(k, np.nan)
    if isinstance(value, torch.Tensor):
        return value.detach().to(torch.float64).cpu().numpy().reshape(k)
    return np.asarray(value, dtype=np.float64).reshape(k)


def losses_match(replayed: float, recorded: float) -> bool:
    """Replay must reproduce the recorded loss bit for bit (same machine, deterministic kernels)."""
    return replayed == recorded


def run_steps(
    traj: Trajectory,
    first_step: int,
    last_step: int,
    *,
    recorder: Recorder | None = None,
    expected_losses: dict[int, float] | None = None,
    after_step: Callable[[int], None] | None = None,
    desc: str = "train",
    progress: bool = True,
) -> None:
    """Run optimizer steps first_step..last_step (1-based, inclusive).

    expected_losses: the recorded loss of each step (replay/verify); any difference raises
    RunMismatchError at that step, before its values are kept.
    after_step: called after each step (checkpointing).
    """
    cfg = traj.config.train
    dist = traj.dist
    bar = tqdm(total=last_step - first_step + 1, desc=desc, unit="step", disable=not (progress and dist.is_main),
               dynamic_ncols=True)
    try:
        for step in range(first_step, last_step + 1):
            started = time.perf_counter()
            # 1. the step's players: chunks from the seeded data order (this rank's shard of them when
            #    several ranks share the step), cut into micro-batches
            chunk_ids = traj.order.next_batch()
            micro_batches = traj.chunk_batches(dist.shard(chunk_ids))
            # 2. the step's learning rate (warmup + cosine); the engine reads it from the param groups
            lr = learning_rate(step, cfg)
            for group in traj.optimizer.param_groups:
                group["lr"] = lr
            # 3. forward, backward, clipping, values, AdamW update, zero_grad: all in the engine
            result = dist.gather_result(traj.engine.step(micro_batches))  # values of every rank's rows
            seconds = time.perf_counter() - started
            loss = float(result.loss)
            if not math.isfinite(loss):
                raise NonFiniteLossError(
                    f"training loss is {loss} at step {step}; lower --lr or check the corpus"
                )
            if expected_losses is not None:
                recorded = expected_losses.get(step)
                if recorded is None or not losses_match(loss, recorded):
                    raise RunMismatchError(
                        f"replay diverged at step {step}: training loss {loss!r} vs recorded {recorded!r}. "
                        "The replay is not the recorded run (different data, config, software versions "
                        "or thread count); its values would be meaningless, so none were written"
                    )
            # 4. record the step's rows (train log, contributions per chunk and target, ledger)
            if recorder is not None:
                doc_ids = [traj.chunk_doc_ids[c] for c in chunk_ids]
                recorder.add(step, chunk_ids, doc_ids, result, seconds)
            if after_step is not None:
                after_step(step)
            tokens = int(result.n_tokens)
            bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{tokens / max(seconds, 1e-9):,.0f}", refresh=False)
            bar.update(1)
    finally:
        bar.close()
