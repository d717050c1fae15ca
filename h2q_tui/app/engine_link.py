"""What the dashboard watches: a live run it owns, or runs other processes are writing.

``LiveEngine.run`` is called in a worker thread; records reach the UI through ``on_record``,
which must not block. ``AttachedRuns`` tails each run's metrics.jsonl.
"""

from __future__ import annotations

import queue
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from h2q_tui.config import TrainConfig
from h2q_tui.data.tokenizer import BpeTokenizer
from h2q_tui.system.monitor import SystemSnapshot
from h2q_tui.track import tensorboard
from h2q_tui.training import commands
from h2q_tui.training.session import PreparedRun
from h2q_tui.training.system_log import SystemLog
from h2q_tui.training.tail import CHUNK_BYTES, JsonlTailer
from h2q_tui.training.writers import METRICS_FILE, JsonlWriter

OnRecord = Callable[[dict[str, Any]], None]


class Engine(Protocol):
    """What the dashboard needs from a run it trains (LiveEngine; the tests' fake engine)."""

    name: str
    run_dir: Path

    @property
    def resume_step(self) -> int | None: ...

    @property
    def tokenizer(self) -> BpeTokenizer | None: ...

    @property
    def train_config(self) -> TrainConfig | None: ...

    def previous_records(self) -> tuple[list[dict[str, Any]], int]: ...

    def send(self, command: commands.Command) -> None: ...

    def request_stop(self, reason: str) -> None: ...

    def run(self, on_record: OnRecord) -> str: ...


class LiveEngine:
    """A training run owned by the dashboard; commands go in through a queue."""

    def __init__(self, prepared: PreparedRun) -> None:
        self.prepared = prepared
        self.name = prepared.run_dir.name
        self.run_dir = prepared.run_dir
        self.commands: queue.Queue = queue.Queue()
        self.trainer = None  # set while ``run`` trains
        self.stop_reason: str | None = None
        self.busy = False  # from the start of ``run`` until the trainer has saved and ended
        # the dashboard's monitor's latest snapshot (the app sets it): logged as `system` events
        self.latest_readings: Callable[[], SystemSnapshot | None] = lambda: None

    def request_stop(self, reason: str) -> None:
        """Stop after the current step and save (safe from a signal handler: no locks); the
        first reason given is the one the run ends with."""
        if self.stop_reason is not None:
            return
        self.stop_reason = reason
        if self.trainer is not None:
            self.trainer.stop_requested = reason

    @property
    def resume_step(self) -> int | None:
        """The step a resumed run continues from (None for a fresh run)."""
        resume_from = self.prepared.resume_from
        return None if resume_from is None else resume_from.step

    @property
    def tokenizer(self) -> BpeTokenizer | None:
        """The run's BPE tokenizer (None: bytes), for the panes that decode its snapshots."""
        return self.prepared.tokenizer

    @property
    def train_config(self) -> TrainConfig:
        """The run's training options (its memory budget and threads, before step 1)."""
        return self.prepared.config.train

    def previous_records(self) -> tuple[list[dict[str, Any]], int]:
        """A resumed run's metrics.jsonl as it stands before training (records, unparsable
        lines), so the dashboard shows the steps before the resume; nothing for a fresh run.
        Call it before ``run``: from then on the trainer appends to the file."""
        if self.prepared.resume_from is None:
            return [], 0
        tailer = JsonlTailer(self.run_dir / METRICS_FILE)
        records = tailer.read_new()  # complete lines only; never raises for the file's content
        while tailer.behind:  # read in bounded slices
            records += tailer.read_new()
        return records, tailer.skipped_lines

    def send(self, command: commands.Command) -> None:
        self.commands.put(command)

    def run(self, on_record: OnRecord) -> str:
        """Build the trainer and train until it finishes (blocking; call from a worker thread)."""
        writer = JsonlWriter(self.run_dir)

        def emit(event) -> None:
            writer(event)
            on_record(event.to_record())

        interval_s = self.prepared.config.log.system_interval_s
        log = SystemLog(emit, lambda: self.latest_readings(), interval_s)
        self.busy = True
        try:
            if self.stop_reason is not None:  # stopped before it began: nothing to save
                return self.stop_reason
            trainer = self.prepared.trainer(log, commands=self.commands, pause_on_nan=True)
            trainer.stop_requested = self.stop_reason
            self.trainer = trainer
            return trainer.run()
        finally:
            writer.close()
            self.busy = False


class AttachedRuns:
    """Several run dirs whose metrics.jsonl files are followed as they grow."""

    def __init__(self, run_dirs: list[Path]) -> None:
        self.run_dirs = run_dirs
        self.names = unique_names(run_dirs)
        self.tailers = {name: _tailer(d) for name, d in zip(self.names, run_dirs, strict=True)}

    def read_new(self, max_bytes: int = CHUNK_BYTES) -> dict[str, list[dict[str, Any]]]:
        """New records of every run, from at most ``max_bytes`` of each log; bad lines are
        counted in each tailer's skipped_lines."""
        return {name: tailer.read_new(max_bytes) for name, tailer in self.tailers.items()}

    @property
    def behind(self) -> bool:
        """Some log has more to read than the last read_new took."""
        return any(tailer.behind for tailer in self.tailers.values())


def _tailer(run_dir: Path) -> JsonlTailer | tensorboard.TensorBoardTailer:
    """A run dir's metrics.jsonl, or a TensorBoard logdir's event files read as its records."""
    if tensorboard.is_logdir(run_dir):
        return tensorboard.TensorBoardTailer(run_dir)
    return JsonlTailer(run_dir / METRICS_FILE)


def unique_names(run_dirs: list[Path]) -> list[str]:
    """Short distinct labels: the folder names, with parents added where they collide."""
    names = [d.resolve().name for d in run_dirs]
    if len(set(names)) == len(names):
        return names
    return [f"{d.resolve().parent.name}/{d.resolve().name}" for d in run_dirs]
