"""A scripted stand-in for LiveEngine: fixed records, commands answered like the real trainer.

Every number is fixed, so Pilot and snapshot tests see the same dashboard on every run.
"""

from __future__ import annotations

import copy
import math
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from h2q_tui.config import resolve
from h2q_tui.training import commands, events

OnRecord = Callable[[dict[str, Any]], None]

FINAL_STEP = 40
TOKENS_PER_STEP = 128  # tiny preset: batch 4 x context 32
STEP_S = 0.05
TRAIN_BYTES = 36_000
LR = 2e-3
CHECKPOINT_BYTES = 1_234_567
GIB = 1024**3
PRECISION_REASON = "this CPU has no fast bf16 (no AMX, no AVX512-BF16)"


def scripted_loss(step: int, floor: float = 2.0, scale: float = 3.5) -> float:
    """A decreasing train loss, rounded so the cards show fixed digits."""
    return round(floor + scale * math.exp(-step / 12), 4)


def step_record(step: int, loss: float, lr: float = LR) -> dict[str, Any]:
    tokens = step * TOKENS_PER_STEP
    return events.StepCompleted(
        step=step,
        tokens=tokens,
        time=round(step * STEP_S, 4),
        train_loss_nats=loss,
        train_bpb=events.bits_per_byte(loss),
        aux_loss=0.0012,
        penalty=1.2,
        grad_norm=round(1.5 - step / 100, 4),
        energy=round(10.0 + step / 10, 2),
        step_ms=STEP_S * 1000,
        tokens_per_s=TOKENS_PER_STEP / STEP_S,
        lr=lr,
        epoch=0,
        data_progress=tokens / TRAIN_BYTES,
        rss_bytes=300_000_000,
    ).to_record()


def horizon_record(step: int, val: float, train: float) -> dict[str, Any]:
    return events.EvalCompleted(
        step,
        step * TOKENS_PER_STEP,
        round(step * STEP_S, 4),
        "horizon",
        val,
        events.bits_per_byte(val),
        train,
        round(val - train, 4),
    ).to_record()


def heldout_record(step: int, val: float) -> dict[str, Any]:
    return events.EvalCompleted(
        step,
        step * TOKENS_PER_STEP,
        round(step * STEP_S, 4),
        "heldout",
        val,
        events.bits_per_byte(val),
    ).to_record()


def checkpoint_record(step: int) -> dict[str, Any]:
    # A relative path: the event log (and so the snapshots) must not show a tmp dir.
    return events.CheckpointSaved(
        step, f"checkpoints/step-{step:08d}", CHECKPOINT_BYTES
    ).to_record()


def run_started_record(
    run_id: str = "fake00000001", overrides: list[str] | None = None, start_step: int = 0
) -> dict[str, Any]:
    config = resolve("tiny", ["train.max_steps=100", *(overrides or [])]).to_dict()
    return events.RunStarted(
        run_id=run_id,
        n_params=77_320,
        config=config,
        preset="tiny",
        train_source="fake-corpus.txt",
        heldout_source="fake-corpus.txt (last 10%)",
        train_bytes=TRAIN_BYTES,
        heldout_bytes=4_000,
        device="cpu",
        threads=1,
        start_step=start_step,
        time=round(start_step * STEP_S, 4),
        started_at="2024-01-01T00:00:00+00:00",
        precision="fp32",
        precision_reason=PRECISION_REASON,
        machine="Fake CPU 2.0GHz",
    ).to_record()


def scripted_records(
    run_id: str = "fake00000001",
    overrides: list[str] | None = None,
    floor: float = 2.0,
    steps: int = FINAL_STEP,
) -> list[dict[str, Any]]:
    """run_started, ``steps`` steps, horizon evals every 10 steps, held-out every 20,
    a sample at step 20 and a checkpoint at the last step."""
    records = [run_started_record(run_id, overrides)]
    chunk: list[float] = []
    for step in range(1, steps + 1):
        loss = scripted_loss(step, floor)
        chunk.append(loss)
        records.append(step_record(step, loss))
        if step % 10 == 0:
            train = round(sum(chunk) / len(chunk), 4)
            records.append(horizon_record(step, round(train + 0.15, 4), train))
            chunk = []
        if step % 20 == 0:
            records.append(heldout_record(step, round(loss + 0.25, 4)))
        if step == 20:
            records.append(events.SampleReady(step, "The quick brown fox thinks").to_record())
    records.append(checkpoint_record(steps))
    return records


def system_records(count: int, with_gpu: bool = True) -> list[dict]:
    """Fixed `system` records, one a step from step 1 (one GPU unless ``with_gpu`` is False)."""
    out = []
    for step in range(1, count + 1):
        wave = math.sin(step / 4)
        out.append(
            events.SystemSampled(
                step=step,
                tokens=step * 128,
                time=round(step * 0.05, 4),
                host_cpu_percent=round(55 + 35 * wave, 1),
                process_cpu_percent=round(120 + 60 * wave, 1),
                process_rss_bytes=(300 + 5 * step) * 1024**2,
                host_ram_used_bytes=(8 * GIB + step * 64 * 1024**2),
                host_ram_total_bytes=32 * GIB,
                gpu_util_percent=round(60 + 30 * math.cos(step / 3), 1) if with_gpu else None,
                gpu_memory_used_bytes=(4 * GIB + step * 50 * 1024**2) if with_gpu else None,
                gpu_memory_total_bytes=24 * GIB if with_gpu else None,
                gpus=1 if with_gpu else 0,
            ).to_record()
        )
    return out


