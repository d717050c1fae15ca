"""Alarms that reach a person: each ``alarm`` event can run a command and post to a webhook.

Deliveries happen on a thread of their own behind a bounded queue, so training never waits
for a command or the network. They are rate-limited, each has a timeout, and a failure
becomes one ``notice`` in metrics.jsonl instead of an error that stops the run.
"""

from __future__ import annotations

import contextlib
import json
import queue
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from h2q_tui.system.alerting import (
    COMMAND_TIMEOUT_S,
    HOURLY_CAP,
    PER_KIND_S,
    WEBHOOK_TIMEOUT_S,
    AlertTargets,
    RateLimit,
    finish_command,
    post_json,
    signal_group,
    start_command,
)
from h2q_tui.training import events

GRACE_S = 10.0  # at the end of a run, pending deliveries get this long, then are abandoned
QUEUE_SIZE = 8  # alerts waiting for the delivery thread; a further one is dropped and counted
HOST = socket.gethostname()  # named in each alert: which machine's run raised it


def payload(
    event: events.AlarmRaised, run_dir: Path, suppressed: dict[str, int], dropped: int
) -> dict[str, Any]:
    """The JSON an alert carries: a ``text`` line (Slack; ``content`` for Discord), then the
    alarm record's fields, the run (``run_dir`` as given: absolute), the host and what the
    rate limit or queue held back."""
    record = event.to_record()
    text = (
        f"h2q-tui alarm ({event.kind}) in run {run_dir.name} at step {event.step}: {event.message}"
    )
    held = sum(suppressed.values())
    if held:
        kinds = ", ".join(f"{kind} {n}" for kind, n in sorted(suppressed.items()))
        text += f" [{held} more alarm(s) held back by the rate limit since the last alert: {kinds}]"
    if dropped:
        text += f" [{dropped} alert(s) dropped: the delivery queue was full]"
    return {
        "text": text,
        "content": text,
        **record,
        "run_dir": str(run_dir),
        "host": HOST,
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "suppressed": dict(suppressed),
        "dropped": dropped,
    }


class Alerts:
    """An ``emit`` in front of another: passes every event on, and sends each alarm that
    the rate limit lets through to the targets, on a delivery thread of its own.

    Training never waits on a delivery: alarms go into a bounded queue (full: dropped and
    counted) and failures come back as notices. At ``run_finished`` (or ``run_failed``)
    pending deliveries get ``grace_s``; what is left then is abandoned, a command killed.
    """

    def __init__(
        self,
        targets: AlertTargets,
        run_dir: Path,
        emit: Callable[[events.Event], None],
        *,
        clock: Callable[[], float] = time.monotonic,
        command_timeout_s: float = COMMAND_TIMEOUT_S,
        webhook_timeout_s: float = WEBHOOK_TIMEOUT_S,
        grace_s: float = GRACE_S,
        per_kind_s: float = PER_KIND_S,
        hourly_cap: int = HOURLY_CAP,
        queue_size: int = QUEUE_SIZE,
    ) -> None:
        self.targets, self.run_dir, self._emit = targets, Path(run_dir).resolve(), emit
        self.command_timeout_s, self.webhook_timeout_s = command_timeout_s, webhook_timeout_s
        self.grace_s = grace_s
        self.limit = RateLimit(clock, per_kind_s, hourly_cap)
        self.dropped = 0  # alerts the full queue refused since the last one queued
        self._queue: queue.Queue[dict[str, Any]] = queue.Queue(maxsize=queue_size)
        self._pending = 0  # alerts queued or being delivered
        self._idle = threading.Condition()
        self._lock = threading.Lock()  # one emit at a time: the trainer's and the notes'
        self._step = 0
        self._closed = False
        self._failed: Exception | None = None  # what emitting a note raised, for the trainer
        self._proc: subprocess.Popen | None = None
        threading.Thread(target=self._deliver_all, name="h2q-alerts", daemon=True).start()

    def __call__(self, event: events.Event) -> None:
        if isinstance(event, (events.RunFinished, events.RunFailed)):
            self.close()  # before the last record, so that its notes come first
        with self._lock:
            failed, self._failed = self._failed, None
            if failed is not None:  # a note's write failed (disk full): the trainer hears of it
                raise failed
            self._emit(event)
        self._step = getattr(event, "step", self._step)
        if isinstance(event, events.AlarmRaised) and not self._closed:
            self._offer(event)

    def _offer(self, event: events.AlarmRaised) -> None:
        if not self.limit.allow(event.kind):
            return
        sent = payload(event, self.run_dir, dict(self.limit.suppressed), self.dropped)
        with self._idle:
            try:
                self._queue.put_nowait(sent)
            except queue.Full:
                self.dropped += 1
                dropped = self.dropped
            else:
                self._pending += 1
                self.limit.suppressed.clear()
                self.dropped = dropped = 0
        if dropped:
            self._note(f"alert dropped: {dropped} waiting alert(s) filled the delivery queue")

    def _note(self, message: str) -> None:
        """A failure becomes a notice in the log (and on screen). Never raises: an error of
        the log itself is kept for the trainer's next event to raise."""
        if self._closed:
            return
        with self._lock:
            try:
                self._emit(events.NoticeGiven(self._step, message))
            except Exception as exc:  # e.g. the disk is full: the trainer must still hear it
                self._failed = exc

    def _deliver_all(self) -> None:
        while True:
            sent = self._queue.get()
            if self._closed:
                return
            try:
                failures = self._deliver(sent)
            except Exception as exc:  # the thread must outlive any one delivery
                failures = [f"alert failed: {type(exc).__name__}: {exc}"]
            for failure in failures:
                self._note(failure)
            with self._idle:
                self._pending -= 1
                self._idle.notify_all()

    def _deliver(self, sent: dict[str, Any]) -> list[str]:
        """The command runs while the webhook is posted: neither waits for the other."""
        body = json.dumps(sent).encode()
        started, proc = time.monotonic(), None
        failures: list[str | None] = []
        if self.targets.command:
            env = {
                "H2Q_ALARM_KIND": sent["kind"],
                "H2Q_ALARM_MESSAGE": sent["message"],
                "H2Q_RUN_DIR": sent["run_dir"],
                "H2Q_STEP": str(sent["step"]),
            }
            proc = start_command(self.targets.command, body, env)
            if isinstance(proc, str):
                failures.append(proc)
                proc = None
            self._proc = proc
        if self.targets.webhook:
            failures.append(post_json(self.targets.webhook, body, self.webhook_timeout_s))
        if proc is not None:
            left = self.command_timeout_s - (time.monotonic() - started)
            failures.append(
                finish_command(proc, self.targets.command[0], self.command_timeout_s, left)
            )
            self._proc = None
        return [f for f in failures if f]

    def close(self) -> None:
        """Wait up to ``grace_s`` for pending deliveries, then abandon the rest (once)."""
        if self._closed:
            return
        with self._idle:
            self._idle.wait_for(lambda: self._pending == 0, timeout=self.grace_s)
            left = self._pending
        if left:
            self._note(f"alerts: {left} delivery(s) abandoned at the end of the run")
        self._closed = True
        proc = self._proc
        if proc is not None:  # its thread, in communicate(), reaps it
            signal_group(proc)
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait({})  # wakes the thread to end
