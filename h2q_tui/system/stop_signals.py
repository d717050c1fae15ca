"""The signals that stop a run: each one's finish reason, its name for the user, its exit code.

A stop signal finishes a run like Ctrl-C: a checkpoint, ``run_finished`` with the reason, then
exit 128 + the signal number (130 Ctrl-C, 143 SIGTERM, 129 SIGHUP: closed terminal, dropped SSH).
The headless runner, the dashboard and the trainer all read this one table; it lists the signals
highest priority first (a torchrun job whose ranks saw different signals ends with the first).
"""

from __future__ import annotations

import signal
from dataclasses import dataclass


@dataclass(frozen=True)
class StopSignal:
    """One stop signal: ``reason`` is the run's finish reason, ``name`` how messages call it."""

    signum: signal.Signals
    reason: str
    name: str

    @property
    def exit_code(self) -> int:
        return exit_code(self.signum)


STOP_SIGNALS = (
    StopSignal(signal.SIGINT, "interrupted", "Ctrl-C"),
    StopSignal(signal.SIGTERM, "terminated", "SIGTERM"),
    StopSignal(signal.SIGHUP, "hangup", "SIGHUP"),
)
BY_SIGNUM = {stop.signum: stop for stop in STOP_SIGNALS}
BY_REASON = {stop.reason: stop for stop in STOP_SIGNALS}


def exit_code(signum: int) -> int:
    """The exit status of a process ended by signal ``signum``: 128 + its number."""
    return 128 + int(signum)