class FakeEngine:
    """Has LiveEngine's interface (h2q_tui.app.engine_link.Engine); plays a fixed script.

    ``run`` emits the script, sets ``script_done``, then answers commands from its queue
    until Stop, ``close()``, the Textual worker running it being cancelled (app exit), or
    ``max_idle_s`` without a command. Commands wait while ``answering`` is cleared (a test
    can look at the dashboard between a key and the engine's answer). ``previous`` stands
    for a resumed run's metrics.jsonl (``previous_records``, as LiveEngine has). ``TakeSnapshot`` hands ``deliver`` a copy of ``model``
    (in eval mode, like the trainer's) at the current step; without a model it is ignored.
    """

    def __init__(
        self,
        run_dir: Path,
        name: str = "fake-run",
        script: list[dict[str, Any]] | None = None,
        max_idle_s: float = 60.0,
        model: Any = None,
        previous: list[dict[str, Any]] | None = None,
        resume_step: int | None = None,
    ) -> None:
        self.name = name
        self.run_dir = Path(run_dir)
        self.script = scripted_records() if script is None else script
        self.max_idle_s = max_idle_s
        self.model = model
        self.commands: queue.Queue = queue.Queue()
        self.received: list[commands.Command] = []
        self.emitted: list[dict[str, Any]] = []
        self.script_done = threading.Event()
        self.finished = threading.Event()
        self._closed = threading.Event()
        self.paused = False
        self.lr = LR
        self.previous, self.resume_step = previous, resume_step
        self.answering = threading.Event()
        self.answering.set()
        self.tokenizer = None  # bytes
        self.train_config = None  # no budget or thread count before step 1

    def request_stop(self, reason: str) -> None:
        """Stop and save, as the trainer does after its current step."""
        self.send(commands.Stop(reason))

    def previous_records(self) -> tuple[list[dict[str, Any]], int]:
        return list(self.previous or []), 0

    def send(self, command: commands.Command) -> None:
        self.commands.put(command)

    def close(self) -> None:
        self._closed.set()

    @property
    def step(self) -> int:
        steps = [r["step"] for r in self.emitted if "step" in r]
        return steps[-1] if steps else 0

    def run(self, on_record: OnRecord) -> str:
        def emit(record: dict[str, Any]) -> None:
            self.emitted.append(record)
            on_record(record)

        try:
            for record in self.script:
                emit(record)
            self.script_done.set()
            return self._serve(emit)
        finally:
            self.finished.set()

    def _serve(self, emit: OnRecord) -> str:
        idle_since = time.monotonic()
        while not self._closed.is_set():
            if _worker_cancelled():
                return "cancelled"
            if time.monotonic() - idle_since > self.max_idle_s:
                return "idle"
            try:
                command = self.commands.get(timeout=0.05)
            except queue.Empty:
                continue
            while not self.answering.wait(timeout=0.05):  # a test holds the answer back
                if self._closed.is_set() or _worker_cancelled():
                    return "closed"
            idle_since = time.monotonic()
            self.received.append(command)
            reason = self._handle(command, emit)
            if reason:
                return reason
        return "closed"

    def _handle(self, command: commands.Command, emit: OnRecord) -> str | None:
        step = self.step
        if isinstance(command, commands.Pause) and not self.paused:
            self.paused = True
            emit(events.RunPaused(step).to_record())
        elif isinstance(command, commands.Resume) and self.paused:
            self.paused = False
            emit(events.RunResumed(step).to_record())
        elif isinstance(command, commands.SaveNow):
            emit(checkpoint_record(step))
        elif isinstance(command, commands.SampleNow):
            emit(events.SampleReady(step, "a sample on request").to_record())
        elif isinstance(command, commands.ScaleLearningRate):
            self.lr *= command.factor
            emit(events.LearningRateChanged(step, self.lr, self.lr / LR).to_record())
        elif isinstance(command, commands.TakeSnapshot) and self.model is not None:
            snapshot = copy.deepcopy(self.model).eval()
            snapshot.requires_grad_(False)
            command.deliver(snapshot, step)
        elif isinstance(command, commands.Stop):
            emit(checkpoint_record(step))
            tokens = step * TOKENS_PER_STEP
            emit(
                events.RunFinished(
                    step, tokens, round(step * STEP_S, 4), command.reason
                ).to_record()
            )
            return command.reason
        return None


def _worker_cancelled() -> bool:
    """True when this thread is a Textual worker that was cancelled (the app is exiting)."""
    from textual.worker import NoActiveWorker, get_current_worker

    try:
        return get_current_worker().is_cancelled
    except NoActiveWorker:
        return False
