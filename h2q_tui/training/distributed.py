"""Training on several processes with torchrun: DistributedDataParallel, gloo on CPU, NCCL on GPU.

``torchrun --nproc_per_node=N -m h2q_tui --no-ui ...`` starts N copies of the headless runner
with RANK / WORLD_SIZE / LOCAL_RANK (and the rendezvous address) in their environment;
``join`` turns that into a process group and a ``World``. Without torchrun the world is one
process and every method here is free (no collective is ever called).

How a run is split: every rank builds the same sampler over the same data, so all ranks hold
the same global batch of ``train.batch_size`` parallel streams; rank r trains on its own rows
``[r·b, (r+1)·b)`` with ``b = batch_size / N``. DDP averages the gradients, so one step equals
the one-process step on the whole batch within float rounding, the data order does not depend
on N, and the sampler state rank 0 saves is every rank's. Rank 0 alone writes metrics.jsonl
and checkpoints (of the unwrapped module); the other ranks emit nothing. Anything that ends the
run (a limit, a signal, NaN weights, the memory budget) is agreed on by all ranks each step, so
no rank waits forever in a collective the others left.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from h2q_tui.errors import UserError
from h2q_tui.system.stop_signals import STOP_SIGNALS

# Stop reasons all ranks can agree on, in rising priority: a signal outranks a limit, and
# Ctrl-C outranks SIGTERM, which outranks SIGHUP (the table lists them highest first).
REASONS = (
    "",
    "max_steps",
    "max_seconds",
    "memory",
    "nan",
    "stopped",
    *(stop.reason for stop in reversed(STOP_SIGNALS)),
)
TIMEOUT = datetime.timedelta(minutes=30)  # a rank that waits this long in a collective fails


@dataclass(frozen=True)
class World:
    """This process's place in a torchrun job (rank 0 of 1 without torchrun)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    backend: str = ""

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes the log and the checkpoints."""
        return self.rank == 0

    def describe(self) -> str:
        if not self.distributed:
            return "1 process"
        return f"{self.size} processes (DistributedDataParallel over {self.backend})"

    def rows(self, batch: int) -> slice:
        """This rank's rows of a global batch of ``batch`` streams."""
        share = batch // self.size
        return slice(self.rank * share, (self.rank + 1) * share)

    def check_batch(self, batch: int) -> None:
        if batch % self.size:
            raise UserError(
                f"train.batch_size {batch} does not split over {self.size} processes: use a "
                f"multiple of {self.size} (each process trains on batch_size / processes windows)"
            )

    def device(self, device: torch.device) -> torch.device:
        """One GPU per local rank; a CPU device as it is."""
        if self.distributed and device.type == "cuda":
            torch.cuda.set_device(self.local_rank)
            return torch.device("cuda", self.local_rank)
        return device

    def wrap(self, model: nn.Module) -> nn.Module:
        """The module training calls: DDP around ``model`` when distributed, else ``model``."""
        if not self.distributed:
            return model
        device_ids = [self.local_rank] if self.backend == "nccl" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)

    def sum(self, values: list[float], device: torch.device) -> list[float]:
        """Element-wise sum over ranks (the values themselves with one process)."""
        if not self.distributed:
            return values
        tensor = torch.tensor(values, dtype=torch.float64, device=self._comm_device(device))
        dist.all_reduce(tensor)
        return tensor.tolist()

    def agree(self, reason: str | None, device: torch.device) -> str | None:
        """The stop reason of whichever rank has the most pressing one (None: go on)."""
        if not self.distributed:
            return reason
        code = REASONS.index(reason if reason in REASONS else "stopped") if reason else 0
        tensor = torch.tensor([code], dtype=torch.int64, device=self._comm_device(device))
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return REASONS[int(tensor.item())] or None

    def any(self, flag: bool, device: torch.device) -> bool:
        """True on every rank when it is true on one."""
        if not self.distributed:
            return flag
        tensor = torch.tensor([int(flag)], dtype=torch.int64, device=self._comm_device(device))
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return bool(tensor.item())

    def share(self, value: object) -> object:
        """Rank 0's ``value`` on every rank (any picklable object)."""
        if not self.distributed:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def close(self, wait: bool = True) -> None:
        """Tear the process group down on every way out (a process that exits with it alive
        dies with SIGABRT: "terminate called without an active exception"). ``wait``: first
        wait for the other ranks — at the end of a run rank 0 still evaluates and saves, and a
        rank that tore its group down meanwhile died the same way."""
        if not (self.distributed and dist.is_initialized()):
            return
        if wait:
            with contextlib.suppress(RuntimeError):  # a peer that is gone already
                dist.barrier()
        dist.destroy_process_group()

    def _comm_device(self, device: torch.device) -> torch.device:
        return device if self.backend == "nccl" else torch.device("cpu")


SINGLE = World()


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1") or "1") > 1


def join(device: torch.device) -> World:
    """The process group torchrun asked for (NCCL on a CUDA device, else gloo); SINGLE without it."""
    if not launched_by_torchrun():
        return SINGLE
    try:
        rank, size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    except (KeyError, ValueError) as exc:
        raise UserError(
            f"WORLD_SIZE is set but RANK/LOCAL_RANK are not ({exc}): start it with torchrun"
        ) from None
    backend = "nccl" if device.type == "cuda" else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    try:
        dist.init_process_group(backend, rank=rank, world_size=size, timeout=TIMEOUT)
    except (RuntimeError, ValueError) as exc:  # rendezvous unreachable, bad address
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"cannot join the torchrun process group ({backend}): {first}") from None
    return World(rank, size, local_rank, backend)
