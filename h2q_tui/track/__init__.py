"""Log any training script's scalars to a run dir that ``h2q-tui attach`` watches live.

    from h2q_tui import track
    with track.start("runs/mine", config={"lr": 3e-4}) as run:
        for step in range(1, 101):
            run.log(step=step, loss=loss.item(), lr=sched.get_last_lr()[0])

It writes the trainer's own ``metrics.jsonl`` records with the trainer's writer (one whole
line per write, never waiting on a reader) under the trainer's run-dir lock. Names the
dashboard knows are mapped (``loss`` -> ``train_loss_nats``; see ``track.names``).
"""

from __future__ import annotations

import atexit
import json
import math
import os
import sys
import threading
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from h2q_tui.errors import UserError
from h2q_tui.track import names
from h2q_tui.training import events
from h2q_tui.training.records import record_problem
from h2q_tui.training.writers import JsonlWriter

COMPLETED = "completed"  # finish()'s reason when the script does not name one
EXITED = "exited"  # the interpreter ended with the run open and no error
INTERRUPTED = "interrupted"  # Ctrl-C, as the trainer names it

__all__ = ["Run", "start"]

_open_runs: set[Run] = set()
_hooks_installed = False


@dataclass(frozen=True)
class _Record(events.Event):
    """A record built here (the trainer's event types hold fields a script has no value for)."""

    record: dict[str, Any]

    def to_record(self) -> dict[str, Any]:
        return self.record


def start(
    run_dir: str | os.PathLike[str],
    config: Mapping[str, Any] | None = None,
    name: str | None = None,
    max_steps: int | None = None,
) -> Run:
    """Lock ``run_dir`` (made if missing), write its ``run_started`` and return the Run.

    ``config`` is any JSON-able mapping, kept as ``config.script``; ``max_steps`` lets the
    dashboard show progress and an ETA. A run dir another process writes is a UserError.
    """
    if config is not None and not isinstance(config, Mapping):
        raise TypeError(f"config must be a mapping, not {type(config).__name__}")
    if max_steps is not None and not (isinstance(max_steps, int) and max_steps > 0):
        raise ValueError(f"max_steps={max_steps!r}: give a whole number of steps > 0")
    return Run(Path(run_dir), dict(config or {}), name, max_steps)


