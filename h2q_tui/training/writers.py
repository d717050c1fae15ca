"""Two consumers of engine events: the append-only metrics.jsonl writer and the console printer."""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

from h2q_tui.config import NO_LIMIT
from h2q_tui.errors import UserError, write_error
from h2q_tui.system.thread_choice import plural
from h2q_tui.training import events

METRICS_FILE = "metrics.jsonl"


def _clean(value):
    """JSON has no NaN/Inf: write them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    return value


class JsonlWriter:
    """Appends one JSON object per event to RUN_DIR/metrics.jsonl, one whole line per write.

    Each record is a single ``os.write`` on an O_APPEND descriptor, so tailers never see a
    half-written record. A write that fails (disk full) is cut back off the file, so the log
    never keeps a torn last line that would swallow the next record; the error is raised once
    as a one-line UserError and later records are dropped. A torn last line left by a killed
    process is closed with a newline on open.
    """

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / METRICS_FILE
        try:
            self._fd: int | None = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
            self._close_torn_line()
        except OSError as exc:
            raise write_error(METRICS_FILE, self.path.parent, exc) from None
        self.failed: UserError | None = None

    def _close_torn_line(self) -> None:
        size = os.fstat(self._fd).st_size
        if size == 0:
            return
        with open(self.path, "rb") as handle:
            handle.seek(size - 1)
            if handle.read(1) != b"\n":
                os.write(self._fd, b"\n")

    def __call__(self, event: events.Event) -> None:
        if self._fd is None or self.failed is not None:
            return
        line = (json.dumps(_clean(event.to_record()), separators=(",", ":")) + "\n").encode()
        size = os.fstat(self._fd).st_size
        try:
            written = os.write(self._fd, line)
            if written != len(line):
                raise OSError(errno.ENOSPC, "short write (disk full?)")
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, size)
            self.failed = write_error(METRICS_FILE, self.path.parent, exc)
            raise self.failed from None

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class ConsolePrinter:
    """Readable ``--no-ui`` lines, in the spirit of the source heartbeat.

    A step line every ``log_interval`` steps, for the first step of a run (or resume), and
    whenever ``heartbeat_s`` seconds of wall time have passed since the last line printed,
    so a slow model still shows a sign of life every 10 s; its train loss is the mean over
    the steps since the previous line, and says so. Notices ("stopping: saving
    checkpoint…") are printed at once; progress of long tasks between steps ("held-out eval
    12/48") once such a task has run ``progress_interval_s`` seconds, and then at most that
    often. ``clock`` is injectable for tests.
    """

    def __init__(
        self,
        log_interval: int,
        max_steps: int = NO_LIMIT,
        stream: IO[str] | None = None,
        clock: Callable[[], float] = time.monotonic,
        heartbeat_s: float = 10.0,
        progress_interval_s: float = 2.0,
    ) -> None:
        self.log_interval, self.max_steps = max(1, log_interval), max_steps
        self.stream = stream or sys.stdout
        self.clock, self.heartbeat_s, self.progress_interval_s = (
            clock,
            heartbeat_s,
            progress_interval_s,
        )
        self._loss_sum, self._loss_count = 0.0, 0
        self._window_first_step = 0  # the first step whose loss is in the sum
        self._last_line = clock()
        self._first_step_pending = True
        # task -> (when it began or was last printed, last done, printed yet): throttling
        self._progress: dict[str, tuple[float, int, bool]] = {}

    def _print(self, text: str) -> None:
        print(text, file=self.stream, flush=True)
        self._last_line = self.clock()

    def __call__(self, event: events.Event) -> None:
        handler = getattr(self, f"_on_{event.name}", None)
        if handler is not None:
            handler(event)

    def _on_run_started(self, e: events.RunStarted) -> None:
        self._first_step_pending = True
        self._print(f"parameters: {e.n_params:,}")
        model = e.config["model"]
        self._print(
            f"model {model['family']} d={model['d_model']} layers={model['n_layers']} ctx={model['context']} | "
            f"device {e.device}"
            + (f" x{e.processes} processes (DDP)" if e.processes > 1 else "")
            + f" | data {e.train_source} ({e.train_bytes:,} bytes) | "
            f"held-out {e.heldout_source} ({e.heldout_bytes:,} bytes)"
            + (f" | resumed at step {e.start_step}" if e.start_step else "")
        )
        precision = f"precision {e.precision}" + (
            f" — {e.precision_reason}" if e.precision_reason else ""
        )
        self._print(precision + (f" | machine {e.machine}" if e.machine else ""))
        if e.threads_reason:
            self._print(f"threads {plural(e.threads)} — {e.threads_reason}")

    def _on_threads(self, e: events.ThreadsChosen) -> None:
        self._print(f"step {e.step}: threads {plural(e.threads)} — {e.reason}")

    def _on_step(self, e: events.StepCompleted) -> None:
        if self._loss_count == 0:
            self._window_first_step = e.step
        self._loss_sum += e.train_loss_nats
        self._loss_count += 1
        due = (
            e.step % self.log_interval == 0
            or self._first_step_pending
            or self.clock() - self._last_line >= self.heartbeat_s
        )
        if not due:
            return
        self._first_step_pending = False
        self._progress.clear()  # a task's progress lines belong to the wait before this step
        mean, first = self._loss_sum / self._loss_count, self._window_first_step
        self._loss_sum, self._loss_count = 0.0, 0
        total = f"/{self.max_steps}" if self.max_steps >= 0 else ""
        # the loss is the mean over the steps since the last line, and says which steps
        steps = f"step {e.step}" if first == e.step else f"mean of steps {first}-{e.step}"
        self._print(
            f"step {e.step}{total} | train {mean:.4f} nats {events.bits_per_byte(mean):.3f} bpb "
            f"({steps}) | "
            f"pen {e.aux_loss:.4f} | grad {e.grad_norm:.2f} | energy {e.energy:.1f} | {e.step_ms:.0f} ms | "
            f"{e.tokens_per_s:,.0f} tok/s | lr {e.lr:.2e} | epoch {e.epoch} {100 * e.data_progress:.1f}%"
        )

    def _on_notice(self, e: events.NoticeGiven) -> None:
        self._print(e.message)

    def _on_progress(self, e: events.ProgressReported) -> None:
        now = self.clock()
        state = self._progress.get(e.task)
        if state is None or e.done < state[1]:  # a new run of this task
            state = (now, -1, False)
        last_print, _, printed = state
        total = f"/{e.total:,}" if e.total else ""
        if e.total and e.done >= e.total:  # finished: close what was shown, if anything was
            if printed:
                self._print(f"{e.task}: {e.done:,}{total} done")
            self._progress.pop(e.task, None)
            return
        if now - last_print >= self.progress_interval_s:
            self._print(f"{e.task}: {e.done:,}{total}")
            last_print, printed = now, True
        self._progress[e.task] = (last_print, e.done, printed)

    def _on_eval(self, e: events.EvalCompleted) -> None:
        if e.split == "horizon":
            self._print(
                f"chunk @ step {e.step} | Train: {e.train_loss_nats:.4f} | Val: {e.val_loss_nats:.4f} | "
                f"Diff: {e.diff_nats:+.4f} (horizon: next chunk, mostly noise on i.i.d. text)"
            )
        else:
            self._print(
                f"held-out @ step {e.step} | {e.val_loss_nats:.4f} nats | {e.val_bpb:.4f} bits/byte"
            )

    def _on_sample(self, e: events.SampleReady) -> None:
        self._print(f"--- Thought Stream @ step {e.step} ---\n{e.text}\n---")

    def _on_checkpoint(self, e: events.CheckpointSaved) -> None:
        self._print(f"checkpoint saved: {e.path} ({e.checkpoint_bytes / 1e6:.1f} MB)")

    def _on_alarm(self, e: events.AlarmRaised) -> None:
        self._print(f"ALARM ({e.kind}): {e.message}")

    def _on_lr_changed(self, e: events.LearningRateChanged) -> None:
        self._print(f"learning rate set to {e.lr:.3e} at step {e.step}")

    def _on_run_finished(self, e: events.RunFinished) -> None:
        self._print(
            f"finished ({e.reason}) at step {e.step}: {e.tokens:,} tokens in {e.time:.1f} s"
        )
