"""The ``system`` events of metrics.jsonl: the monitor's latest readings, after a step, at a
low rate, so an attached or finished run charts its CPU, memory and GPU history too."""

from __future__ import annotations

import time
from collections.abc import Callable

from h2q_tui.system.monitor import SystemSnapshot
from h2q_tui.system.readings_history import snapshot_readings
from h2q_tui.training import events


class SystemLog:
    """An ``emit`` that passes every event on, and after a step record also a SystemSampled
    when ``interval_s`` seconds have passed since the last one (or none was written yet)
    and the monitor has a snapshot not logged yet.

    It runs where the step record is emitted (the training thread) but only reads the
    monitor's ``latest`` (set by the monitor's own thread): no lock, no wait, no sampling
    here; the write is one more line of the same append-only file.
    """

    def __init__(
        self,
        emit: Callable[[events.Event], None],
        latest: Callable[[], SystemSnapshot | None],
        interval_s: float,  # log.system_interval_s (0: none)
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.emit, self.latest, self.interval_s, self.clock = emit, latest, interval_s, clock
        self._last_at: float | None = None  # clock() of the last system event
        self._last_snapshot: float | None = None  # its snapshot's time
        self.written = 0

    def __call__(self, event: events.Event) -> None:
        self.emit(event)
        if isinstance(event, events.StepCompleted) and self.interval_s > 0:
            self._maybe_log(event)

    def _maybe_log(self, step: events.StepCompleted) -> None:
        now = self.clock()
        if self._last_at is not None and now - self._last_at < self.interval_s:
            return
        snap = self.latest()
        if snap is None or snap.time == self._last_snapshot:  # nothing new to say
            return
        self._last_at, self._last_snapshot = now, snap.time
        self.written += 1
        self.emit(system_event(snap, step.step, step.tokens, step.time))


def system_event(
    snap: SystemSnapshot, step: int, tokens: int, time_s: float
) -> events.SystemSampled:
    """A snapshot's readings as the ``system`` record of a step."""
    readings = snapshot_readings(snap)
    return events.SystemSampled(
        step=step, tokens=tokens, time=time_s, gpus=len(snap.gpus), **readings
    )
