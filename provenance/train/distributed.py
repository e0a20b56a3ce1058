"""Ranks that share each optimizer step (torch.distributed): who am I, my shard, the gathered values.

Under ``torchrun`` every rank runs the same trainer. The step's chunk ids come from the same seeded
data order on every rank; rank r trains on the r-th contiguous slice of them, the engine (created with
``process_group=True``) sums the gradients over the ranks before clipping, and the values of every rank's
rows are gathered back into the step's global row order, so the recorded tables do not depend on the
world size. Only rank 0 writes the run directory.

The tensors of the trainer live on the CPU, so the backend is gloo; ``PROVENANCE_DIST_BACKEND`` overrides
it (nccl needs the model and batches on the GPU, which the trainer does not do yet: docs/distributed.md).
"""

from __future__ import annotations

import atexit
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import torch

from provenance.config import ConfigError, RunConfig
from provenance.errors import ProvenanceError, RunDirectoryError

T = TypeVar("T")


@dataclass(frozen=True)
class DistContext:
    """This process's place among the ranks of a step (world_size 1: a plain single-process run)."""

    world_size: int = 1
    rank: int = 0
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def process_group(self) -> Any:
        """What AttributionEngine(process_group=...) takes: the default group, or None."""
        return True if self.enabled else None

    def shard(self, chunk_ids: list[int]) -> list[int]:
        """This rank's contiguous slice of the step's chunk ids (equal sizes: batch_size % world_size == 0)."""
        if not self.enabled:
            return chunk_ids
        per = len(chunk_ids) // self.world_size
        return chunk_ids[self.rank * per : (self.rank + 1) * per]

    def gather_rows(self, local: torch.Tensor) -> torch.Tensor:
        """Concatenate every rank's rows (rank order = the step's row order); every rank gets the result."""
        if not self.enabled:
            return local
        import torch.distributed as dist

        if local.numel() == 0:  # no targets: nothing to send
            return local.new_zeros((local.shape[0] * self.world_size, *local.shape[1:]))
        local = local.contiguous()
        parts = [torch.empty_like(local) for _ in range(self.world_size)]
        dist.all_gather(parts, local)
        return torch.cat(parts)

    def gather_result(self, result: Any) -> Any:
        """A StepResult whose values cover the whole step (the scalars are already global)."""
        if not self.enabled:
            return result
        second = result.values_second
        return replace(
            result,
            values_first=self.gather_rows(result.values_first),
            values_second=None if second is None else self.gather_rows(second),
            per_token=None,
        )

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            dist.barrier()

    def agree(self, ok: bool) -> bool:
        """True when every rank says ok (a collective: every rank must call it)."""
        if not self.enabled:
            return ok
        import torch.distributed as dist

        flag = torch.tensor([0 if ok else 1], dtype=torch.int64)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag.item()) == 0


def backend() -> str:
    return os.environ.get("PROVENANCE_DIST_BACKEND", "gloo")


def current() -> DistContext:
    """The ranks of this process: from an initialized default group, or from torchrun's environment
    (WORLD_SIZE, RANK, MASTER_ADDR/PORT), initializing the default group; a single process otherwise."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return DistContext(dist.get_world_size(), dist.get_rank(), str(dist.get_backend()))
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return DistContext()
    if not dist.is_available():
        raise RunDirectoryError("WORLD_SIZE > 1 but this torch build has no torch.distributed; run one process")
    dist.init_process_group(backend=backend())
    atexit.register(_destroy_default_group)
    return DistContext(dist.get_world_size(), dist.get_rank(), str(dist.get_backend()))


def _destroy_default_group() -> None:
    """Tear down the group this module started, while the interpreter is still whole: left to interpreter
    finalization, gloo's worker threads can abort the process ("terminate called without an active
    exception", SIGABRT) after the work is done, and torchrun then reports the run as failed."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def check_world_size(config: RunConfig, world_size: int) -> None:
    """Every rank takes an equal share of each step's chunks."""
    batch = config.train.batch_size
    if world_size > 1 and batch % world_size:
        raise ConfigError(
            f"train.batch_size ({batch}) must be a multiple of the number of ranks ({world_size}) so each "
            "rank trains an equal shard of the step; change --batch-size or --nproc_per_node"
        )


def recorded_world_size(manifest: dict[str, Any]) -> int:
    """world_size of a recorded run (runs written before it was recorded ran in one process)."""
    return int(manifest.get("runtime", {}).get("world_size", 1))


def on_main(ctx: DistContext, work: Callable[[], T], what: str) -> T | None:
    """Run ``work`` on rank 0 only; every rank raises if it failed (rank 0 re-raises its own error)."""
    error: BaseException | None = None
    result: T | None = None
    if ctx.is_main:
        try:
            result = work()
        except BaseException as exc:  # re-raised below, after the other ranks learn of it
            error = exc
    ok = ctx.agree(error is None)
    if error is not None:
        raise error
    if not ok:
        raise ProvenanceError(f"rank 0 failed to {what} (its error is in rank 0's output); this rank stops too")
    return result


def gather_frames(frames: dict[str, Any] | None, ctx: DistContext) -> list[dict[str, Any] | None]:
    """Every rank's tables (or None), in rank order, on every rank: each table travels as parquet bytes
    (no pickle), so ranks on other nodes need no shared file system."""
    import io

    import pandas as pd
    import torch.distributed as dist

    if not ctx.enabled:
        return [frames]
    names = sorted(frames) if frames is not None else []
    payload = b""
    if frames is not None:
        parts = []
        for name in names:
            buffer = io.BytesIO()
            frames[name].to_parquet(buffer, index=False)
            parts.append(buffer.getvalue())
        header = json.dumps({"names": names, "sizes": [len(x) for x in parts]}).encode()
        payload = len(header).to_bytes(8, "little") + header + b"".join(parts)
    size = torch.tensor([len(payload)], dtype=torch.int64)
    sizes = [torch.zeros(1, dtype=torch.int64) for _ in range(ctx.world_size)]
    dist.all_gather(sizes, size)
    longest = max(int(x.item()) for x in sizes)
    mine = torch.zeros(max(longest, 1), dtype=torch.uint8)
    if payload:
        mine[: len(payload)] = torch.frombuffer(bytearray(payload), dtype=torch.uint8)
    received = [torch.zeros(max(longest, 1), dtype=torch.uint8) for _ in range(ctx.world_size)]
    dist.all_gather(received, mine)
    out: list[dict[str, Any] | None] = []
    for tensor, n in zip(received, (int(x.item()) for x in sizes)):
        if n == 0:
            out.append(None)
            continue
        raw = tensor[:n].numpy().tobytes()
        head = int.from_bytes(raw[:8], "little")
        meta = json.loads(raw[8 : 8 + head])
        offset, tables = 8 + head, {}
        for name, length in zip(meta["names"], meta["sizes"]):
            tables[name] = pd.read_parquet(io.BytesIO(raw[offset : offset + length]))
            offset += length
        out.append(tables)
    return out
