"""Data-parallel training on torch.distributed: process-group setup from torchrun, and the few collectives
the trainer needs (see docs/DISTRIBUTED.md for launching, multi-node and the design choices).

Model: every rank holds the whole transcoder (DistributedDataParallel averages gradients), and reads a
disjoint shard of each global batch: the global batch of step s has `batch_tokens` rows, rank r of W gets
rows [r*B/W, (r+1)*B/W). So a W-rank run sees the same global batches as a 1-rank run, and the stream's
checkpointed position is a global one, which is what lets a run resume with a different world size.

What DDP does not synchronize, we do here:
- the dead-latent counters (+N_global for every latent, reset where it fired on *any* rank: MAX of the
  per-rank fired masks) and the JumpReLU threshold (EMA of the MIN over ranks of the per-rank smallest
  selected activation), so every rank holds identical buffers, equal to one process on the whole batch.
  DDP's own per-forward buffer broadcast is switched off (forward_sync_buffers): it would send rank 0's buffers
  every forward, which is redundant once they are identical, and wrong if they were not;
- logged metrics (averaged over ranks), the stop request (Ctrl-C on any rank stops all), the step skip
  decision of the non-finite guard.
Rank 0 writes checkpoints, metrics.jsonl, W&B and the saved transcoder; all ranks read checkpoints on resume.

Nothing here assumes one host: ranks are told their place by torchrun's environment (RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR/PORT from the rendezvous), the device is cuda:LOCAL_RANK.
"""

from __future__ import annotations

import datetime
import os
import sys
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

# collectives wait this long before failing (cache building on rank 0 can take a while)
_TIMEOUT_ENV = "MATRYOSHKA_EXT_DIST_TIMEOUT_S"


def launched_distributed() -> bool:
    """Whether this process was started by torchrun (or another launcher) as one of several ranks."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


@dataclass(frozen=True)
class DistContext:
    """Where this process stands among the ranks that train one transcoder together.

    `group` is the process group (None = the default, all ranks); a world_size-1 context needs no group
    and makes every collective here a no-op, so single-process code paths stay exactly as they were.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    group: Any = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def single(cls) -> DistContext:
        return cls()

    @classmethod
    def current(cls) -> DistContext:
        """The default group's context if torch.distributed is initialized, else a single process."""
        if dist.is_available() and dist.is_initialized():
            return cls(
                rank=dist.get_rank(),
                world_size=dist.get_world_size(),
                local_rank=int(os.environ.get("LOCAL_RANK", "0")),
            )
        return cls()

    # ---------------------------------------------------------------------------------------------- data
    def shard(self, batch: int) -> tuple[int, int]:
        """[start, stop) of this rank's rows in a global batch of `batch` rows (must divide evenly)."""
        if batch % self.world_size:
            raise ValueError(
                f"batch_tokens={batch} must be divisible by the world size {self.world_size} "
                "(every rank takes an equal share of each global batch)"
            )
        n = batch // self.world_size
        return self.rank * n, (self.rank + 1) * n

    # ---------------------------------------------------------------------------------------------- collectives
    def all_reduce(self, t: torch.Tensor, op: str = "sum") -> torch.Tensor:
        """In-place all-reduce of `t` ("sum", "max", "min", "mean"); returns `t`. No-op for one rank."""
        if not self.enabled:
            return t
        if op == "mean":
            dist.all_reduce(t, op=dist.ReduceOp.SUM, group=self.group)
            return t.div_(self.world_size)
        ops = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}
        dist.all_reduce(t, op=ops[op], group=self.group)
        return t

    def all_gather_rows(self, t: torch.Tensor) -> torch.Tensor:
        """Concatenate equal-shaped [n, ...] tensors of all ranks in rank order: [W*n, ...]."""
        if not self.enabled:
            return t
        parts = [torch.empty_like(t) for _ in range(self.world_size)]
        dist.all_gather(parts, t.contiguous(), group=self.group)
        return torch.cat(parts)

    def all_gather_object(self, obj: Any) -> list[Any]:
        """Small picklable objects of every rank, in rank order (used for stream positions)."""
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj, group=self.group)
        return out

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        """Rank `src`'s object on every rank."""
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=src, group=self.group)
        return box[0]

    def any(self, flag: bool, device: torch.device | str = "cpu") -> bool:
        """True on every rank if `flag` is true on any rank (one tiny all-reduce)."""
        if not self.enabled:
            return bool(flag)
        t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=self._device(device))
        return bool(self.all_reduce(t, "max").item())

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier(group=self.group)

    def _device(self, device: torch.device | str) -> torch.device:
        # NCCL only moves CUDA tensors; gloo moves CPU ones
        if dist.get_backend(self.group) == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu") if torch.device(device).type != "cuda" else torch.device(device)


def init_distributed(device: str = "auto") -> tuple[DistContext, torch.device]:
    """Join the process group torchrun describes (no-op for a single process, or when the caller already
    initialized torch.distributed); returns (context, device).

    Backend: NCCL when this rank trains on CUDA, gloo otherwise (CPU; also what the tests use). The device
    is cuda:LOCAL_RANK under CUDA ("auto"/"cuda"), or the configured one (an explicit "cuda:1" is kept,
    for launchers that pin one GPU per process through CUDA_VISIBLE_DEVICES).
    """
    from .trainer import resolve_device

    joined = dist.is_available() and dist.is_initialized()  # e.g. by the caller, with its own init method
    if not (joined or launched_distributed()):
        return DistContext.single(), resolve_device(device)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device)
    if dev.type == "cuda":
        if dev.index is None:
            dev = torch.device("cuda", local_rank % max(torch.cuda.device_count(), 1))
        torch.cuda.set_device(dev)
    if not joined:
        timeout = datetime.timedelta(seconds=float(os.environ.get(_TIMEOUT_ENV, "7200")))
        backend = "nccl" if dev.type == "cuda" else "gloo"
        kw: dict[str, Any] = {"device_id": dev} if backend == "nccl" else {}
        dist.init_process_group(backend=backend, timeout=timeout, **kw)
    return DistContext.current(), dev


def destroy_distributed() -> None:
    """Leave the process group (end of a torchrun'd command)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def end_launched_rank() -> None:
    """After a torchrun'd rank's command succeeded: flush and leave with status 0, without interpreter
    finalization. A gloo worker thread can still be destroying the last collective's work object, whose tensors
    came from Python, while the main thread finalizes; its decref then waits for a GIL that finalization never
    returns, the thread is unwound out of a noexcept destructor, and the rank dies with "terminate called
    without an active exception" (SIGABRT) after finishing (seen in about 1 in 7 runs under CPU load; core dump:
    ProcessGroupGloo::runLoop -> ~AsyncBarrierWork -> TensorImpl::decref_pyobject -> PyThread_exit_thread).
    No-op in a single process."""
    if launched_distributed():
        exit_rank()


def exit_rank() -> None:
    """Flush and end this rank's process with status 0, skipping interpreter finalization (see
    end_launched_rank; also for ranks started by torch.multiprocessing.spawn, which sets no WORLD_SIZE)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def split_layers(layers: list[int], ctx: DistContext) -> list[int]:
    """The layers rank `ctx.rank` trains when layers are spread over ranks: layers[i] goes to rank i % W."""
    return [layer for i, layer in enumerate(layers) if i % ctx.world_size == ctx.rank]
