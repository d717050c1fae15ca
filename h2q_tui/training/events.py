"""Typed events the engine emits (past tense); the JSONL writer, console and TUI consume them.

Every event has ``to_record()`` → the JSON object written to ``metrics.jsonl``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

LN2 = math.log(2.0)


def bits_per_byte(nats: float) -> float:
    """Convert nats per byte to bits per byte."""
    return nats / LN2


@dataclass(frozen=True)
class Event:
    name: ClassVar[str] = "event"

    def to_record(self) -> dict[str, Any]:
        return {"event": self.name, **dataclasses.asdict(self)}


@dataclass(frozen=True)
class RunStarted(Event):
    name: ClassVar[str] = "run_started"
    run_id: str
    n_params: int
    config: dict[str, Any]
    preset: str
    train_source: str
    heldout_source: str
    train_bytes: int
    heldout_bytes: int
    device: str
    threads: int
    start_step: int
    time: float
    started_at: str
    precision: str = "fp32"  # fp32 | bf16 | fp16, as chosen for this machine
    precision_reason: str = ""  # e.g. "this CPU has no fast bf16 (no AMX, no AVX512-BF16)"
    machine: str = ""  # CPU model (and GPU) the run trains on
    processes: int = 1  # torchrun ranks training together (DistributedDataParallel)
    threads_reason: str = ""  # why this many threads: "set by you (…)", "auto: timing …"


@dataclass(frozen=True)
class ThreadsChosen(Event):
    """Auto threads chose a count from timed steps (at the start, and when step times drift)."""

    name: ClassVar[str] = "threads"
    step: int
    threads: int
    reason: str  # e.g. "auto (measuring at the start): 410 ms a step on 1 thread, …"


@dataclass(frozen=True)
class StepCompleted(Event):
    name: ClassVar[str] = "step"
    step: int
    tokens: int
    time: float  # seconds of training wall time since the run began (across resumes)
    train_loss_nats: float  # cross-entropy only
    train_bpb: float
    aux_loss: float  # weighted penalty added to the optimised loss, shown apart from CE
    penalty: float  # unweighted orthogonality penalty
    grad_norm: float  # before clipping
    energy: float  # mean L2 norm of the final hidden state (a readout, not conserved)
    step_ms: float
    tokens_per_s: float
    lr: float
    epoch: int
    data_progress: float  # fraction of the current epoch trained on
    rss_bytes: int
    cuda_allocated_bytes: int | None = None
    cuda_reserved_bytes: int | None = None


@dataclass(frozen=True)
class SystemSampled(Event):
    """The system monitor's latest readings, logged after a step at most every
    ``log.system_interval_s`` seconds; step, tokens and time are that step's."""

    name: ClassVar[str] = "system"
    step: int
    tokens: int
    time: float  # the step's training time: the same x axis as the step records
    host_cpu_percent: float | None = None  # the whole machine, 0-100
    process_cpu_percent: float | None = None  # the training process (100 = one core)
    process_rss_bytes: int | None = None
    host_ram_used_bytes: int | None = None  # total - available
    host_ram_total_bytes: int | None = None
    gpu_util_percent: float | None = None  # mean over the GPUs NVML sees
    gpu_memory_used_bytes: int | None = None  # summed over them
    gpu_memory_total_bytes: int | None = None
    gpus: int = 0  # how many GPUs NVML sees


@dataclass(frozen=True)
class EvalCompleted(Event):
    name: ClassVar[str] = "eval"
    step: int
    tokens: int
    time: float
    split: str  # "horizon" (next chunk) or "heldout" (never trained on)
    val_loss_nats: float
    val_bpb: float
    train_loss_nats: float | None = None  # horizon: mean train CE of the chunk just trained
    diff_nats: float | None = None  # horizon: Val − Train


@dataclass(frozen=True)
class SampleReady(Event):
    name: ClassVar[str] = "sample"
    step: int
    text: str


@dataclass(frozen=True)
class CheckpointSaved(Event):
    name: ClassVar[str] = "checkpoint"
    step: int
    path: str
    checkpoint_bytes: int


@dataclass(frozen=True)
class RunPaused(Event):
    name: ClassVar[str] = "paused"
    step: int


@dataclass(frozen=True)
class RunResumed(Event):
    name: ClassVar[str] = "resumed"
    step: int


@dataclass(frozen=True)
class LearningRateChanged(Event):
    name: ClassVar[str] = "lr_changed"
    step: int
    lr: float
    lr_scale: float


@dataclass(frozen=True)
class RankGrown(Event):
    name: ClassVar[str] = "rank_grown"
    step: int
    rank: int  # the FFN layers' Kronecker rank after growing
    new_parameters: int
    lr: float


@dataclass(frozen=True)
class AlarmRaised(Event):
    name: ClassVar[str] = "alarm"
    step: int
    kind: str  # "nan" | "divergence" | "memory" (>= 90 % of a budget) | "memory_over" (> 100 %)
    message: str


@dataclass(frozen=True)
class MemoryAlarmRaised(AlarmRaised):
    """An ``alarm`` record about a memory budget, with the figures beside the message."""

    resource: str = "RAM"  # RAM (this process's RSS) | VRAM (CUDA memory reserved)
    used_bytes: int = 0
    budget_bytes: int = 0


@dataclass(frozen=True)
class NoticeGiven(Event):
    """A status a person should see at once ("stopping: saving checkpoint…")."""

    name: ClassVar[str] = "notice"
    step: int
    message: str


@dataclass(frozen=True)
class ProgressReported(Event):
    """Progress of a long task between steps (held-out eval, horizon validation)."""

    name: ClassVar[str] = "progress"
    step: int
    task: str  # "held-out eval" | "horizon validation" | ...
    done: int
    total: int


@dataclass(frozen=True)
class RunFinished(Event):
    name: ClassVar[str] = "run_finished"
    step: int
    tokens: int
    time: float
    reason: str  # max_steps | max_seconds | stopped | interrupted | terminated | hangup | nan | ...


@dataclass(frozen=True)
class RunFailed(Event):
    name: ClassVar[str] = "run_failed"
    step: int
    message: str
    extra: dict[str, Any] = field(default_factory=dict)