class Run:
    """One run being logged: ``log`` a step's scalars, then ``finish`` (or use ``with``)."""

    def __init__(self, run_dir: Path, config: dict, name: str | None, max_steps: int | None):
        # they load torch (the checkpoints package): only a run that starts needs them, and
        # attach --help imports this package for its TensorBoard reader
        from h2q_tui.checkpoints import run_lock
        from h2q_tui.training.run_files import ensure_writable

        self._lock = run_lock
        if run_lock.holds(run_dir):
            raise UserError(f"run dir {run_dir} is already being logged by this process")
        ensure_writable(run_dir)
        run_lock.acquire(run_dir)  # another process on it: a UserError naming its PID
        try:
            self._writer = JsonlWriter(run_dir)
        except UserError:
            run_lock.release(run_dir)
            raise
        self.run_dir, self.step, self.tokens = run_dir, 0, 0
        self.finished = False
        self._pid, self._began = os.getpid(), time.perf_counter()
        self._mutex = threading.Lock()
        self._write_failed = False
        sections: dict[str, Any] = {"script": _jsonable(config)}
        if max_steps is not None:
            sections["train"] = {"max_steps": max_steps}
        stamp = datetime.now(timezone.utc)
        self.run_id = name or f"{run_dir.resolve().name}-{stamp:%Y%m%d-%H%M%S}"
        self._write(
            {
                "event": "run_started",
                "run_id": self.run_id,
                "config": sections,
                "preset": name or "script",
                "start_step": 0,
                "time": 0.0,
                "started_at": stamp.isoformat(timespec="seconds"),
                "processes": 1,
            }
        )
        _open_runs.add(self)
        _install_hooks()

    @property
    def elapsed_s(self) -> float:
        """Seconds since ``start``: the records' ``time`` axis."""
        return time.perf_counter() - self._began

    def log(self, step: int | None = None, *, tokens: int | None = None, **scalars: Any) -> None:
        """Append this step's scalars (one ``step`` record; held-out losses one ``eval`` record).

        ``step`` defaults to the last one + 1 and may not go back; ``tokens`` (a running
        count) fills the tokens axis. NaN and Inf are written as null, as the trainer writes
        them; a value that is not a number is a TypeError, a name a record reserves a
        ValueError, and nothing is written for that call.
        """
        if self.finished:
            raise ValueError(f"run {self.run_id} is finished: start another to log more")
        step = self.step + 1 if step is None else step
        if isinstance(step, bool) or not isinstance(step, int) or step < self.step:
            raise ValueError(f"step={step!r}: steps are whole numbers that never go back")
        if tokens is not None and (
            isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 0
        ):
            raise ValueError(f"tokens={tokens!r}: a token count is a whole number >= 0")
        values: dict[str, float] = {k: names.number(k, v) for k, v in scalars.items()}
        step_fields, eval_fields = names.fields(values)
        tokens = self.tokens if tokens is None else tokens
        where: dict[str, Any] = {"step": step, "tokens": tokens, "time": self.elapsed_s}
        records = []
        if step_fields or not eval_fields:
            records.append({"event": "step", **where, "train_loss_nats": None, **step_fields})
        if eval_fields:
            records.append({"event": "eval", **where, "split": "heldout", **eval_fields})
        for record in records:
            problem = record_problem(_clean(record))
            if problem is not None:
                raise ValueError(f"not logged: {problem}")
        self.step, self.tokens = step, tokens
        for record in records:
            self._write(record)

    def finish(self, status: str = COMPLETED) -> None:
        """Write ``run_finished`` with ``status`` as its reason and free the run dir (again:
        nothing happens)."""
        if not isinstance(status, str) or not status:
            raise ValueError(f"status={status!r}: name how the run ended, e.g. 'completed'")
        self._end(events.RunFinished(self.step, self.tokens, self.elapsed_s, status))

    def fail(self, error: BaseException | str) -> None:
        """Write ``run_failed`` (as the trainer does for an error) and free the run dir."""
        message = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
        self._end(events.RunFailed(self.step, message))

    def end_with(self, error: BaseException | None) -> None:
        """End the run as ``error`` ended the script: none, Ctrl-C or an error."""
        if error is None:
            self.finish()
        elif isinstance(error, KeyboardInterrupt):
            self.finish(INTERRUPTED)
        else:
            self.fail(error)

    def __enter__(self) -> Run:
        return self

    def __exit__(self, kind, error, traceback) -> None:
        self.end_with(error)

    def _end(self, event: events.Event) -> None:
        if self.finished or os.getpid() != self._pid:  # a forked worker: not its run
            return
        self.finished = True
        _open_runs.discard(self)
        try:
            self._write_event(event)
        finally:
            self._writer.close()
            self._lock.release(self.run_dir)

    def _write(self, record: dict[str, Any]) -> None:
        self._write_event(_Record(record))

    def _write_event(self, event: events.Event) -> None:
        """One line, whole; a full disk warns once and the script trains on (unlogged)."""
        with self._mutex:
            try:
                self._writer(event)
            except UserError as exc:
                if not self._write_failed:
                    self._write_failed = True
                    warnings.warn(f"h2q_tui.track: {exc}", RuntimeWarning, stacklevel=4)


def _clean(record: dict[str, Any]) -> dict[str, Any]:
    """As the writer writes it: NaN and Inf as null."""
    return {
        k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in record.items()
    }


def _jsonable(config: dict) -> Any:
    """``config`` as JSON keeps it: what JSON has no type for (a Path, a dtype) as its text."""
    try:
        return json.loads(json.dumps(config, default=str))
    except ValueError as exc:  # a cycle, or keys that are not strings or numbers
        raise ValueError(f"config cannot be written as JSON: {exc}") from None


def _install_hooks() -> None:
    """End open runs when the script does: an uncaught error fails them, Ctrl-C interrupts
    them, a plain exit finishes them as "exited"."""
    global _hooks_installed
    if _hooks_installed:
        return
    _hooks_installed = True
    previous = sys.excepthook

    def on_uncaught(kind, error, traceback):
        for run in list(_open_runs):
            run.end_with(error)
        previous(kind, error, traceback)

    sys.excepthook = on_uncaught
    atexit.register(_finish_open_runs)


def _finish_open_runs() -> None:
    for run in list(_open_runs):
        run.finish(EXITED)
