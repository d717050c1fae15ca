"""A one-line progress bar on stderr, redrawn in place with ``\\r`` (``h2q-tui eval``)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import IO


class WindowProgressBar:
    """``progress(done, total)`` callback over batches, drawn as windows done / windows total.

    Nothing is drawn for short jobs (fewer than ``min_batches`` batches); otherwise the bar is
    redrawn at most every ``interval`` seconds, and its final state is always drawn and ended
    with a newline, so logs keep it.
    """

    def __init__(
        self,
        windows: int,
        batch: int,
        stream: IO[str] | None = None,
        label: str = "evaluating",
        width: int = 30,
        min_batches: int = 4,
        interval: float = 0.1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.windows, self.batch = max(0, windows), max(1, batch)
        self.stream = stream if stream is not None else sys.stderr
        self.label, self.width = label, width
        self.min_batches, self.interval, self.clock = min_batches, interval, clock
        self.started = clock()
        self._last_draw: float | None = None
        self.finished = False

    def line(self, done_windows: int, seconds: float) -> str:
        share = done_windows / self.windows if self.windows else 1.0
        filled = round(self.width * share)
        bar = "#" * filled + "-" * (self.width - filled)
        return (
            f"{self.label} [{bar}] {done_windows:,}/{self.windows:,} windows "
            f"{100 * share:3.0f}% {seconds:.1f} s"
        )

    def __call__(self, done: int, total: int) -> None:
        if total < self.min_batches or self.finished:
            return
        now = self.clock()
        final = done >= total
        if not final and self._last_draw is not None and now - self._last_draw < self.interval:
            return
        self._last_draw = now
        done_windows = self.windows if final else min(self.windows, done * self.batch)
        end = "\n" if final else ""
        try:
            print(
                "\r" + self.line(done_windows, now - self.started),
                end=end,
                file=self.stream,
                flush=True,
            )
        except OSError:  # stderr is gone: the result on stdout still matters
            pass
        self.finished = final


def download_progress() -> Callable[[int, int | None], None]:
    """A stderr progress line for named-corpus downloads."""

    def report(done: int, total: int | None) -> None:
        share = f" {100 * done / total:5.1f}%" if total else ""
        end = "\n" if total and done >= total else ""
        print(f"\rdownloading {done / 1e6:7.2f} MB{share}", end=end, file=sys.stderr, flush=True)

    return report
