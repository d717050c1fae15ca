"""Timing loads: the :class:`Clock` of a load's phases, and what this process loaded, when.

Every place that puts weights in front of a generator (the Generate pane, ``generate
--follow``, ``serve``, ``hotstart``) records one :class:`LoadEvent`; the Crystal pane shows
the newest ones. Pure Python and thread-safe: the recorder runs on whatever thread loaded the
weights, the UI reads a copy.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field

KEEP = 100  # events kept per process


class Clock:
    """Contiguous phases: each ``lap`` closes the phase that began at the previous one."""

    def __init__(self, start: float | None = None) -> None:
        self.start = time.perf_counter() if start is None else start
        self.last = self.start
        self.phases: dict[str, float] = {}
        # seconds of work that ran beside the phases on another thread (not in the total)
        self.overlapped: dict[str, float] = {}

    def lap(self, name: str, at: float | None = None) -> None:
        """End phase ``name`` now (or at the perf_counter time ``at``)."""
        now = time.perf_counter() if at is None else at
        self.phases[name] = self.phases.get(name, 0.0) + max(now - self.last, 0.0)
        self.last = max(now, self.last)

    @property
    def elapsed(self) -> float:
        return self.last - self.start


@dataclass(frozen=True)
class LoadEvent:
    """One load or swap.

    ``kind``: ``load`` (a model built and its weights read), ``swap`` (new weights copied into
    a running model in place) or ``snapshot`` (a copy of the live training model).
    ``phases``: seconds per phase, in the order they ran (e.g. build, read, first_forward);
    they add up to ``total_s`` (a ``rest`` phase holds what no named phase covers).
    ``cold``: True/False when the page cache state was known, None when not measured.
    ``overlapped``: seconds of work that ran on another thread beside the phases (``verify``:
    the checksum pass of a fast load), shown apart and not part of ``total_s``.
    """

    kind: str
    what: str  # CheckpointInfo.describe(): "int8 of run X step N, 3.8× smaller"
    path: str
    step: int
    total_s: float
    phases: dict[str, float] = field(default_factory=dict)
    cold: bool | None = None
    consumer: str = ""  # who loaded it: "generate pane", "serve", "generate --follow", ...
    note: str = ""
    at: float = field(default_factory=time.time)
    overlapped: dict[str, float] = field(default_factory=dict)

    def line(self) -> str:
        """``swap · step 120 · 4.1 ms`` / ``load · run X step 3 · 18 ms (info 0.4, read 1.2, …
        ms; verify 9.0 ms overlapped)``."""
        phases = ", ".join(f"{name} {1000 * s:.1f}" for name, s in self.phases.items())
        cache = "" if self.cold is None else (" cold" if self.cold else " warm")
        text = f"{self.kind}{cache} · {self.what} · {1000 * self.total_s:.1f} ms"
        beside = ", ".join(f"{name} {1000 * s:.1f}" for name, s in self.overlapped.items())
        if beside:
            phases = f"{phases} ms; {beside} ms overlapped" if phases else f"{beside} overlapped"
            return f"{text} ({phases})"
        return f"{text} ({phases} ms)" if phases else text


_lock = threading.Lock()
_events: deque[LoadEvent] = deque(maxlen=KEEP)


def record(event: LoadEvent) -> LoadEvent:
    with _lock:
        _events.append(event)
    return event


def events(limit: int = KEEP) -> list[LoadEvent]:
    """The newest ``limit`` events, oldest first."""
    with _lock:
        return list(_events)[-limit:]


def latest(consumer: str | None = None) -> LoadEvent | None:
    """The newest event (of ``consumer`` when given)."""
    with _lock:
        for event in reversed(_events):
            if consumer is None or event.consumer == consumer:
                return event
    return None


def clear() -> None:
    """Forget every event (tests)."""
    with _lock:
        _events.clear()
